"""Did the runs converge under their training budget?

Two kinds of evidence, each with a stated definition:

- Per run, from its validation curve: ``best_is_last`` (the selected epoch is the final one)
  and ``late_gain``: the final epoch's validation accuracy minus the best of the epochs before
  it. A run is *still rising* when ``late_gain`` exceeds ``RISE_TOLERANCE`` (1 percentage
  point): at the end of a cosine schedule the learning rate is near zero, so a run that still
  gains that much in its last epoch was cut short. With such a schedule the last epoch is often
  the best by a hair, so ``best_is_last`` alone is reported, not judged.
- Per cell (model, size), the budget control (``study.budget_control``): seed 0 retrained with
  twice the budget. The cell has *not converged* when the doubled budget raises test accuracy by
  more than ``max(2 × the seed standard deviation of the cell, GAIN_FLOOR)``; a gain within the
  seed noise means more training would not change the comparison.

Cells without a control are judged by their runs: not converged when most of them are still
rising.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RISE_TOLERANCE = 0.01  # validation accuracy gained by the final epoch, above which a run still rises
GAIN_FLOOR = 0.01  # the budget control's gain must exceed this as well as twice the seed spread
NOISE_MULTIPLE = 2.0

RUN_COLUMNS = ["run_id", "model", "n_train", "seed", "epochs_run", "best_epoch", "best_is_last", "late_gain", "rising"]
CELL_COLUMNS = [
    "model",
    "n_train",
    "runs",
    "best_is_last",
    "rising",
    "seed_std",
    "control_gain",
    "control_epochs",
    "threshold",
    "converged",
    "evidence",
]


def run_convergence(done: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run with an epoch history (RUN_COLUMNS)."""
    rows = []
    by_run = {rid: g.sort_values("epoch")["val_acc"].to_numpy(float) for rid, g in epochs.groupby("run_id")}
    for r in done.itertuples():
        val = by_run.get(r.run_id)
        if val is None or not len(val):
            continue
        n = len(val)
        gain = float(val[-1] - val[:-1].max()) if n > 1 else np.nan
        best = int(r.best_epoch) if pd.notna(r.best_epoch) else int(np.argmax(val)) + 1
        rows.append(
            {
                "run_id": r.run_id,
                "model": r.model,
                "n_train": int(r.n_train),
                "seed": int(r.seed),
                "epochs_run": n,
                "best_epoch": best,
                "best_is_last": best == n,
                "late_gain": gain,
                "rising": bool(np.isfinite(gain) and gain > RISE_TOLERANCE),
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def cell_convergence(done: pd.DataFrame, runs: pd.DataFrame, control: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, size) (CELL_COLUMNS). ``runs``: ``run_convergence``; ``control``: the
    budget control's finished runs (its ``done`` frame), matched to the study's runs of the same
    model, size and seed. ``converged`` is False/True, ``evidence`` 'budget control' or
    'validation curves'."""
    rows = []
    control = control if control is not None else pd.DataFrame(columns=done.columns)
    for (model, n_train), cell in done.groupby(["model", "n_train"], sort=True):
        cr = runs[(runs["model"] == model) & (runs["n_train"] == n_train)]
        std = float(cell["test_acc"].std(ddof=1)) if len(cell) > 1 else np.nan
        threshold = max(NOISE_MULTIPLE * std, GAIN_FLOOR) if np.isfinite(std) else GAIN_FLOOR
        ctl = control[(control["model"] == model) & (control["n_train"] == n_train)]
        gain, ctl_epochs = np.nan, np.nan
        if len(ctl):
            c = ctl.iloc[0]
            same = cell[cell["seed"] == c["seed"]]
            if len(same):
                gain = float(c["test_acc"] - same["test_acc"].iloc[0])
                ctl_epochs = c["epochs_run"]
        if np.isfinite(gain):
            converged, evidence = bool(gain <= threshold), "budget control"
        else:
            converged, evidence = bool(cr["rising"].sum() * 2 <= len(cr)), "validation curves"
        rows.append(
            {
                "model": model,
                "n_train": int(n_train),
                "runs": len(cell),
                "best_is_last": int(cr["best_is_last"].sum()),
                "rising": int(cr["rising"].sum()),
                "seed_std": std,
                "control_gain": gain,
                "control_epochs": ctl_epochs,
                "threshold": threshold,
                "converged": converged,
                "evidence": evidence,
            }
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def convergence_messages(cells: pd.DataFrame, budget: str) -> list[tuple[str, int, str]]:
    """(model, n_train, message) per cell that has not converged; ``budget`` names the budget,
    e.g. 'a 6-epoch budget'."""
    out = []
    for r in cells[~cells["converged"]].itertuples():
        if r.evidence == "budget control":
            why = (
                f"twice the budget changed the same seed's test accuracy by {100 * r.control_gain:+.1f} pp, more than "
                f"{100 * r.threshold:.1f} pp (twice the seed standard deviation, at least {100 * GAIN_FLOOR:.0f} pp)"
            )
        else:
            why = (
                f"{r.rising} of {r.runs} run(s) gained more than {100 * RISE_TOLERANCE:.0f} pp validation accuracy in "
                "their final epoch"
            )
        out.append((r.model, r.n_train, f"{r.model} with {r.n_train:,} images had not converged under {budget}: {why}"))
    return out


def budget_words(config: dict) -> str:
    """The study's training budget in words, from its stored config: 'a 6-epoch budget'."""
    train = (config or {}).get("train", {})
    epochs = train.get("epochs")
    if not epochs:
        return "its training budget"
    article = "an" if str(epochs)[0] == "8" or epochs in (11, 18) else "a"  # "an 8-epoch", "an 11-epoch"
    return f"{article} {epochs}-epoch budget"
