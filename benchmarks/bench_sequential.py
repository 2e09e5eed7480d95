"""Sequential seeds (``--until-ci``) against a fixed grid: seeds, training time, the widths
reached, and whether the report's intervals and tests keep their level under the stopping rule.

Run:  PYTHONPATH=. python benchmarks/bench_sequential.py            (simulation + a real digits study)
      PYTHONPATH=. python benchmarks/bench_sequential.py --quick    (fewer repetitions, smaller real study)
      PYTHONPATH=. python benchmarks/bench_sequential.py --no-real  (the simulation only)

1. Simulation with known truth: the simulated studies of ``bench_calibration.py`` (one shared
   test set of 400 items, nested sizes 250-2,000, seed, model and cell luck), with three arms:
   'a' (pow3), 'b' (a shifted by a logit of 0.15, about 2.5 points: a close pair) and 'c' (a's
   truth: a null pair for the type-I rows), plus 'd' far below (a clearly separated pair).
   Every arm starts with 3 seeds; ``analysis.sequential.plan_next`` (the rule the study runs)
   adds seeds until every accuracy interval is within W and every difference is decided by its
   group-sequential test or within W, or MAX_SEEDS. Then the report's functions make the final
   intervals: coverage of per-size accuracy, of the differences' repeated confidence intervals,
   of the learning-curve bands at the measured sizes and of images needed; the group-sequential
   test's type-I error on the null pair over the whole sequence (and, for comparison, the
   fixed-sample t interval and test on the same runs). Compute is counted as training images (a
   run costs its size), against a fixed grid at the largest seed count reached and at the cap.
2. A real study on the bundled digits (two small timm models at 16 px, a few steps): ``study run
   --until-ci`` and the same study as a fixed grid at the largest seed count the sequential one
   reached; seeds and measured training time of each.

The last line is ``compute_ratio=R worst_coverage=C type1=T``: R = sequential / fixed-grid
training time of the real study (of the simulation with --no-real), C the worst coverage row of
the simulation (accuracy, differences, curve bands, images needed), T the type-I error of the
group-sequential test on the null pair over the whole sequence.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from analysis.curves import DEFAULT_SELECTION, fit_learning_curves, predict, summarize
from analysis.efficiency import data_needed
from analysis.group_sequential import POCOCK, SPENDING
from analysis.sequential import MORE, Target, compute_saved, group_sequential_pairs, plan_next
from analysis.stats import difference_floor, paired_comparisons, t_summary
from benchmarks.bench_calibration import EFFECT_LOGIT, N_TEST, SIZES, Study

MAX_SEEDS = 12
START_SEEDS = 3
FAR_LOGIT = -0.8  # 'd': about 15 points below 'a', a clearly separated pair
SHIFTS = {"a": 0.0, "b": EFFECT_LOGIT, "c": 0.0, "d": FAR_LOGIT}
ALPHA = 0.05


def _frame(correct: dict[str, np.ndarray], seeds: dict[tuple[str, int], int]) -> pd.DataFrame:
    """The runs a study with ``seeds`` per (arm, size index) would hold, as the loader gives them."""
    rows = []
    for arm, c in correct.items():
        for k, n in enumerate(SIZES):
            for s in range(seeds[(arm, k)]):
                rows.append(
                    {
                        "run_id": len(rows) + 1,
                        "arm": arm,
                        "model": arm,
                        "size_kind": "n_train",
                        "size_value": float(n),
                        "fraction": n / SIZES.max(),
                        "n_train": int(n),
                        "seed": s,
                        "status": "done",
                        "test_acc": float(c[s, k].mean()),
                        "train_seconds": n / 1000,  # a run costs its size
                    }
                )
    return pd.DataFrame(rows)


NEEDED_AT = 1200.0  # images needed: the target is each arm's true accuracy at this size (inside the range)


def _sequential_rep(seed: int, width: float, spending: str = POCOCK) -> dict:
    rng = np.random.default_rng(seed)
    st = Study(rng, MAX_SEEDS)
    correct = {arm: st.correct("pow3", shift) for arm, shift in SHIFTS.items()}
    truth = {arm: st.truth("pow3", SIZES, shift) for arm, shift in SHIFTS.items()}
    seeds = {(arm, k): START_SEEDS for arm in SHIFTS for k in range(len(SIZES))}
    target = Target(width, max_seeds=MAX_SEEDS, first_seeds=START_SEEDS, spending=spending)
    rounds = 0
    significant_once = np.zeros(len(SIZES), bool)  # the null pair a - c, at any look
    while True:
        runs = _frame(correct, seeds)
        significant_once |= _null_pair_significant(runs)
        plan = plan_next(runs, target, N_TEST)
        if plan.reason != MORE:
            break
        rounds += 1
        for arm, _, value, s in plan.add:
            k = int(np.flatnonzero(SIZES == value)[0])
            seeds[(arm, k)] = s + 1
    out: dict = {"reason": plan.reason, "rounds": rounds}
    summary = summarize(runs.assign(model=runs["arm"]))  # the report's: clipped to [0, 1]
    out["cov_accuracy"] = [
        r["ci_low"] <= truth[r["model"]][int(np.flatnonzero(SIZES == r["n_train"])[0])] <= r["ci_high"]
        for _, r in summary.iterrows()
    ]
    # The sequential study's differences: the repeated confidence intervals and decisions.
    seq_pairs = group_sequential_pairs(runs, target, N_TEST)
    cov, t1, decided_alt = [], [], []
    for _, r in seq_pairs.iterrows():
        k = int(np.flatnonzero(SIZES == r["n_train"])[0])
        true = truth[r["model_a"]][k] - truth[r["model_b"]][k]
        cov.append(r["ci_low"] <= true <= r["ci_high"])
        if (r["model_a"], r["model_b"]) == ("a", "c"):
            t1.append(bool(r["decided"]))
        if (r["model_a"], r["model_b"]) == ("a", "b"):
            decided_alt.append(bool(r["decided"]))
    out["cov_difference"], out["t1_group_sequential"], out["pw_close_pair"] = cov, t1, decided_alt
    # The fixed-sample t intervals and test on the same runs (what a naive report would print).
    pairs = paired_comparisons(runs.assign(model=runs["arm"]), alpha=ALPHA, n_test=N_TEST).pairwise
    naive_cov, naive_t1 = [], []
    for _, r in pairs.iterrows():
        k = int(np.flatnonzero(SIZES == r["n_train"])[0])
        true = truth[r["model_a"]][k] - truth[r["model_b"]][k]
        naive_cov.append(r["ci_low"] <= true <= r["ci_high"])
        if (r["model_a"], r["model_b"]) == ("a", "c"):
            naive_t1.append(r["p_t"] < ALPHA)
    out["info_cov_difference_naive_t"], out["info_t1_naive_t"] = naive_cov, naive_t1
    out["info_t1_stop_at_significance"] = list(significant_once)
    out.update(_curve_coverage(runs, st))
    close = seq_pairs[(seq_pairs["model_a"] == "a") & (seq_pairs["model_b"] == "b")]["n_pairs"].mean()
    null = seq_pairs[(seq_pairs["model_a"] == "a") & (seq_pairs["model_b"] == "c")]["n_pairs"].mean()
    far = seq_pairs[(seq_pairs["model_a"] == "a") & (seq_pairs["model_b"] == "d")]["n_pairs"].mean()
    out["seeds_close_pair"], out["seeds_null_pair"], out["seeds_far_pair"] = float(close), float(null), float(far)
    out["worst_half_width"] = float(plan.intervals["half_width"].max())
    out["met"] = plan.reason == "target width met"
    saved = compute_saved(runs)
    out["compute_ratio"], out["largest_seeds"] = saved["ratio"], saved["largest_seeds"]
    out["compute_vs_max_grid"] = saved["train_seconds"] / (len(SHIFTS) * MAX_SEEDS * SIZES.sum() / 1000)
    out["seeds_per_cell"] = float(np.mean(list(seeds.values())))
    return out


def _curve_coverage(runs: pd.DataFrame, st: Study) -> dict:
    """Coverage, after the stop, of each arm's learning-curve band at the measured sizes and of
    its images-needed interval for the accuracy its truth reaches at NEEDED_AT images."""
    curves = fit_learning_curves(runs.assign(model=runs["arm"]), select=DEFAULT_SELECTION, n_test=N_TEST)
    out: dict = {"cov_curve_band": [], "cov_images_needed": []}
    for arm, shift in SHIFTS.items():
        if arm not in curves.curves:
            continue
        band = predict(curves, arm, SIZES)
        truth = st.truth("pow3", SIZES, shift)
        inside = (band["ci_low"].to_numpy() <= truth) & (truth <= band["ci_high"].to_numpy())
        out["cov_curve_band"] += [bool(x) for x in inside]
        goal = float(st.truth("pow3", np.array([NEEDED_AT]), shift)[0])
        r = data_needed(curves, [goal])
        r = r[r["model"] == arm].iloc[0]
        out["cov_images_needed"].append(bool(r["ci_low"] <= NEEDED_AT <= r["ci_high"]))
    return out


def _null_pair_significant(runs: pd.DataFrame) -> np.ndarray:
    """Per size, whether the paired t-test of the null pair a - c is significant at this look
    (what a rule that stopped a pair once significant would report as its answer)."""
    # one pivot per look, not one per size: this runs at every round of every simulated study
    pair = runs[runs["arm"].isin(("a", "c"))]
    at = pair.pivot_table(index="seed", columns=["n_train", "arm"], values="test_acc")
    floor = difference_floor(N_TEST)
    out = []
    for n in SIZES:
        d = (at[(n, "a")] - at[(n, "c")]).dropna().to_numpy()
        out.append(t_summary(d, floor=floor)["p"] < ALPHA)
    return np.array(out)


RATES = (
    "cov_accuracy",
    "cov_difference",
    "cov_curve_band",
    "cov_images_needed",
    "t1_group_sequential",
    "pw_close_pair",
    "info_cov_difference_naive_t",
    "info_t1_naive_t",
    "info_t1_stop_at_significance",
)
MEANS = (
    "seeds_per_cell",
    "largest_seeds",
    "compute_ratio",
    "compute_vs_max_grid",
    "rounds",
    "seeds_close_pair",
    "seeds_null_pair",
    "seeds_far_pair",
)


def simulate(widths: tuple[float, ...], reps: int, jobs: int, spending: str = POCOCK) -> pd.DataFrame:
    """One row per target width: coverage, type-I error, seeds and compute under the rule."""
    rows = []
    par = Parallel(n_jobs=jobs, batch_size=4)
    for w in widths:
        results = par(delayed(_sequential_rep)(9_000_000 + i, w, spending) for i in range(reps))
        row = {"W_points": 100 * w, "spending": spending, "reps": reps}
        for key in RATES:
            values = np.concatenate([np.asarray(r[key], float) for r in results])
            p = float(values.mean())
            row[key] = p
            row[f"{key}_se"] = float(np.sqrt(p * (1 - p) / len(values)))
        for key in MEANS:
            row[key] = float(np.mean([r[key] for r in results]))
        row["share_met"] = float(np.mean([r["met"] for r in results]))
        row["worst_half_width_points"] = 100 * float(np.max([r["worst_half_width"] for r in results]))
        rows.append(row)
    return pd.DataFrame(rows)


# -- a real study on digits -----------------------------------------------------------------------

REAL = [
    "--models",
    "test_resnet,test_efficientnet",
    "--image-size",
    "16",
    "--budget",
    "fixed",
    "--no-budget-control",
    "--epochs",
    "2",
    "--min-steps",
    "8",
    "--threads",
    "1",
    "--jobs",
    "1",
    "--quiet",
    "--no-costs",
    "--no-deploy",
    "--no-report",
]


def _study(out: Path, *args: str) -> tuple[pd.DataFrame, float]:
    """Run ``study run`` in a fresh process; its runs as the loader reads them, and the command's
    wall-clock seconds (data, model checks and process start included)."""
    start = time.time()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "study", "run", "--out", str(out), *REAL, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"study run failed: {proc.stderr[-2000:]}")
    from analysis.load import load_study

    return load_study(f"sqlite:///{out / 'study.db'}").runs, time.time() - start


def real_study(fractions: str, until_ci: float, max_seeds: int) -> dict:
    """The sequential study and the fixed grid at its largest seed count, on digits."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--seeds", "3", "--until-ci", str(until_ci), "--max-seeds", str(max_seeds)]
        seq, seq_wall = _study(Path(tmp) / "sequential", "--fractions", fractions, *flags)
        from analysis.load import load_study

        rounds = load_study(f"sqlite:///{Path(tmp) / 'sequential' / 'study.db'}").sequential
        saved = compute_saved(seq)
        grid = ["--fractions", fractions, "--seeds", str(saved["largest_seeds"])]
        fixed, fixed_wall = _study(Path(tmp) / "fixed", *grid)
    done = fixed[fixed["status"] == "done"]
    return {
        "sequential_runs": saved["runs"],
        "fixed_runs": len(done),
        "largest_seeds": saved["largest_seeds"],
        "sequential_train_s": saved["train_seconds"],
        "fixed_train_s": float(done["train_seconds"].sum()),
        "ratio_measured": saved["train_seconds"] / float(done["train_seconds"].sum()),
        "ratio_estimated": saved["ratio"],
        "sequential_wall_s": seq_wall,
        "fixed_wall_s": fixed_wall,
        "stopped": rounds["reason"].iloc[-1] if len(rounds) else "",
        "seeds_per_cell": seq[seq["status"] == "done"].groupby(["arm", "n_train"])["seed"].nunique().to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller real study")
    parser.add_argument("--no-real", action="store_true", help="the simulation only")
    parser.add_argument("--widths", default="4", help="target half-widths W in points, comma-separated (default 4)")
    parser.add_argument("--spending", default=POCOCK, choices=SPENDING, help="the spending function (default pocock)")
    parser.add_argument("--reps", type=int, default=0, help="studies per W (default 200; 40 with --quick)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    start = time.time()
    reps = args.reps or (40 if args.quick else 200)
    widths = tuple(float(w) / 100 for w in args.widths.split(","))
    sim = simulate(widths, reps, args.jobs, args.spending)
    pd.set_option("display.width", 220)
    print(
        f"Simulation: {reps} studies per W; 4 arms x 4 sizes, {START_SEEDS} seeds to start, at most {MAX_SEEDS}; "
        f"{args.spending} spending. cov_* = coverage at the stop of the 95% intervals the sequential report shows "
        "(accuracy: Student t; difference: the repeated confidence interval; curve band at the measured sizes; "
        f"images needed for each arm's true accuracy at {NEEDED_AT:,.0f} images); t1_group_sequential = a null "
        "pair ever decided; pw_close_pair = the 2.5-point pair decided; info_*: the fixed-sample t interval and "
        "test on the same runs, and a rule that stops a pair once its plain t-test is significant (not used); "
        "compute_ratio = training images / a fixed grid at the largest seed count reached, compute_vs_max_grid "
        "/ a fixed grid at the seed cap"
    )
    print(sim.round(3).set_index("W_points").T.to_string())
    print(f"[simulation: {time.time() - start:.0f} s]", file=sys.stderr, flush=True)
    worst = float(sim[["cov_accuracy", "cov_difference", "cov_curve_band", "cov_images_needed"]].min().min())
    type1 = float(sim["t1_group_sequential"].max())
    ratio = float(sim["compute_ratio"].iloc[0])
    if not args.no_real:
        real = real_study("0.25,1.0" if args.quick else "0.1,0.25,1.0", 3.0, 5 if args.quick else 8)
        print("\nReal study on digits (test_resnet, test_efficientnet, 16 px, 2 epochs), --until-ci 3:")
        for key, value in real.items():
            print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")
        ratio = real["ratio_measured"]
    print(f"\n{time.time() - start:.0f} s with {args.jobs} jobs; load average {os.getloadavg()[0]:.1f}")
    print(f"compute_ratio={ratio:.3f} worst_coverage={worst:.3f} type1={type1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
