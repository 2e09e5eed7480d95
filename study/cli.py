"""The command line: ``python -m study {run,status,report,init,datasets}``.

Errors a user can cause end with exit status 2 and one line on stderr, never a traceback.
Modules that need torch are imported inside the commands that train, so ``status`` and
``report`` work on a machine with only the store.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from study.checks import check_out
from study.errors import UserError, WriteError
from study.masking import mask_urls, masked_url
from study.stopping import Stopped, stop_on_signals


def _seconds(text: str) -> float:
    """A flag's seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; use 0 or more, e.g. 600")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit status 2, and
    takes no abbreviations: ``--frac 0.5`` is refused, not read as ``--fractions``."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `python -m {self.prog} --help`)")


def _study_flags(p: argparse.ArgumentParser) -> None:
    """Flags that locate a study: shared by every command."""
    p.add_argument("--config", metavar="TOML", help="config file (see `study init`); flags override it")
    p.add_argument("--out", metavar="DIR", help="results, cache and report folder (default ./study-out)")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the store (default sqlite:///<out>/study.db)")
    p.add_argument("--name", "--study", dest="name", help="study name in the store (default 'default')")


def _machine_flags(p: argparse.ArgumentParser) -> None:
    """Flags that say how this machine works on a study: shared by ``run`` and ``worker``."""
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda")
    p.add_argument("--jobs", metavar="N", help="parallel runs (0 = one per core, or every thread of the dask cluster)")
    p.add_argument(
        "--threads", metavar="N", help="torch threads per worker (0 = the cores shared out among the workers)"
    )
    p.add_argument(
        "--backend", metavar="NAME", help="loky (default: local processes) | dask (a dask.distributed cluster)"
    )
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="with --backend dask: the scheduler's address, e.g. tcp://head-node:8786"
    )
    p.add_argument("--heartbeat", metavar="SECONDS", help="seconds between a busy worker's heartbeats (default 20)")
    p.add_argument(
        "--grace-period",
        metavar="SECONDS",
        help="seconds of silence after which a worker's run or trial is taken over (default 180)",
    )
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile each model once per worker")
    p.add_argument(
        "--channels-last",
        metavar="MODE",
        help="channels-last memory layout: auto (measured once per study, model and kind of device) | on | off",
    )
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="memory a run's images may take on the device, e.g. 256MB or 2GB; beyond it they stream from the cache "
        "(default: half the free memory)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        help="digits (default) | imagefolder | tiny-imagenet | imagenet | cifar10 | cifar100 | text-recognition",
    )
    p.add_argument(
        "--data-root", metavar="DIR", help="dataset folder (imagefolder: one subfolder per class; see README, Datasets)"
    )
    p.add_argument("--test-root", metavar="DIR", help="imagefolder: a separate folder of test images")
    p.add_argument(
        "--models",
        metavar="A,B",
        help="timm model names, each an arm named after its model (default mobilevit_xxs,mobilenetv2_100,resnet18)",
    )
    p.add_argument(
        "--arm",
        dest="arms",
        metavar="NAME=MODEL[,KEY=VALUE...]",
        action="append",
        help="a named way to train: a timm model plus [train] keys of its own, e.g. "
        "vit-in1k=mobilevit_xxs,pretrained=true (weights=PATH: a weights file); repeatable",
    )
    p.add_argument("--fractions", metavar="F,F", help="nested fractions of the training pool, each in (0, 1]")
    p.add_argument("--per-class", metavar="K,K", help="images per class instead of fractions, e.g. 5,10,50")
    p.add_argument(
        "--subset-list",
        metavar="FILE",
        action="append",
        help="a file of training image names, one a line: adds a size of exactly those images, for every seed "
        "(repeatable)",
    )
    p.add_argument("--seeds", metavar="N", help="seeds per cell (each draws its own subset, init, augmentation)")
    p.add_argument(
        "--split-per-seed",
        action=argparse.BooleanOptionalAction,
        help="each seed draws its own stratified test and validation split (default: one split for every seed)",
    )
    p.add_argument(
        "--epochs",
        metavar="N",
        help="epochs per run: passes over the run's subset; a small subset repeats passes within an epoch until "
        "it has min-steps / epochs optimiser steps",
    )
    p.add_argument(
        "--min-steps", metavar="N", help="floor on optimiser steps per run, so small subsets are not starved"
    )
    p.add_argument(
        "--budget",
        metavar="POLICY",
        help="how long a run trains: plateau (until validation stops improving, under --max-steps) | fixed "
        "(--epochs epochs on a cosine schedule)",
    )
    p.add_argument(
        "--patience",
        metavar="N",
        help="epochs without a validation gain of --min-gain points before a run stops (fixed budget: 0 = never)",
    )
    p.add_argument("--min-gain", metavar="POINTS", help="validation accuracy points that count as an improvement")
    p.add_argument(
        "--max-steps", metavar="N", help="plateau budget: cap on a run's optimiser steps (a run reaching it is capped)"
    )
    p.add_argument("--warmup-steps", metavar="N", help="plateau budget: optimiser steps of learning-rate warm-up")
    p.add_argument("--batch-size", metavar="N", help="images per optimiser step (smaller subsets use their size)")
    p.add_argument(
        "--lr",
        metavar="LR",
        help="peak learning rate (0 = auto: from scratch 1e-2 plateau, 4e-3 fixed; 1e-4 pretrained)",
    )
    p.add_argument("--augment", metavar="POLICY", help="none | light | standard | strong | trivial")
    p.add_argument("--image-size", metavar="PX", help="size images are decoded and cached at")
    p.add_argument(
        "--input-size",
        metavar="PX|native",
        help="model input side (0 = --image-size, native = each model's pretrained size)",
    )
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, help="start from timm's pretrained weights")
    p.add_argument(
        "--weights",
        metavar="MODEL=PATH",
        action="append",
        help="local .safetensors/.pth weights for MODEL (repeatable)",
    )
    p.add_argument(
        "--finetune", metavar="MODE", help="full (default) | head (linear probe: only the classifier trains)"
    )
    p.add_argument(
        "--freeze-stages", metavar="K", help="with --finetune full: keep the stem and the first K stages frozen"
    )
    _machine_flags(p)
    p.add_argument(
        "--trials",
        metavar="N",
        help="Optuna trials per model and size before the final runs (0 = no tuning: use [train])",
    )
    p.add_argument("--tune-timeout", metavar="SECONDS", help="tuning time per model and size (0 = no limit)")
    p.add_argument("--pruner", metavar="NAME", help="median (default) | hyperband | none")
    p.add_argument(
        "--no-costs", dest="costs", action="store_const", const=False, help="skip measuring MACs, size and CPU latency"
    )
    p.add_argument(
        "--budget-control",
        action=argparse.BooleanOptionalAction,
        help="give seed 0 of each model at the smallest and largest size twice the optimiser steps (plateau budget: "
        "the run goes on after its stop), so the report can say whether the runs converged",
    )
    p.add_argument(
        "--no-deploy",
        dest="deploy",
        action="store_const",
        const=False,
        help="skip the ONNX export, int8 quantization and CPU timing of the trained models",
    )
    p.add_argument(
        "--deploy-runs", metavar="WHICH", help="runs to export: best (each model's best seed at the largest size) | all"
    )
    p.add_argument(
        "--until-ci",
        metavar="W",
        help="after --seeds seeds (3 or more), add one seed at a time where the 95%% intervals of per-size accuracies "
        "and paired differences are wider than ±W accuracy points, until all are within it (docs/sequential.md)",
    )
    p.add_argument("--max-seeds", metavar="N", help="with --until-ci: seeds per cell at most")
    p.add_argument(
        "--budget-hours",
        metavar="H",
        help="with --until-ci: no more seeds once the runs' training time reaches H hours",
    )
    _budget_flags(p)


