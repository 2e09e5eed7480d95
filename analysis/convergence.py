"""Did the runs converge under their training budget?

Evidence, each with a stated definition:

- Per run, how it stopped (``runs.stop``, plateau budget): a run that stopped on its plateau
  (validation accuracy gained less than ``min_gain`` points in ``patience`` epochs and in as many
  epochs as its last gain took, ``study.plateau.Plateau``) converged by
  its own rule; one that reached the cap of optimiser steps is *capped*, and a capped run counts
  as not converged everywhere.
- Per run, from its validation curve: ``best_is_last`` (the selected epoch is the final one)
  and ``late_gain``: the final epoch's validation accuracy minus the best of the epochs before
  it. A run is *still rising* when ``late_gain`` exceeds ``RISE_TOLERANCE`` (1 percentage
  point). Under the fixed budget's cosine schedule the last epochs barely move whatever the model
  could still learn, so this signal is weak there; ``best_is_last`` alone is reported, not judged.
- Per cell (model, size), the budget control: seed 0 given twice the optimiser steps. Under the
  plateau budget the run itself goes on after its stop for as many steps again and records what
  it would then have reported (``control_test_acc``) and how many test images changed (
  ``control_gained``: wrong before and right after, ``control_lost``: the reverse); under the
  fixed budget a companion study retrains seed 0 with twice the budget (``study.budget_control``)
  and the changed images come from the two runs' predictions. The cell has *not converged* when
  the doubled steps raise test accuracy by more than ``max(2 × the seed standard deviation of the
  cell, GAIN_FLOOR)`` (a gain within the seed noise would not change the comparison) beyond the
  noise of the gain itself: when the one-sided ``LEVEL`` lower bound of the gain, from the paired
  test images (``gain_bound``), is above that threshold. A test of size 1 − ``LEVEL`` for a cell
  whose doubled steps gain exactly the threshold (``benchmarks/bench_calibration.py --control``);
  on 258 recorded control pairs past the stop the gain alone called 30% unconverged, the bound 3.5%
  (``benchmarks/bench_control.py``, docs/statistics.md).
  Stores written before the counts existed are judged by the gain alone.

A cell is converged when its control (where it ran) is within the threshold and none of its runs
was capped. Cells without a control are judged by their runs: under the plateau budget not
converged when any run was capped, under the fixed budget when most of them are still rising.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from study.store.schema import CAPPED, PLATEAU

RISE_TOLERANCE = 0.01  # validation accuracy gained by the final epoch, above which a run still rises
GAIN_FLOOR = 0.01  # the budget control's gain must exceed this as well as twice the seed spread
NOISE_MULTIPLE = 2.0
LEVEL = 0.95  # the control's one-sided bound on its gain: "not converged" 5% of the time at a gain of the threshold

RUN_COLUMNS = [
    "run_id",
    "model",
    "n_train",
    "seed",
    "epochs_run",
    "best_epoch",
    "best_is_last",
    "late_gain",
    "rising",
    "capped",
]
CELL_COLUMNS = [
    "model",
    "n_train",
    "runs",
    "best_is_last",
    "rising",
    "capped",
    "seed_std",
    "control_gain",
    "control_bound",
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
                "capped": getattr(r, "stop", None) == CAPPED,
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def paired_se(gained: float, lost: float, n_test: int) -> float:
    """Standard error of the accuracy gain between two sets of predictions on the same ``n_test``
    images, ``gained`` of which only the second gets right and ``lost`` only the first (the test
    images are the sample; the images both get right or both wrong do not move the difference)."""
    return float(np.sqrt(max(gained + lost - (gained - lost) ** 2 / n_test, 0.0)) / n_test)


def gain_bound(gained: float, lost: float, n_test: int, level: float = LEVEL) -> float:
    """The one-sided ``level`` lower bound of that gain: the gain minus z times ``paired_se``.
    NaN without the counts."""
    if not (np.isfinite(gained) and np.isfinite(lost)) or n_test <= 0:
        return np.nan
    return float((gained - lost) / n_test - norm.ppf(level) * paired_se(gained, lost, n_test))


def judged_gain(gain, bound):
    """What the control compares with its threshold: the gain's lower bound where the changed
    test images are known, else the gain itself (scalars or Series alike)."""
    return np.where(np.isfinite(bound), bound, gain)


def in_run_control(done: pd.DataFrame) -> pd.DataFrame:
    """The control that runs carried (plateau budget) in the shape of a companion control study's
    runs: one row per run that has one, its test accuracy and steps those after twice the steps."""
    if "control_test_acc" not in done:
        return pd.DataFrame(columns=done.columns)
    carried = done[done["control_test_acc"].notna()]
    return carried.assign(  # stores written before the counts existed have neither column
        test_acc=carried["control_test_acc"],
        epochs_run=carried["control_steps"],
        gained=carried.get("control_gained", np.nan),
        lost=carried.get("control_lost", np.nan),
    )


def cell_convergence(
    done: pd.DataFrame, runs: pd.DataFrame, control: pd.DataFrame | None = None, n_test: int = 0
) -> pd.DataFrame:
    """One row per (model, size) (CELL_COLUMNS). ``runs``: ``run_convergence``; ``control``: the
    budget control's finished runs (a companion study's ``done`` frame, or ``in_run_control``),
    matched to the study's runs of the same model, size and seed, with the test images its extra
    steps changed (columns ``gained`` and ``lost``, of ``n_test``) where known. ``converged`` is
    False/True, ``evidence`` 'budget control', 'cap', 'plateau stops' or 'validation curves'."""
    rows = []
    control = control if control is not None else pd.DataFrame(columns=done.columns)
    plateau = "stop" in done and bool(done["stop"].isin([PLATEAU, CAPPED]).any())  # the plateau budget's runs
    for (model, n_train), cell in done.groupby(["model", "n_train"], sort=True):
        cr = runs[(runs["model"] == model) & (runs["n_train"] == n_train)]
        std = float(cell["test_acc"].std(ddof=1)) if len(cell) > 1 else np.nan
        threshold = max(NOISE_MULTIPLE * std, GAIN_FLOOR) if np.isfinite(std) else GAIN_FLOOR
        ctl = control[(control["model"] == model) & (control["n_train"] == n_train)]
        gain, bound, ctl_epochs = np.nan, np.nan, np.nan
        if len(ctl):
            c = ctl.iloc[0]
            same = cell[cell["seed"] == c["seed"]]
            if len(same):
                gain = float(c["test_acc"] - same["test_acc"].iloc[0])
                gained, lost = (pd.to_numeric(c.get(k), errors="coerce") for k in ("gained", "lost"))
                bound = gain_bound(float(gained), float(lost), n_test)
                ctl_epochs = c["epochs_run"]
        capped = int(cr["capped"].sum())
        if capped:  # a capped run never counts as converged, whatever else says
            converged, evidence = False, "cap"
        elif np.isfinite(gain):
            converged, evidence = bool(judged_gain(gain, bound) <= threshold), "budget control"
        elif plateau:
            converged, evidence = True, "plateau stops"
        else:
            converged, evidence = bool(cr["rising"].sum() * 2 <= len(cr)), "validation curves"
        rows.append(
            {
                "model": model,
                "n_train": int(n_train),
                "runs": len(cell),
                "best_is_last": int(cr["best_is_last"].sum()),
                "rising": int(cr["rising"].sum()),
                "capped": capped,
                "seed_std": std,
                "control_gain": gain,
                "control_bound": bound,
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
        if r.evidence == "cap":
            why = f"{r.capped} of {r.runs} run(s) reached the cap on optimiser steps while still improving"
        elif r.evidence == "budget control":
            noise = (
                f" (its {100 * LEVEL:.0f}% lower bound {100 * r.control_bound:+.1f} pp)"
                if np.isfinite(r.control_bound)
                else ""
            )
            why = (
                f"twice the steps changed the same seed's test accuracy by {100 * r.control_gain:+.1f} pp{noise}, "
                f"more than {100 * r.threshold:.1f} pp (twice the seed standard deviation, at least "
                f"{100 * GAIN_FLOOR:.0f} pp)"
            )
        else:
            why = (
                f"{r.rising} of {r.runs} run(s) gained more than {100 * RISE_TOLERANCE:.0f} pp validation accuracy in "
                "their final epoch"
            )
        out.append((r.model, r.n_train, f"{r.model} with {r.n_train:,} images had not converged under {budget}: {why}"))
    return out


def budget_words(config: dict) -> str:
    """The study's training budget in words, from its stored config: 'a 6-epoch budget', or
    'a plateau budget of 6 epochs' patience, a 1-point minimum gain and a 2,000-step cap'."""
    train = (config or {}).get("train", {})
    if train.get("budget") == "plateau":
        return (
            f"a plateau budget of {train.get('patience')} epochs' patience, a {train.get('min_gain'):g}-point minimum "
            f"gain and a {int(train.get('max_steps', 0)):,}-step cap"
        )
    epochs = train.get("epochs")
    if not epochs:
        return "its training budget"
    article = "an" if str(epochs)[0] == "8" or epochs in (11, 18) else "a"  # "an 8-epoch", "an 11-epoch"
    return f"{article} {epochs}-epoch budget"
