"""The budget control and the stopping rule on real trajectories of the default study.

Each model of the default study trains seeds 0-4 on 116 digits (10%) and seeds 0-2 on 1,151
(100%), by the plateau budget's recipe, on one thread, well past where the stopping rule stops; the
averaged weights' validation accuracy and test predictions are recorded after every epoch. The runs
are the study's own: the same subsets, initialisation, batch streams and memory layout (channels-last,
the default since 2026-12-06; before, each process timed the layouts as a study did once, and where
the two picked differently the rounding differed: ResNet-18 at 1,151 images stopped at 288-432 steps
here and at 396-576 in the study of 2026-12-06, docs/performance.md). Then, replayed on them:

1. **The control's false alarms and power** (``analysis.convergence.gain_bound``): for every epoch
   k at or after the default rule's stop, the control from k to 2k, called unconverged by the gain alone
   (the rule before 2026-12-06) and by its one-sided 95% bound, both against the 1-point floor;
   the spread of the gain across seeds at equal k against the paired standard error; and, before
   the stop, how often the bound calls pairs that gained 3 points or more unconverged.
2. **The stopping rule's variants** (``study.plateau.Plateau``: patience, minimum gain): per
   model and size, the mean steps to the stop, the runs capped at 2,000 steps, the test accuracy
   at the stop and the mean gain from twice the steps (the control's question, averaged over seeds).

    python benchmarks/bench_control.py [--out DIR] [--reuse]
    python benchmarks/bench_control.py --lr 0.02 --models mobilenetv2_100 --fractions 0.1 --out DIR

The second form asks whether another recipe for every model (a learning rate, a batch size) would
stop the slowest model sooner: it records those runs under it, and part 2 gives their stops.

About 35 minutes on two cores (``--reuse`` analyses what ``--out`` already holds). The last line
is ``false_alarms_gain=A false_alarms_bound=B`` (the share of the pairs past the stop called
unconverged at the 1-point floor, over every model and size).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analysis.convergence import GAIN_FLOOR, gain_bound, paired_se  # noqa: E402
from study.plateau import Plateau  # noqa: E402
from study.store.schema import flips  # noqa: E402

MODELS = ("mobilenetv2_100", "mobilevit_xxs", "resnet18")
# (fraction, seeds, steps recorded per model): past every stop of the default study and its doubling.
PLAN = (
    (0.1, range(5), {"mobilenetv2_100": 2000, "mobilevit_xxs": 1000, "resnet18": 1000}),
    (1.0, range(3), {"mobilenetv2_100": 2088, "mobilevit_xxs": 1188, "resnet18": 1476}),
)
CAP = 2000  # the plateau budget's max_steps
RULES = [(patience, gain) for patience in (4, 6, 8) for gain in (0.5, 1.0)]


def record(model: str, fraction: float, seed: int, steps: int, path: Path, recipe: dict) -> None:
    """Train one run of the default study past its stop, its ``[train]`` settings changed by
    ``recipe``; write every epoch's validation accuracy and test predictions (of the averaged
    weights, as the study evaluates them) to ``path``."""
    import dataclasses

    import torch

    from study import splits as splitting
    from study.config import StudyConfig
    from study.images import image_source
    from study.plan import load_data
    from study.train import build_loop, evaluate

    torch.set_num_threads(1)  # as every CPU run of a study (--threads 1)
    cfg = StudyConfig()
    dataset, splits, _ = load_data(cfg)
    train = splitting.training_subset(
        splits, dataset.labels, "fraction", fraction, seed, cfg.data.min_per_class, dataset.class_names
    )
    device = torch.device("cpu")
    data = image_source(dataset, device, 1 << 34).for_run(train, splits.val, splits.test)
    loop = build_loop(data, train, model, dataclasses.replace(cfg.train, **recipe).resolved(model), seed, device)
    kwargs = dict(
        data=data,
        input_size=loop.input_size,
        mean=loop.mean,
        std=loop.std,
        device=device,
        channels_last=loop.channels_last,  # evaluated in the layout it trained in, as in a study
    )
    epochs = []
    for _ in range(steps // loop.steps_per_epoch):
        loop.run(loop.steps_per_epoch)
        with loop.averaged():
            val = evaluate(loop.plain, indices=splits.val, **kwargs)[1]
            predictions = evaluate(loop.plain, indices=splits.test, **kwargs)[2]
        epochs.append({"val": val, "tp": predictions.tolist()})
    labels = data.labels_of(np.asarray(splits.test)).tolist()
    record = {"model": model, "n": len(train), "seed": seed, "spe": loop.steps_per_epoch, "yt": labels}
    path.write_text(json.dumps({**record, "rows": epochs}))


def load(folder: Path) -> list[dict]:
    """The recorded trajectories, each with its test accuracy per epoch."""
    out = []
    for path in sorted(folder.glob("*.json")):
        t = json.loads(path.read_text())
        labels = np.asarray(t["yt"])
        t["pred"] = np.asarray([r["tp"] for r in t["rows"]])
        t["test"] = (t["pred"] == labels).mean(axis=1)
        t["val"] = np.asarray([r["val"] for r in t["rows"]])
        t["labels"] = labels
        out.append(t)
    return out


def stop_epoch(t: dict, patience: int, gain: float) -> int | None:
    """The epoch the plateau rule stops after, or None when it reaches the cap first."""
    rule = Plateau(patience, gain / 100)
    cap = min(len(t["val"]), CAP // t["spe"])
    return next((e for e in range(1, cap + 1) if rule.stopped(e, t["val"][e - 1])), None)


def control(t: dict, k: int) -> tuple[float, float, float]:
    """(gain, its one-sided 95% bound, its paired standard error) of the control from epoch k to 2k."""
    n = len(t["labels"])
    gained, lost = flips(t["pred"][k - 1], t["pred"][2 * k - 1], t["labels"])
    return (gained - lost) / n, gain_bound(gained, lost, n), paired_se(gained, lost, n)


def control_table(runs: list[dict]) -> pd.DataFrame:
    """Part 1: every control pair (k, 2k) of every run, past its stop (the default rule) or before it."""
    from study.config import TrainConfig

    default = TrainConfig()
    rows = []
    for t in runs:
        stop = stop_epoch(t, default.patience, default.min_gain) or min(len(t["val"]), CAP // t["spe"])
        for k in range(1, len(t["val"]) // 2 + 1):
            gain, bound, se = control(t, k)
            rows.append((t["model"], t["n"], t["seed"], k, k >= stop, gain, bound, se))
    return pd.DataFrame(rows, columns=["model", "n", "seed", "k", "past_stop", "gain", "bound", "se"])


def rule_table(runs: list[dict]) -> pd.DataFrame:
    """Part 2: each rule's stops per run."""
    rows = []
    for patience, gain in RULES:
        for t in runs:
            stop = stop_epoch(t, patience, gain)
            doubled = stop is not None and 2 * stop <= len(t["test"])
            rows.append(
                {
                    "rule": f"patience {patience}, gain {gain:g}",
                    "model": t["model"],
                    "n": t["n"],
                    "steps": stop * t["spe"] if stop else np.nan,
                    "capped": stop is None,
                    "test": t["test"][stop - 1] if stop else np.nan,
                    "gain_2x": t["test"][2 * stop - 1] - t["test"][stop - 1] if doubled else np.nan,
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="", help="folder for the trajectories (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="analyse the trajectories already in --out")
    p.add_argument("--models", default=",".join(MODELS), help="which of the default study's models to record")
    p.add_argument("--fractions", default="0.1,1.0", help="which of the two sizes to record: 0.1, 1.0 or both")
    p.add_argument("--lr", type=float, default=0.0, help="another recipe: this learning rate (default: the study's)")
    p.add_argument("--batch-size", type=int, default=0, help="another recipe: this batch size (default: the study's)")
    args = p.parse_args(argv)
    recipe = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v}
    models, fractions = args.models.split(","), {float(f) for f in args.fractions.split(",")}
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-control-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        jobs = [
            (model, fraction, seed, steps[model], folder / f"{model}_{fraction}_{seed}.json", recipe)
            for fraction, seeds, steps in PLAN
            if fraction in fractions
            for seed in seeds
            for model in models
        ]
        Parallel(n_jobs=2)(delayed(record)(*job) for job in jobs)
    runs = load(folder)
    pairs = control_table(runs)
    pd.set_option("display.width", 200)
    past = pairs[pairs["past_stop"]]
    summary = past.groupby(["n", "model"]).agg(
        pairs=("gain", "size"),
        gain_mean=("gain", "mean"),
        gain_sd=("gain", "std"),
        se_mean=("se", "mean"),
        alarms_gain=("gain", lambda g: np.mean(g > GAIN_FLOOR)),
        alarms_bound=("bound", lambda b: np.mean(b > GAIN_FLOOR)),
    )
    # the gain's spread across seeds at equal k (k past every seed's stop), against the paired SE
    shared = past.groupby(["n", "model", "k"]).filter(lambda g: len(g) >= 3)
    summary["sd_across_seeds"] = shared.groupby(["n", "model", "k"])["gain"].std().groupby(["n", "model"]).mean()
    print("Part 1. Control pairs (k, 2k) past the stop (gain, SD and SE in points; alarms: share called unconverged)")
    print(
        summary.assign(**{c: 100 * summary[c] for c in ("gain_mean", "gain_sd", "se_mean", "sd_across_seeds")})
        .round(3)
        .to_string()
    )
    before = pairs[~pairs["past_stop"]].assign(band=lambda d: pd.cut(100 * d["gain"], [-100, 1, 2, 3, 5, 100]))
    power = before.groupby("band", observed=True).agg(
        pairs=("gain", "size"),
        gain_rule=("gain", lambda g: np.mean(g > GAIN_FLOOR)),
        bound_rule=("bound", lambda b: np.mean(b > GAIN_FLOOR)),
    )
    print("\nBefore the stop: pairs by their gain (points), share called unconverged")
    print(power.round(3).to_string())
    rules = rule_table(runs)
    by_cell = rules.groupby(["rule", "model", "n"]).agg(
        steps=("steps", "mean"), capped=("capped", "sum"), test=("test", "mean"), gain_2x=("gain_2x", "mean")
    )
    by_cell[["test", "gain_2x"]] *= 100
    print("\nPart 2. Stopping rules: mean steps to the stop, runs capped, test accuracy there and gain from twice the")
    print("steps (means over the runs not capped)")
    print(by_cell.round(2).to_string())
    totals = (
        rules.assign(steps=rules["steps"].fillna(CAP))
        .groupby("rule")
        .agg(steps=("steps", "sum"), capped=("capped", "sum"))
    )
    totals["worst_cell_gain_2x"] = by_cell.groupby("rule")["gain_2x"].max()  # capped runs count as the cap
    print(totals.to_string())
    print(
        f"false_alarms_gain={(past['gain'] > GAIN_FLOOR).mean():.3f} "
        f"false_alarms_bound={(past['bound'] > GAIN_FLOOR).mean():.3f}"
    )


if __name__ == "__main__":
    main()
