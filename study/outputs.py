"""A study's outputs: where its store and folder are (``locate``), and results.csv and the
report written from the store (``write_outputs``), safely beside other commands writing them."""

from __future__ import annotations

import os
from pathlib import Path

from study.errors import UserError, WriteError


def budgets(cfg) -> tuple[float, float]:
    """(latency budget in ms, size budget in MB) of the config's [deploy] table; 0 = none."""
    return cfg.deploy.latency_budget_ms, cfg.deploy.size_budget_mb


def write_outputs(
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

            replace_atomically(out / "results.csv", write_results)
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


def replace_atomically(path: Path, write) -> None:
    """``write(temporary path)``, then rename it over ``path``: a failed write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def locate(
    config_path: str | None, out: str | None, storage: str | None, name: str | None
) -> tuple[str, str | None, Path]:
    """(storage URL, study name, out folder) from flags and config, without validating the rest."""
    from study import config
    from study.store import missing_sqlite_file

    cfg = config.load(config_path, {"out": out, "storage": storage, "name": name})
    url = cfg.storage_url
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise UserError(f"no study database at {missing}; run `python -m study run` first or pass --out/--storage")
    name = cfg.name if (name or config_path) else None
    return url, name, Path(cfg.out)