def _budget_flags(p: argparse.ArgumentParser) -> None:
    """The report's deployment budgets: shared by ``run`` and ``report``."""
    p.add_argument(
        "--latency-budget-ms",
        metavar="MS",
        help="name the most accurate model whose p50 latency (ONNX Runtime or PyTorch, one thread) fits, per size",
    )
    p.add_argument("--size-budget-mb", metavar="MB", help="... and whose file fits this size in MB")


# CLI flag -> dotted config key
_OVERRIDES = {
    "out": "out",
    "storage": "storage",
    "name": "name",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "test_root": "data.test_root",
    "models": "models",
    "arms": "arms",
    "fractions": "fractions",
    "per_class": "per_class",
    "subset_list": "subset_lists",
    "seeds": "seeds",
    "split_per_seed": "data.split_per_seed",
    "epochs": "train.epochs",
    "min_steps": "train.min_steps",
    "budget": "train.budget",
    "patience": "train.patience",
    "min_gain": "train.min_gain",
    "max_steps": "train.max_steps",
    "warmup_steps": "train.warmup_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "augment": "train.augment",
    "image_size": "data.image_size",
    "device": "device",
    "jobs": "jobs",
    "threads": "threads",
    "backend": "backend",
    "scheduler": "scheduler",
    "heartbeat": "heartbeat",
    "grace_period": "grace_period",
    "input_size": "train.input_size",
    "pretrained": "train.pretrained",
    "weights": "train.weights",
    "finetune": "train.finetune",
    "freeze_stages": "train.freeze_stages",
    "trials": "tune.trials",
    "tune_timeout": "tune.timeout",
    "pruner": "tune.pruner",
    "compile": "compile",
    "channels_last": "channels_last",
    "costs": "costs",
    "budget_control": "budget_control",
    "memory_budget": "memory_budget",
    "deploy": "deploy.enabled",
    "deploy_runs": "deploy.runs",
    "latency_budget_ms": "deploy.latency_budget_ms",
    "size_budget_mb": "deploy.size_budget_mb",
    "until_ci": "sequential.until_ci",
    "max_seeds": "sequential.max_seeds",
    "budget_hours": "sequential.budget_hours",
}


