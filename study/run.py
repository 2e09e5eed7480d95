"""What ``study run``, ``study worker`` and ``study deploy`` do once their flags are parsed:
train a study from its config and write its outputs, join a stored study as a worker, export
a stored study's trained models. Progress and summaries are printed; bad input raises UserError."""

from __future__ import annotations

import sys
from pathlib import Path

from study.errors import UserError
from study.masking import mask_urls, masked_url


def run_study(cfg, retry_failed: bool, quiet: bool, report: bool) -> int:
    """Train every cell of the study ``cfg`` (each dataset's study of a study of several), its
    budget control and its deployment, then write results.csv and the report. Returns the exit
    status: 1 when a run or tuning job failed."""
    from study import tracking
    from study.execute import execute
    from study.outputs import budgets, write_outputs
    from study.plan import check_classes, open_context
    from study.tracking_uri import require_mlflow

    require_mlflow(cfg)
    # A study of several datasets is one study per dataset, every one checked before any trains.
    studies = cfg.dataset_studies() or [cfg]
    for study in studies:  # before the first is recorded: a later dataset's one class refuses them all
        check_classes(study)
    contexts = [open_context(study) for study in studies]
    for study, ctx in zip(studies, contexts, strict=True):
        tracking.open_study(study, ctx.store)  # the parents every worker's runs nest under (--mlflow)
    failed = 0
    for study, ctx in zip(studies, contexts, strict=True):
        for warning in ctx.warnings:
            print(f"warning: {mask_urls(warning)}", file=sys.stderr)
        if retry_failed:
            ctx.store.retry_failed(ctx.study_id)
        if cfg.costs:
            from study.costs import record_study_costs

            record_study_costs(ctx, progress=not quiet)
        counts = execute(study, ctx.study_id, ctx.store, progress=not quiet)
        print(
            f"study {study.name!r}: {counts['done']} done, {counts['failed']} failed, "
            f"{counts['pending'] + counts['running']} left"
        )
        run_control(study, quiet=quiet)
        if counts["tuning_failed"]:
            print(
                f"{counts['tuning_failed']} tuning job(s) failed; their runs wait (see `python -m study status`, "
                "then --retry-failed)"
            )
        failed += counts["failed"] + counts["tuning_failed"]
        if cfg.deploy.enabled:
            from study.deploy import deploy_study

            for line in deploy_study(ctx, progress=not quiet):
                print(mask_urls(line))
    write_outputs(cfg.storage_url, cfg.name, Path(cfg.out), report=report, budgets=budgets(cfg))
    tracking.finish_study(cfg, contexts[0].store, Path(cfg.out))  # the report and results.csv to the parent
    return 0 if failed == 0 else 1


def join_study(local, name: str | None, wait: float, overrides: dict, retry_failed: bool, quiet: bool) -> int:
    """Join a study from the store alone: its config is the stored one, with this machine's
    ``overrides``; the data this machine decodes must give the study's fingerprint. ``local`` is
    this machine's config (where the store is)."""
    from study import config, tracking
    from study.checks import check_out
    from study.execute import execute
    from study.plan import JOIN, open_context
    from study.store import missing_sqlite_file, study_to_join
    from study.tracking_uri import require_mlflow

    check_out(local.out)
    require_mlflow(local)
    url = local.storage_url
    what = f"study {name!r}" if name else "a study"
    store, found, names = study_to_join(
        url,
        name,
        wait,
        # Said once, so that whoever started the worker (or a test) sees that it waits.
        lambda: print(f"study: waiting up to {wait:g} s for {what} in {masked_url(url)}", file=sys.stderr, flush=True),
    )
    if store is None:
        raise UserError(
            f"no study database at {missing_sqlite_file(url)}; give the shared store with --storage URL (e.g. postgresql+psycopg://user@host/db)"
        )
    if found is None:
        listed = ", ".join(repr(n) for n in names) or "none"
        what = f"no study {name!r}" if name else f"{len(names)} studies"
        raise UserError(
            f"{what} in {masked_url(url)} (studies there: {listed}); start one with "
            "`python -m study run --storage URL`, or pass --study NAME"
        )
    name = found
    # The tracker: --mlflow, else this machine's --config (never the study's stored one).
    overrides = {**overrides, "tracking.mlflow": local.tracking.mlflow or None}
    cfg = config.from_stored(store.study(name).config, {**overrides, "storage": url, "name": name})
    ctx = open_context(cfg, mode=JOIN)
    for warning in ctx.warnings:
        print(f"warning: {mask_urls(warning)}", file=sys.stderr)
    if retry_failed:
        ctx.store.retry_failed(ctx.study_id)
    tracking.open_study(cfg, ctx.store)
    counts = execute(cfg, ctx.study_id, ctx.store, progress=not quiet)
    if counts["pending"] + counts["running"] == 0:  # nothing left for anyone: the study's parent run ends
        tracking.finish_study(cfg, ctx.store, None)
    print(
        f"study {name!r}: {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} "
        "left"
    )
    return 0 if counts["failed"] == 0 and counts["tuning_failed"] == 0 else 1


def deploy_stored(url: str, name: str | None, out: Path, runs: str | None, quiet: bool) -> int:
    """Export, quantize and time a stored study's trained models (those whose weights were kept)."""
    from study import config
    from study.deploy import deploy_study
    from study.plan import ATTACH, open_context
    from study.store import Store

    store = Store(url, create=False)
    names = store.study_names()
    if name is None and len(names) != 1:
        listed = ", ".join(names) or "none"
        raise UserError(f"the store {url} holds {len(names)} studies ({listed}); name one with --name")
    name = name or names[0]
    if name not in names:
        raise UserError(f"study {name!r} is not in {url}; studies there: {', '.join(names) or 'none'}")
    overrides = {"storage": url, "name": name, "out": str(out), "deploy.runs": runs}
    cfg = config.from_stored(store.study(name).config, overrides)
    ctx = open_context(cfg, mode=ATTACH)
    lines = deploy_study(ctx, progress=not quiet)
    for line in lines or ["nothing to deploy: every chosen run is deployed already"]:
        print(mask_urls(line))
    return 0


def run_control(cfg, quiet: bool) -> None:
    """Train the study's budget control when it has one (after the study's own runs)."""
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
