"""The speed cost of MLflow tracking (``--mlflow``): the same training runs with tracking off and
on, in one process, alternating.

Each run is a study run as a worker does it (``study.train.train_run`` on the digits cache, the
default study's budget); with tracking on it is also an MLflow run in a real tracker (a file store
in a temporary folder by default, or ``--mlflow URI``) made through ``study.tracking``: the run
started with its params, every epoch's metrics, the final metrics, and the wait at its end until
everything reached the tracker (``TrackedRun.close``), all inside the timed span. Throughput is
training images per second of the whole run's wall time. The runs alternate off, on, off, on...
(the order flipped every other pair) after one untimed run of each, so other work on a shared
machine slows both alike; the ratio is the median of the per-pair ratios.

    PYTHONPATH=. python benchmarks/bench_tracking.py --model mobilenetv2_100 --repeats 5

The last line is exactly ``tracked/untracked=R``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mobilenetv2_100", help="any timm model name (default mobilenetv2_100)")
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of the digits pool a run trains on")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8, the default study's)")
    p.add_argument("--min-steps", type=int, default=160, help="optimiser steps per run at least (default 160)")
    p.add_argument("--repeats", type=int, default=5, help="timed pairs of runs (off and on)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (all cores)")
    p.add_argument("--mlflow", default="", help="tracking URI (default: a file store in a temporary folder)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import os

    import torch

    from study import tracking
    from study.config import DataConfig, TrainConfig
    from study.datasets import load_dataset
    from study.images import image_source, memory_budget
    from study.splits import make_splits, training_subset
    from study.store.schema import Cell
    from study.train import resolve_device, train_run

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    temp = tempfile.TemporaryDirectory()
    dataset = load_dataset(DataConfig(), Path(temp.name) / "cache")
    splits = make_splits(dataset.labels, dataset.class_names, 0.2, 0.2, 2, dataset.test_mask, None)
    train_idx = training_subset(splits, dataset.labels, "fraction", args.fraction, 0, 2, dataset.class_names)
    data = image_source(dataset, device, memory_budget("", device))
    hp = TrainConfig(epochs=args.epochs, min_steps=args.min_steps).resolved(args.model)
    uri = args.mlflow or str(Path(temp.name) / "mlruns")
    if not args.mlflow:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    tracker = tracking.Tracker(uri)
    study = tracking.StudyInfo("bench", "0" * 16, "bench-tracking", tracking.study_tags("bench", "sqlite://", ""))
    cell = Cell(args.model, "fraction", args.fraction, 0)

    def one_run(tracked: bool) -> float:
        """Training images per second of one whole run, tracked or not."""
        start = time.perf_counter()
        run = tracking.NO_RUN
        if tracked:
            params = {"arm": cell.arm_name, "n_train": len(train_idx), **tracking.train_params(hp)}
            run = tracker.start_run(study, tracking.RUN, cell.key, params, {})
        result = train_run(data, train_idx, splits.val, splits.test, args.model, hp, 0, device, on_epoch=run.epoch)
        run.end("FINISHED", "done", tracking.final_metrics(result))
        run.close()
        seconds = time.perf_counter() - start
        if tracked and tracker.failed:
            sys.exit("the tracker failed; see the warning above")
        return result.history[-1].images_seen / seconds

    print(
        f"{args.model} on {len(train_idx)} digits images, {args.epochs} epochs, device {device}, "
        f"{torch.get_num_threads()} threads; tracker {tracking.masked_url(uri)}"
    )
    one_run(False), one_run(True)  # warm-up: caches, allocator, MLflow's import and its store
    off, on, ratios = [], [], []
    for i in range(args.repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        speeds = {tracked: one_run(tracked) for tracked in order}
        off.append(speeds[False])
        on.append(speeds[True])
        ratios.append(speeds[True] / speeds[False])
        print(f"  pair {i + 1}: off {speeds[False]:.1f} img/s, on {speeds[True]:.1f} img/s, ratio {ratios[-1]:.4f}")
    print(f"untracked: {statistics.median(off):.1f} images/s (median of {args.repeats} runs)")
    print(f"tracked:   {statistics.median(on):.1f} images/s (median of {args.repeats} runs)")
    print(f"tracked/untracked={statistics.median(ratios):.4f}")
    temp.cleanup()


if __name__ == "__main__":
    main()
