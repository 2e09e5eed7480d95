"""The default study under the two training budgets, one after the other on this machine:

  (a) fixed:   today's fixed budget (8 epochs, at least 160 optimiser steps, cosine schedule,
               no early stopping, no budget control), as the default study ran before the
               plateau budget;
  (b) plateau: the new default (train until validation stops improving, under a cap), with the
               budget control it runs by default: seed 0 of each model at the smallest and the
               largest size trains as many steps again after its stop.

Each is the whole ``python -m study run`` command (costs, training, ONNX deployment and the
report), timed by wall clock in a fresh output folder. Then, from (b)'s store: per cell, how the
runs stopped and the control's verdict (``analysis.convergence``), and the mean test accuracy of
each model at each size under both budgets.

    python benchmarks/bench_budget.py [--fractions 0.1,0.25,0.5,1.0] [--out DIR]

The last line is exactly ``converged_cells=C/T time_ratio=R``: the cells the control found
converged under the plateau budget, out of those it controlled, and (b)'s wall time over (a)'s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

FIXED = ["--budget", "fixed", "--epochs", "8", "--min-steps", "160", "--patience", "0", "--no-budget-control"]


def run_study(out: Path, fractions: str, extra: list[str]) -> float:
    """Wall seconds of one ``python -m study run`` into ``out``."""
    command = [sys.executable, "-m", "study", "run", "--fractions", fractions, "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="the default study's fractions")
    p.add_argument("--out", default="", help="folder for the two studies (default: a temporary one)")
    args = p.parse_args(argv)

    import pandas as pd

    from analysis.convergence import cell_convergence, in_run_control, judged_gain, run_convergence
    from analysis.load import load_study

    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-budget-"))
    fixed_s = run_study(folder / "fixed", args.fractions, FIXED)
    print(f"fixed:   {fixed_s:.0f} s", flush=True)
    plateau_s = run_study(folder / "plateau", args.fractions, [])
    print(f"plateau: {plateau_s:.0f} s", flush=True)

    plateau = load_study(f"sqlite:///{folder / 'plateau' / 'study.db'}")
    fixed = load_study(f"sqlite:///{folder / 'fixed' / 'study.db'}")
    done = plateau.done
    cells = cell_convergence(done, run_convergence(done, plateau.epochs), in_run_control(done), len(plateau.y_test))
    steps = done.groupby(["model", "n_train"])["steps_run"].agg(["min", "max"])
    cols = [
        "model",
        "n_train",
        "capped",
        "seed_std",
        "control_gain",
        "control_bound",
        "threshold",
        "converged",
        "evidence",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(cells[cols].join(steps, on=["model", "n_train"]).to_string(index=False))
        accuracy = pd.DataFrame(
            {
                "fixed": fixed.done.groupby(["model", "n_train"])["test_acc"].mean(),
                "plateau": done.groupby(["model", "n_train"])["test_acc"].mean(),
            }
        )
        print((100 * accuracy).round(1).to_string())
    # The control's cells: every model at the smallest and the largest size (a capped seed 0 has no
    # control, and its cell counts as not converged).
    ends = cells.groupby("model")["n_train"].transform(lambda n: n.isin([n.min(), n.max()]))
    controlled = cells[ends]
    # The cheap per-run signal (no run capped) against the control's verdict, cell by cell.
    by_runs = controlled["capped"] == 0
    by_control = judged_gain(controlled["control_gain"], controlled["control_bound"]) <= controlled["threshold"]
    print(f"per-run stops agree with the control on {int((by_runs == by_control).sum())} of {len(controlled)} cells")
    print(f"cells not converged (all {len(cells)}): {int((~cells['converged']).sum())}")
    print(
        f"converged_cells={int(controlled['converged'].sum())}/{len(controlled)} time_ratio={plateau_s / fixed_s:.2f}"
    )


if __name__ == "__main__":
    main()