# Flags whose default 0 means something: what, in their help.
ZERO_MEANS = {
    "lr": "0 = auto",
    "input_size": "0 = --image-size",
    "until_ci": "0 = a fixed number of seeds",
    "budget_hours": "0 = no limit",
}


def _config_default(key: str):
    """The built-in default of a dotted config key, e.g. 'train.epochs' -> 8."""
    from study.config import StudyConfig

    value = StudyConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Every flag's help ends with its default: the config's built-in value for flags that set
    config keys, argparse's own otherwise."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _with_defaults(sub)
            continue
        if action.help in (None, argparse.SUPPRESS) or "default" in action.help or not action.option_strings:
            continue
        if action.dest in ("help",):
            continue
        if isinstance(action, argparse._StoreConstAction) and action.const is False:
            value = f"{action.dest} on"  # --no-X flags: X happens unless asked
        elif action.dest in _OVERRIDES:
            value = _config_default(_OVERRIDES[action.dest])
            if isinstance(value, list):
                value = ",".join(str(v) for v in value) or "none"
            elif isinstance(value, bool):
                value = "on" if value else "off"
            elif value == "" or value == 0 and action.dest in ZERO_MEANS:
                value = ZERO_MEANS.get(action.dest, "none")
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
            value = "off"
        else:
            value = "none" if action.default is None else action.default
        action.help += f" (default: {value})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="study", description="Data-efficiency studies of image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train every cell of the study (resumes where it stopped) and write the report")
    _study_flags(run)
    _run_flags(run)
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end")

    worker = sub.add_parser(
        "worker", help="join a study in the store and work on it until nothing is left (one per machine of a cluster)"
    )
    _study_flags(worker)
    _machine_flags(worker)
    worker.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the dataset lies on this machine (default: where the study's config says)",
    )
    worker.add_argument("--test-root", metavar="DIR", help="imagefolder: where the test images lie on this machine")
    worker.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    worker.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help=(
            "wait up to this long for the study to appear in the store (workers started before `study run`); default 0"
        ),
    )

    status = sub.add_parser("status", help="runs done, running, failed and left")
    _study_flags(status)

    report = sub.add_parser("report", help="(re)write the report from the store alone")
    _study_flags(report)
    report.add_argument(
        "--targets",
        metavar="ACC,ACC",
        help="test accuracies for the images-needed estimates, e.g. 0.8,0.9 "
        "(default: 90%% and 95%% of the best full-data accuracy)",
    )
    _budget_flags(report)

    deploy = sub.add_parser(
        "deploy", help="export, quantize and time the trained models of a study whose weights were kept"
    )
    _study_flags(deploy)
    deploy.add_argument(
        "--deploy-runs", metavar="WHICH", help="best (default) | all: every run whose weights were kept"
    )
    deploy.add_argument("--quiet", action="store_true", help="no progress lines")

    init = sub.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="study.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

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
    text.add_argument("--force", action="store_true", help="replace an existing output folder")
    _with_defaults(parser)
    return parser


