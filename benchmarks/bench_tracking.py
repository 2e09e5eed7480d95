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

On a machine shared with other work, wall time varies by more than the cost being measured, so
the benchmark also reports what does not depend on the neighbours: training images per second
of this process's CPU time (both threads, the tracker's included), the CPU time of the tracker's
own thread per run, and how long the training thread waited for the tracker at the run's end.

    PYTHONPATH=. python benchmarks/bench_tracking.py --model mobilenetv2_100 --repeats 5

The last line is exactly ``tracked/untracked=R cpu=C``: R of wall time, C of CPU time.
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

    class TimedTracker(tracking.Tracker):
        """The module's tracker, with the CPU time of its thread's calls counted."""

        cpu = 0.0

        def submit(self, op) -> None:
            def timed(client) -> None:
                start = time.thread_time()
                try:
                    op(client)
                finally:
                    TimedTracker.cpu += time.thread_time() - start

            super().submit(timed)

    tracker = TimedTracker(uri)
    study = tracking.StudyInfo("bench", "0" * 16, "bench-tracking", tracking.study_tags("bench", "sqlite://", ""))
    cell = Cell(args.model, "fraction", args.fraction, 0)

    def one_run(tracked: bool) -> dict[str, float]:
        """One whole run, tracked or not: training images per second of wall and of CPU time,
        the tracker thread's CPU seconds and the wait for the tracker at the end."""
        start, cpu, tracker_cpu = time.perf_counter(), time.process_time(), TimedTracker.cpu
        run = tracking.NO_RUN
        if tracked:
            params = {"arm": cell.arm_name, "n_train": len(train_idx), **tracking.train_params(hp)}
            run = tracker.start_run(study, tracking.RUN, cell.key, params, {})
        result = train_run(data, train_idx, splits.val, splits.test, args.model, hp, 0, device, on_epoch=run.epoch)
        run.end("FINISHED", "done", tracking.final_metrics(result))
        waited = time.perf_counter()
        run.close()
        end = time.perf_counter()
        if tracked and tracker.failed:
            sys.exit("the tracker failed; see the warning above")
        images = result.history[-1].images_seen
        return {
            "wall": images / (end - start),
            "cpu": images / (time.process_time() - cpu),
            "tracker_cpu": TimedTracker.cpu - tracker_cpu,
            "wait": end - waited,
        }

    print(
        f"{args.model} on {len(train_idx)} digits images, {args.epochs} epochs, device {device}, "
        f"{torch.get_num_threads()} threads; tracker {tracking.masked_url(uri)}"
    )
    one_run(False), one_run(True)  # warm-up: caches, allocator, MLflow's import and its store
    off, on = [], []
    for i in range(args.repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {tracked: one_run(tracked) for tracked in order}
        off.append(runs[False])
        on.append(runs[True])
        a, b = runs[False], runs[True]
        print(
            f"  pair {i + 1}: off {a['wall']:.1f} img/s, on {b['wall']:.1f} img/s "
            f"(wall, ratio {b['wall'] / a['wall']:.4f}); "
            f"off {a['cpu']:.1f}, on {b['cpu']:.1f} img per CPU-s (ratio {b['cpu'] / a['cpu']:.4f}); tracker thread "
            f"{b['tracker_cpu'] * 1000:.0f} ms CPU, end wait {b['wait'] * 1000:.0f} ms"
        )

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    wall = statistics.median(b["wall"] / a["wall"] for a, b in zip(off, on))
    cpu = statistics.median(b["cpu"] / a["cpu"] for a, b in zip(off, on))
    print(f"untracked: {median(off, 'wall'):.1f} images/s, {median(off, 'cpu'):.1f} images per CPU-second")
    print(
        f"tracked:   {median(on, 'wall'):.1f} images/s, {median(on, 'cpu'):.1f} images per CPU-second; the tracker's "
        f"thread {median(on, 'tracker_cpu') * 1000:.0f} ms CPU and the wait at the run's end "
        f"{median(on, 'wait') * 1000:.0f} ms per run (medians of {args.repeats})"
    )
    print(f"tracked/untracked={wall:.4f} cpu={cpu:.4f}")
    temp.cleanup()


if __name__ == "__main__":
    main()
