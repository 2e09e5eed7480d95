"""The command line: ``python -m study {run,status,report,init}``.

Errors a user can cause end with exit status 2 and one line on stderr, never a traceback.
Modules that need torch are imported inside the commands that train, so ``status`` and
``report`` work on a machine with only the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from study.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `python -m study {self.prog.split()[-1]} --help`)")


def _study_flags(p: argparse.ArgumentParser) -> None:
    """Flags that locate a study: shared by every command."""
    p.add_argument("--config", metavar="TOML", help="config file (see `study init`); flags override it")
    p.add_argument("--out", metavar="DIR", help="results, cache and report folder (default ./study-out)")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the store (default sqlite:///<out>/study.db)")
    p.add_argument("--name", help="study name in the store (default 'default')")


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="digits (default) | imagefolder")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (imagefolder: one subfolder per class)")
    p.add_argument("--test-root", metavar="DIR", help="imagefolder: a separate folder of test images")
    p.add_argument("--models", metavar="A,B", help="timm model names (default mobilevit_xxs,mobilenetv2_100,resnet18)")
    p.add_argument("--fractions", metavar="F,F", help="nested fractions of the training pool, each in (0, 1]")
    p.add_argument("--per-class", metavar="K,K", help="images per class instead of fractions, e.g. 5,10,50")
    p.add_argument("--seeds", metavar="N", help="seeds per cell (each draws its own subset, init, augmentation)")
    p.add_argument("--epochs", metavar="N", help="training rounds per run (one pass over full data each)")
    p.add_argument("--min-steps", metavar="N", help="floor on optimiser steps per run, for small fractions")
    p.add_argument("--batch-size", metavar="N")
    p.add_argument("--lr", metavar="LR", help="learning rate (AdamW by default)")
    p.add_argument("--augment", metavar="POLICY", help="none | light | standard | strong | trivial")
    p.add_argument("--image-size", metavar="PX", help="size images are decoded and cached at")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda")
    p.add_argument("--jobs", metavar="N", help="parallel runs (0 = sized to the machine)")


# CLI flag -> dotted config key
_OVERRIDES = {
    "out": "out", "storage": "storage", "name": "name", "dataset": "data.dataset", "data_root": "data.root",
    "test_root": "data.test_root", "models": "models", "fractions": "fractions", "per_class": "per_class",
    "seeds": "seeds", "epochs": "train.epochs", "min_steps": "train.min_steps", "batch_size": "train.batch_size",
    "lr": "train.lr", "augment": "train.augment", "image_size": "data.image_size", "device": "device", "jobs": "jobs",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="study", description="Data-efficiency studies of image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train every cell of the study (resumes where it stopped) and write the report")
    _study_flags(run)
    _run_flags(run)
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    status = sub.add_parser("status", help="runs done, running, failed and left")
    _study_flags(status)

    report = sub.add_parser("report", help="(re)write the report from the store alone")
    _study_flags(report)

    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="study.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def _config(args: argparse.Namespace):
    from study import config

    overrides = {key: getattr(args, flag, None) for flag, key in _OVERRIDES.items()}
    if overrides.get("per_class") is not None and overrides.get("fractions") is None:
        overrides["fractions"] = []  # --per-class replaces the default fractions
    return config.load(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from study.context import open_context
    from study.execute import execute

    ctx = open_context(cfg)
    for warning in ctx.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.retry_failed:
        ctx.store.retry_failed(ctx.study_id)
    counts = execute(cfg, ctx.study_id, ctx.store, progress=not args.quiet)
    print(f"study {cfg.name!r}: {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} left")
    _write_outputs(cfg.storage_url, cfg.name, Path(cfg.out), report=not args.no_report)
    return 0 if counts["failed"] == 0 else 1


def _write_outputs(url: str, name: str, out: Path, report: bool = True) -> None:
    from analysis.load import load_study, results_table

    data = load_study(url, name)
    out.mkdir(parents=True, exist_ok=True)
    results_table(data).to_csv(out / "results.csv", index=False)
    if report:
        from reports import write_report

        folder = write_report(data, out)
        print(f"report: {folder / 'index.html'}  and  {folder / 'report.md'}")
    print(f"results: {out / 'results.csv'}")


def _located(args: argparse.Namespace) -> tuple[str, str | None, Path]:
    """(storage URL, study name, out folder) from flags and config, without validating the rest."""
    from study import config

    overrides = {k: getattr(args, k) for k in ("out", "storage", "name")}
    cfg = config.load(args.config, overrides)
    url = cfg.storage_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise UserError(f"no study database at {url[len('sqlite:///'):]}; run `python -m study run` first or pass --out/--storage")
    name = cfg.name if (args.name or args.config) else None
    return url, name, Path(cfg.out)


def cmd_status(args: argparse.Namespace) -> int:
    from analysis.load import load_study

    url, name, _ = _located(args)
    data = load_study(url, name)
    runs = data.runs
    counts = runs["status"].value_counts().to_dict()
    total = len(runs)
    print(f"study {data.name!r} ({url}): {total} runs")
    for status in ("done", "running", "failed", "pending"):
        label = "left" if status == "pending" else status
        print(f"  {label:8s} {counts.get(status, 0)}")
    for status in ("running", "failed"):
        for _, r in runs[runs["status"] == status].iterrows():
            detail = (r["error"] or "").splitlines()[0] if status == "failed" else f"attempt {r['attempts']}"
            print(f"  {status}: {r['model']} n_train={r['n_train']} seed={r['seed']}: {detail}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    url, name, out = _located(args)
    from analysis.load import load_study

    _write_outputs(url, name or load_study(url).name, out)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from study.config import EXAMPLE_TOML

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{str(path)!r} already exists; pass --force to overwrite it or give another path")
    path.write_text(EXAMPLE_TOML)
    print(f"wrote {path}; run it with: python -m study run --config {path}")
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "init": cmd_init}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("study: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