def _config(args: argparse.Namespace):
    from study import config

    overrides = {key: getattr(args, flag, None) for flag, key in _OVERRIDES.items()}
    if overrides.get("per_class") is not None and overrides.get("fractions") is None:
        overrides["fractions"] = []  # --per-class replaces the default fractions
    return config.load(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from study.execute import execute
    from study.plan import open_context

    # A study of several datasets is one study per dataset, every one checked before any trains.
    studies = cfg.dataset_studies() or [cfg]
    contexts = [open_context(study) for study in studies]
    failed = 0
    for study, ctx in zip(studies, contexts, strict=True):
        for warning in ctx.warnings:
            print(f"warning: {mask_urls(warning)}", file=sys.stderr)
        if args.retry_failed:
            ctx.store.retry_failed(ctx.study_id)
        if cfg.costs:
            from study.costs import record_study_costs

            record_study_costs(ctx, progress=not args.quiet)
        counts = execute(study, ctx.study_id, ctx.store, progress=not args.quiet)
        print(
            f"study {study.name!r}: {counts['done']} done, {counts['failed']} failed, "
            f"{counts['pending'] + counts['running']} left"
        )
        _run_budget_control(study, quiet=args.quiet)
        if counts["tuning_failed"]:
            print(
                f"{counts['tuning_failed']} tuning job(s) failed; their runs wait (see `python -m study status`, "
                "then --retry-failed)"
            )
        failed += counts["failed"] + counts["tuning_failed"]
        if cfg.deploy.enabled:
            from study.deploy import deploy_study

            for line in deploy_study(ctx, progress=not args.quiet):
                print(mask_urls(line))
    _write_outputs(cfg.storage_url, cfg.name, Path(cfg.out), report=not args.no_report, budgets=_budgets(cfg))
    return 0 if failed == 0 else 1


def _run_budget_control(cfg, quiet: bool) -> None:
    """Train the study's budget control (``study.budget_control``) when it has one."""
    from study.budget_control import FACTOR, control_config

    control = control_config(cfg)
    if control is None:
        return
    from study.execute import execute
    from study.plan import open_context

    print(f"budget control: seed 0 at the smallest and largest size with {FACTOR}x the budget ({control.name!r})")
    ctx = open_context(control)
    counts = execute(control, ctx.study_id, ctx.store, progress=not quiet)
    print(f"budget control: {counts['done']} done, {counts['failed']} failed")


# ``study worker``: flags it takes over the stored config (the rest is the study's own).
_WORKER_OVERRIDES = (
    "out",
    "storage",
    "data_root",
    "test_root",
    "device",
    "jobs",
    "threads",
    "backend",
    "scheduler",
    "heartbeat",
    "grace_period",
    "compile",
    "channels_last",
    "memory_budget",
)


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a study from the store alone: its config is the stored one, with this machine's
    flags; the data this machine decodes must give the study's fingerprint."""
    from study import config
    from study.execute import execute
    from study.plan import JOIN, open_context
    from study.store import missing_sqlite_file, study_to_join

    local = config.load(args.config, {k: getattr(args, k, None) for k in ("out", "storage")})
    check_out(local.out)
    url = local.storage_url
    what = f"study {args.name!r}" if args.name else "a study"
    store, name, names = study_to_join(
        url,
        args.name,
        args.wait,
        # Said once, so that whoever started the worker (or a test) sees that it waits.
        lambda: print(
            f"study: waiting up to {args.wait:g} s for {what} in {masked_url(url)}", file=sys.stderr, flush=True
        ),
    )
    if store is None:
        raise UserError(
            f"no study database at {missing_sqlite_file(url)}; give the shared store with --storage URL (e.g. postgresql+psycopg://user@host/db)"
        )
    if name is None:
        listed = ", ".join(repr(n) for n in names) or "none"
        what = f"no study {args.name!r}" if args.name else f"{len(names)} studies"
        raise UserError(
            f"{what} in {masked_url(url)} (studies there: {listed}); start one with "
            "`python -m study run --storage URL`, or pass --study NAME"
        )
    overrides = {_OVERRIDES[k]: getattr(args, k, None) for k in _WORKER_OVERRIDES}
    cfg = config.from_stored(store.study(name).config, {**overrides, "storage": url, "name": name})
    ctx = open_context(cfg, mode=JOIN)
    for warning in ctx.warnings:
        print(f"warning: {mask_urls(warning)}", file=sys.stderr)
    if args.retry_failed:
        ctx.store.retry_failed(ctx.study_id)
    counts = execute(cfg, ctx.study_id, ctx.store, progress=not args.quiet)
    print(
        f"study {name!r}: {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} "
        "left"
    )
    return 0 if counts["failed"] == 0 and counts["tuning_failed"] == 0 else 1


def cmd_deploy(args: argparse.Namespace) -> int:
    """Export, quantize and time a study's trained models (those whose weights were kept)."""
    from study.deploy import deploy_study
    from study.plan import ATTACH, open_context

    url, name, out = _located(args)
    from study import config
    from study.store import Store

    store = Store(url, create=False)
    names = store.study_names()
    if name is None and len(names) != 1:
        listed = ", ".join(names) or "none"
        raise UserError(f"the store {url} holds {len(names)} studies ({listed}); name one with --name")
    name = name or names[0]
    if name not in names:
        raise UserError(f"study {name!r} is not in {url}; studies there: {', '.join(names) or 'none'}")
    overrides = {"storage": url, "name": name, "out": str(out), "deploy.runs": args.deploy_runs}
    cfg = config.from_stored(store.study(name).config, overrides)
    ctx = open_context(cfg, mode=ATTACH)
    lines = deploy_study(ctx, progress=not args.quiet)
    for line in lines or ["nothing to deploy: every chosen run is deployed already"]:
        print(mask_urls(line))
    return 0


def _budgets(cfg) -> tuple[float, float]:
    """(latency budget in ms, size budget in MB) of the config's [deploy] table; 0 = none."""
    return cfg.deploy.latency_budget_ms, cfg.deploy.size_budget_mb


def _write_outputs(
    url: str,
    name: str,
    out: Path,
    report: bool = True,
    targets: list[float] | None = None,
    budgets: tuple[float, float] | None = None,
) -> None:
    """Write results.csv and the report from the store. A full disk or an I/O error is one line
    (``WriteError``); the store is only read, so nothing stored is touched. A study of several
    datasets gets one report per dataset and one across them."""
    from analysis.datasets import dataset_study_names
    from analysis.load import load_study, results_table
    from study.store import NamedLock, Store

    try:
        # Two commands finishing one study together (two terminals on one --out) take turns: the
        # one that writes last reads the store last, and neither deletes the other's figures.
        with NamedLock(Store(url, create=False).engine, f"outputs:{out.absolute()}"):
            members = dataset_study_names(url, name)
            datas = [load_study(url, member) for member in members] or [load_study(url, name)]
            out.mkdir(parents=True, exist_ok=True)

            def write_results(path: Path) -> None:
                import pandas as pd

                pd.concat([results_table(d) for d in datas]).to_csv(path, index=False)

            _replace_atomically(out / "results.csv", write_results)
            if report and members:
                from reports.datasets import write_datasets_report

                folder = write_datasets_report(name, datas, out, targets=targets)
                where = f"each dataset's in {out / 'datasets'}"
                print(f"report: {folder / 'index.html'}  and  {folder / 'report.md'} ({where})")
            elif report:
                from reports import write_report

                folder = write_report(datas[0], out, targets=targets, budgets=budgets)
                print(f"report: {folder / 'index.html'}  and  {folder / 'report.md'}")
    except OSError as exc:
        where = exc.filename or out
        raise WriteError(
            f"cannot write {str(where)!r}: {exc.strerror or exc}; the store is intact: free space or fix the folder, "
            f"then run `python -m study report --out {out}`"
        ) from None
    print(f"results: {out / 'results.csv'}")


def _replace_atomically(path: Path, write) -> None:
    """``write(temporary path)``, then rename it over ``path``: a failed write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _located(args: argparse.Namespace) -> tuple[str, str | None, Path]:
    """(storage URL, study name, out folder) from flags and config, without validating the rest."""
    from study import config
    from study.store import missing_sqlite_file

    overrides = {k: getattr(args, k) for k in ("out", "storage", "name")}
    cfg = config.load(args.config, overrides)
    url = cfg.storage_url
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise UserError(f"no study database at {missing}; run `python -m study run` first or pass --out/--storage")
    name = cfg.name if (args.name or args.config) else None
    return url, name, Path(cfg.out)


def cmd_status(args: argparse.Namespace) -> int:
    from study.status import print_status

    url, name, _ = _located(args)
    print_status(url, name)
    return 0


def _targets(text: str | None) -> list[float] | None:
    """Target accuracies from ``--targets 0.8,0.9``, each in (0, 1]."""
    if text is None:
        return None
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


def cmd_report(args: argparse.Namespace) -> int:
    targets = _targets(args.targets)
    url, name, out = _located(args)
    check_out(out)
    from analysis.datasets import only_study
    from analysis.load import load_study
    from study import config

    budgets = None  # flags, else the --config file's [deploy], else the study's stored config
    if args.config or args.latency_budget_ms is not None or args.size_budget_mb is not None:
        overrides = {_OVERRIDES[k]: getattr(args, k) for k in ("latency_budget_ms", "size_budget_mb")}
        budgets = _budgets(config.load(args.config, overrides))
    _write_outputs(url, name or only_study(url) or load_study(url).name, out, targets=targets, budgets=budgets)
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

    summary = text_recognition.build(
        args.msra, args.flickr, args.out, args.per_class, args.size, args.seed, args.test_fraction, args.force
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(
        f"wrote {args.out}: {counts} images of {args.size}x{args.size} px; sources in "
        f"{args.out / text_recognition.MANIFEST}"
    )
    if summary["skipped"]:
        print(
            f"warning: {len(summary['skipped'])} unreadable source file(s) skipped, e.g. {summary['skipped'][0]}",
            file=sys.stderr,
        )
    print(f"use it with: python -m study run --dataset text-recognition --data-root {args.out}")
    return 0


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


def _say_stopped(stop: Stopped, argv: list[str]) -> None:
    """One line: what the stop handed back to the store, and the command that resumes."""
    handed = stop.handed_back
    what = (
        f"{handed.get('runs', 0)} run(s), {handed.get('tuning_jobs', 0)} tuning job(s) and "
        f"{handed.get('trials', 0)} trial(s) to rerun handed back to the store"
        if handed
        else "nothing was in flight"
    )
    print(
        f"study: stopped by {stop}: {what}; resume with: python -m study {mask_urls(shlex.join(argv))}", file=sys.stderr
    )


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
                    _say_stopped(stop, argv)
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
