"""The command line: ``python -m study {run,worker,status,report,deploy,init,datasets}``.

It parses and dispatches, nothing else. The flags that set a setting come from the settings'
declarations (``study/config.py``, through ``study/flags.py``); the flags here steer the command
itself. Errors a user can cause end with exit status 2 and one line on stderr, never a traceback.
Modules that need torch are imported inside the commands that train, so ``status`` and ``report``
work on a machine with only the store.
"""

from __future__ import annotations

import argparse
import errno
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from study.errors import UserError, WriteError
from study.masking import mask_urls
from study.stopping import Stopped, say_stopped, stop_on_signals


def _seconds(text: str) -> float:
    """A flag's seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; use 0 or more, e.g. 600")
    return value


def _targets(text: str) -> list[float]:
    """Target accuracies from ``--targets 0.8,0.9``, each in (0, 1]."""
    targets = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise UserError(
                f"--targets value {item!r} is not a number; give accuracies in (0, 1], e.g. --targets 0.8,0.9"
            ) from None
        if not 0 < value <= 1:
            raise UserError(
                f"--targets value {value:g} is invalid; target accuracies lie in (0, 1], e.g. --targets 0.8,0.9"
            )
        targets.append(value)
    return targets


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit status 2, and
    takes no abbreviations: ``--frac 0.5`` is refused, not read as ``--fractions``."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `python -m {self.prog} --help`)")


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with ``--config`` and the flags of the settings it has."""
    from study.config import StudyConfig
    from study.flags import add_setting_flags

    parser = sub.add_parser(name, help=help)
    parser.add_argument(
        "--config", metavar="TOML", help="config file (see `study init`); flags override it (default: none)"
    )
    add_setting_flags(parser, name, StudyConfig)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="study", description="Data-efficiency studies of image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = _command(sub, "run", "train every cell of the study (resumes where it stopped) and write the report")
    run.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: off)")
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end (default: off)")

    worker = _command(
        sub, "worker", "join a study in the store and work on it until nothing is left (one per machine of a cluster)"
    )
    worker.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    worker.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: off)")
    worker.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help=(
            "wait up to this long for the study to appear in the store (workers started before `study run`); default 0"
        ),
    )

    _command(sub, "status", "runs done, running, failed and left")

    report = _command(sub, "report", "(re)write the report from the store alone")
    report.add_argument(
        "--targets",
        metavar="ACC,ACC",
        type=_targets,
        help="test accuracies for the images-needed estimates, e.g. 0.8,0.9 "
        "(default: 90%% and 95%% of the best full-data accuracy)",
    )

    deploy = _command(sub, "deploy", "export, quantize and time the trained models of a study whose weights were kept")
    deploy.add_argument("--quiet", action="store_true", help="no progress lines (default: off)")

    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="study.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file (default: off)")

    datasets = sub.add_parser("datasets", help="prepare datasets")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, parser_class=_Parser)
    text = dsub.add_parser(
        "build-text-recognition", help="sample a text / no-text image folder from MSRA-TD500 and Flickr8k"
    )
    text.add_argument("--msra", metavar="DIR", type=Path, required=True, help="MSRA-TD500 folder with train/ and test/")
    text.add_argument(
        "--flickr",
        metavar="DIR",
        type=Path,
        required=True,
        help="Flickr8k folder (Flicker8k_Dataset/ or Images/ of .jpg)",
    )
    text.add_argument(
        "--out", metavar="DIR", type=Path, required=True, help="output folder: train/, test/, manifest.csv"
    )
    text.add_argument(
        "--per-class", metavar="N", type=int, default=200, help="images per class, both splits together (default 200)"
    )
    text.add_argument(
        "--size", metavar="PX", type=int, default=224, help="side the images are resized to (default 224)"
    )
    text.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the sampling (default 0)")
    text.add_argument(
        "--test-fraction",
        metavar="F",
        type=float,
        default=0.2,
        help="share of each class in the test split (default 0.2)",
    )
    text.add_argument("--force", action="store_true", help="replace an existing output folder (default: off)")
    return parser


def _config(args: argparse.Namespace, keys: tuple[str, ...] | None = None):
    """The config of ``--config`` and the setting flags in ``args`` (only ``keys`` when named)."""
    from study import config
    from study.flags import overrides

    given = overrides(args, config.StudyConfig, keys)
    if given.get("per_class") is not None and given.get("fractions") is None:
        given["fractions"] = []  # --per-class replaces the default fractions
    return config.load(args.config, given)


def _located(args: argparse.Namespace) -> tuple[str, str | None, Path]:
    from study.outputs import locate

    return locate(args.config, args.out, args.storage, args.name)


def cmd_run(args: argparse.Namespace) -> int:
    from study.run import run_study

    return run_study(_config(args), args.retry_failed, args.quiet, report=not args.no_report)


def cmd_worker(args: argparse.Namespace) -> int:
    from study.config import StudyConfig
    from study.flags import command_keys, overrides
    from study.run import join_study

    local = _config(args, ("out", "storage", "tracking.mlflow"))  # the tracker's URI is checked before the store opens
    machine = overrides(args, StudyConfig, tuple(k for k in command_keys("worker", StudyConfig) if k != "name"))
    return join_study(local, args.name, args.wait, machine, args.retry_failed, args.quiet)


def cmd_deploy(args: argparse.Namespace) -> int:
    from study.run import deploy_stored

    url, name, out = _located(args)
    return deploy_stored(url, name, out, getattr(args, "deploy.runs"), args.quiet)


def cmd_status(args: argparse.Namespace) -> int:
    from study.status import print_status

    url, name, _ = _located(args)
    print_status(url, name)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    url, name, out = _located(args)
    from analysis.datasets import only_study
    from analysis.load import load_study
    from study.checks import check_out
    from study.flags import command_keys
    from study.outputs import budgets, write_outputs

    check_out(out)
    from study.config import StudyConfig

    keys = tuple(k for k in command_keys("report", StudyConfig) if k.startswith("deploy."))
    chosen = None  # flags, else the --config file's [deploy], else the study's stored config
    if args.config or any(getattr(args, k) is not None for k in keys):
        chosen = budgets(_config(args, keys))
    write_outputs(url, name or only_study(url) or load_study(url).name, out, targets=args.targets, budgets=chosen)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from study.config import EXAMPLE_TOML

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{str(path)!r} already exists; pass --force to overwrite it or give another path")
    path.write_text(EXAMPLE_TOML)
    print(f"wrote {path}; run it with: python -m study run --config {path}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from study.datasets import text_recognition

    return text_recognition.build_and_say(
        args.msra, args.flickr, args.out, args.per_class, args.size, args.seed, args.test_fraction, args.force
    )


# A full disk, a quota, an I/O error, a read-only file system: the machine's, not the input's.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)

COMMANDS = {
    "run": cmd_run,
    "worker": cmd_worker,
    "status": cmd_status,
    "report": cmd_report,
    "init": cmd_init,
    "datasets": cmd_datasets,
    "deploy": cmd_deploy,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("run", "worker"):
            with stop_on_signals():
                try:
                    return COMMANDS[args.command](args)
                except Stopped as stop:
                    say_stopped(stop, argv)
                    return stop.exit_status
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"study: error: {mask_urls(str(exc))}", file=sys.stderr)
        return 2
    except WriteError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        # Elsewhere than the outputs (the decode cache, say): the same one line.
        print(f"study: error: cannot write {str(exc.filename or '')!r}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("study: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
