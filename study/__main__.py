import atexit
import os
import sys

from study.cli import main

status = main()
if status > 128:  # stopped by a signal, its work handed back: skip the interpreter's slow teardown (torch's)
    # ... but not the exit handlers: multiprocessing's finalizers release the pool's semaphores, which
    # loky's resource tracker would otherwise report as leaked. CPython has no public way to run them.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
raise SystemExit(status)
