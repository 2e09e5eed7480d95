"""Wall time of one small study run with different ``--jobs``, on this machine.

Each setting runs the same study (``python -m study run`` in a fresh output folder, the decoded
dataset shared) as a real process, so worker start-up, data loading and the store's bookkeeping
count as they do for a researcher. Settings are interleaved, in rotating order, ``--repeats``
times; the ratio is the median of the per-repetition ratios.

    python benchmarks/bench_jobs.py                  # --jobs 1 against --jobs 2
    python benchmarks/bench_jobs.py --jobs 1,2,0     # and the default (0: sized to the machine)

The last line is exactly ``jobs1/jobs2=R``: the study's wall time with the first setting over its
time with the second (above 1: the second is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--jobs",
        default="1,2",
        help="settings to compare, comma-separated (default 1,2); the ratio is of the first two",
    )
    p.add_argument("--models", default="mobilevit_xxs,mobilenetv2_100,resnet18", help="the default study's models")
    p.add_argument("--fractions", default="0.1,0.5")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    return p.parse_args(argv)


def run_study(out: Path, cache: Path, jobs: str, args) -> float:
    config = out.parent / f"{out.name}.toml"
    config.write_text(f'[data]\ncache_dir = "{cache}"\n')
    command = [
        sys.executable, "-m", "study", "run", "--config", str(config), "--out", str(out),
        "--models", args.models, "--fractions", args.fractions,
        "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
        "--device", "cpu", "--jobs", jobs,
        "--no-report", "--no-costs", "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"study run --jobs {jobs} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    from study.config import DataConfig
    from study.datasets import load_dataset
    from study.machine import available_cores, plan_workers

    settings = [s.strip() for s in args.jobs.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench_jobs-"))
    load_dataset(DataConfig(image_size=args.image_size), work / "cache")  # decoded once, before timing
    n_runs = len(args.models.split(",")) * len(args.fractions.split(",")) * args.seeds
    print(
        f"study: models={args.models} fractions={args.fractions} seeds={args.seeds} epochs={args.epochs} "
        f"image={args.image_size} runs={n_runs} cores={available_cores()}"
    )
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(args.repeats):
        for jobs in settings[r % len(settings) :] + settings[: r % len(settings)]:
            seconds[jobs].append(run_study(work / f"out-{jobs}-{r}", work / "cache", jobs, args))
    for jobs in settings:
        workers, threads = plan_workers(int(jobs), "cpu", n_runs)
        times = " ".join(f"{s:.1f}" for s in seconds[jobs])
        print(
            f"--jobs {jobs:3s} ({workers} worker(s) x {threads} thread(s)): {statistics.median(seconds[jobs]):7.1f} "
            f"s   runs: {times}"
        )
    a, b = settings[0], settings[1]
    ratio = statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))
    print(f"load average before/after (other work on this machine): {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"jobs{a}/jobs{b}={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
