import os
import sys

from study.cli import main

status = main()
if status > 128:  # stopped by a signal, its work handed back: skip the interpreter's slow teardown (torch's)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
raise SystemExit(status)
