"""The compute that pruning saves when tuning: the same number of Optuna trials on digits, once
with the median pruner and once without (and with Hyperband if asked), through study/tune.py's
own ``tune_cell`` (seeded TPE, validation accuracy reported after each epoch), in one process.

Compute is counted in training epochs (``epochs_run`` of every trial): on a shared machine a
epoch costs the same whichever tuner asked for it, while seconds are noisy. Seconds are printed
as well, for reference. Each tuner runs once per TPE seed (``--repeats``); the ratios compare the
epochs summed over seeds and the best validation accuracy averaged over seeds.

    python benchmarks/bench_pruning.py --trials 20

The last line is exactly ``pruned/unpruned epochs=R1 best_val pruned/unpruned=R2``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default="test_resnet", help="any timm model name (default test_resnet: a real, small ResNet)"
    )
    p.add_argument("--image-size", type=int, default=16, help="digits are decoded at this side in pixels (default 16)")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of the training pool the trials train on")
    p.add_argument("--trials", type=int, default=20, help="finished trials per tuner (default 20)")
    p.add_argument("--epochs", type=int, default=0, help="epochs per trial (default: the study's, train.epochs)")
    p.add_argument(
        "--min-steps", type=int, default=0, help="floor on optimiser steps (default: the study's, train.min_steps)"
    )
    p.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE and pruning (default 5)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="epochs before a trial may be pruned (default 2)")
    p.add_argument(
        "--repeats", type=int, default=3, help="TPE sampler seeds 0..N-1, the same for every tuner (default 3)"
    )
    p.add_argument("--hyperband", action="store_true", help="also tune with the Hyperband pruner")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a study's CPU workers)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from study.config import DataConfig, StudyConfig, TrainConfig, TuneConfig
    from study.plan import load_data
    from study.splits import training_subset
    from study.train import TrainData, train_run
    from study.tune import optuna_storage, tune_cell

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_pruning_"))
    cfg = StudyConfig(out=str(work), data=DataConfig(image_size=args.image_size))
    dataset, splits, _ = load_data(cfg)
    device = torch.device("cpu")
    with warnings.catch_warnings():  # a read-only memmap is only ever read
        warnings.simplefilter("ignore", UserWarning)
        data = TrainData.from_arrays(dataset.images, dataset.labels, dataset.num_classes, device, dataset.hflip)
    idx = training_subset(
        splits, dataset.labels, "fraction", args.fraction, 0, cfg.data.min_per_class, dataset.class_names
    )
    base = TrainConfig().resolved(args.model)
    base = replace(base, epochs=args.epochs or base.epochs, min_steps=args.min_steps or base.min_steps)
    tune = TuneConfig(trials=args.trials, startup_trials=args.startup_trials, warmup_epochs=args.warmup_epochs)

    def train(hp, on_epoch):
        return train_run(data, idx, splits.val, splits.val, args.model, hp, 0, device, on_epoch=on_epoch)

    pruners = ["none", "median"] + (["hyperband"] if args.hyperband else [])
    print(
        f"{args.model} on digits at {args.image_size} px, {len(idx)} training images, {len(splits.val)} validation; "
        f"{args.trials} trials of up to {base.epochs} epochs each, TPE seeds 0..{args.repeats - 1}"
    )
    print(
        f"{'pruner':10s} {'seed':>4s} {'epochs':>7s} {'complete':>8s} {'pruned':>6s} {'best_val':>8s} {'seconds':>8s}"
    )
    epochs: dict[str, int] = {p: 0 for p in pruners}
    best: dict[str, list[float]] = {p: [] for p in pruners}
    for seed in range(args.repeats):
        for pruner in pruners:
            storage = optuna_storage(f"sqlite:///{work / pruner}-{seed}.db")
            start = time.perf_counter()
            study = tune_cell("bench", storage, train, base, replace(tune, pruner=pruner, seed=seed), {})
            seconds = time.perf_counter() - start
            trials = study.get_trials()
            trained = sum(t.user_attrs["epochs_run"] for t in trials)
            states = [t.state.name for t in trials]
            epochs[pruner] += trained
            best[pruner].append(study.best_value)
            print(
                f"{pruner:10s} {seed:4d} {trained:7d} {states.count('COMPLETE'):8d} {states.count('PRUNED'):6d} "
                f"{study.best_value:8.4f} {seconds:8.1f}"
            )
    mean_best = {p: sum(v) / len(v) for p, v in best.items()}
    for pruner in pruners:
        print(f"{pruner:10s} total epochs={epochs[pruner]} mean best_val={mean_best[pruner]:.4f}")
    if args.hyperband:
        print(
            f"hyperband/unpruned epochs={epochs['hyperband'] / epochs['none']:.3f} best_val "
            f"hyperband/unpruned={mean_best['hyperband'] / mean_best['none']:.3f}"
        )
    print(
        f"pruned/unpruned epochs={epochs['median'] / epochs['none']:.3f} best_val "
        f"pruned/unpruned={mean_best['median'] / mean_best['none']:.3f}"
    )


if __name__ == "__main__":
    main()
