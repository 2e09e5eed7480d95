"""Training throughput on a dataset larger than the memory budget: streamed from the cache file
against the same run fully resident, on the CPU, and a streaming worker's peak memory.

A synthetic cache (``images.npy``, uint8 N x S x S x 3, as the harness writes it) of
``--data-mb`` megabytes is written to disk; the run trains on all of it. Two training loops of
study/train.py (``TrainLoop.run``, what every run calls), same model, same seed:

  resident:  every image in RAM (a private copy: the fastest a resident run can be);
  streamed:  ``ImageSource.for_run`` under ``--memory-budget`` decides to stream, as a worker
             does: index-sorted chunks read with preadv by a background thread, a few batches
             ahead of the loop.

They alternate in blocks of ``--steps`` steps, ``--repeats`` times, after a warm-up; each
streamed block starts with an empty read-ahead queue (its reader is restarted), so no block
gains from reading done while the other way trained. The ratio is the median of the
per-block ratios. The page cache is whatever the machine has (the file was just written: warm
on a machine with the RAM for it); the reads never map the file, so they do not count in RSS.

Peak memory: two fresh child processes train the same model for ``--steps`` steps and run an
evaluation pass: one streaming under the budget (evaluation streams too), one on a single
evaluation batch in memory (the model's own memory: torch, weights, optimiser state, training
and evaluation activations).
Their peak RSS (VmHWM) is printed; the streamed worker's must stay within the budget
plus the model's own memory.

    python benchmarks/bench_stream.py --data-mb 2048 --memory-budget 256MB

The last line is exactly ``stream/resident=R peak_rss_mb=M budget_mb=B``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

CLASSES = 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-mb", type=float, default=2048, help="size of the synthetic cache on disk (default 2048)")
    p.add_argument("--memory-budget", default="256MB", help="the worker's memory budget (default 256MB)")
    p.add_argument("--image-size", type=int, default=64, help="side of the cached images (default 64)")
    p.add_argument("--model", default="resnet18", help="any timm model name (default resnet18)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each way first")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks of each way, alternating")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a study's CPU workers)")
    p.add_argument(
        "--work", default="", help="folder for the synthetic cache, kept for the next run (default: temporary, removed)"
    )
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # stream | model: a peak-memory child
    return p.parse_args(argv)


def write_cache(path: Path, megabytes: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic images.npy of about ``megabytes`` (class-coloured noise), written a slice at a
    time, and its labels; returns the read-only memory map and the labels."""
    row = size * size * 3
    n = max(CLASSES, int(megabytes * 2**20 // row))
    labels = np.arange(n) % CLASSES
    if not path.exists() or np.load(path, mmap_mode="r").shape != (n, size, size, 3):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        rng = np.random.default_rng(0)
        step = max(1, 2**26 // row)
        for s in range(0, n, step):
            block = rng.integers(0, 160, (min(step, n - s), size, size, 3), dtype=np.uint8)
            block[np.arange(len(block)), :, :, labels[s : s + len(block)] % 3] += 90
            out[s : s + step] = block
        out.flush()
        del out
    return np.load(path, mmap_mode="r"), labels


def loop_for(data, args, n: int, device: torch.device):
    from study.config import TrainConfig
    from study.speed import Speed
    from study.train import build_loop

    steps = (args.warmup + args.steps * args.repeats) * 2
    hp = TrainConfig(batch_size=args.batch_size, epochs=1, min_steps=steps, augment="standard").resolved(args.model)
    return build_loop(data, np.arange(n), args.model, hp, 0, device, speed=Speed(channels_last="off"))


def timed(loop, steps: int) -> float:
    """Images per second of ``steps`` steps of the loop."""
    start = time.perf_counter()
    loss, _ = loop.run(steps)
    loss.item()
    return steps * loop.batch / (time.perf_counter() - start)


def child(args) -> None:
    """Train in this fresh process and print its peak RSS in MB as JSON."""
    from study.config import parse_bytes
    from study.images import ImageSource, TrainData
    from study.train import EVAL_BATCH, evaluate

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    images = np.load(Path(args.work) / "images.npy", mmap_mode="r")
    labels = np.arange(len(images)) % CLASSES
    if args.child == "stream":
        source = ImageSource(images, labels, CLASSES, cpu, parse_bytes(args.memory_budget), path=images.filename)
        data = source.for_run(np.arange(len(images)))
        assert source.decisions == ["streamed"], source.decisions
        n = len(images)
        evaluated = np.arange(0, len(images), 7)
    else:  # the model's own memory: one evaluation batch of images in RAM
        n = EVAL_BATCH
        data = TrainData.from_arrays(np.array(images[:n]), labels[:n], CLASSES, cpu)
        evaluated = np.arange(n)
    loop = loop_for(data, args, n, cpu)
    timed(loop, args.warmup + args.steps)
    evaluate(loop.plain, data, evaluated, loop.input_size, loop.mean, loop.std, cpu, False)  # its batches are larger
    loop.close()
    print(json.dumps({"peak_rss_mb": peak_rss_now()}))


def peak_rss_now() -> float:
    """This process's peak RSS in MB: VmHWM (ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KB on most systems


def peak_rss(args, kind: str) -> float:
    argv = [sys.executable, __file__, "--child", kind, "--work", args.work]
    for flag in ("memory_budget", "image_size", "model", "batch_size", "steps", "warmup", "threads"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from study.config import parse_bytes
    from study.images import ImageSource, TrainData

    budget = parse_bytes(args.memory_budget)
    temporary = not args.work
    args.work = args.work or tempfile.mkdtemp(prefix="bench_stream-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    try:
        images, labels = write_cache(Path(args.work) / "images.npy", args.data_mb, args.image_size)
        n = len(images)
        print(
            f"synthetic cache: {n} images of {args.image_size} px = {images.nbytes / 2**20:.0f} MB on disk; budget "
            f"{budget / 2**20:.0f} MB ({images.nbytes / budget:.1f}x); model {args.model}, batch {args.batch_size}, "
            f"{args.threads} torch thread(s), CPU"
        )
        torch.set_num_threads(args.threads)
        cpu = torch.device("cpu")
        source = ImageSource(images, labels, CLASSES, cpu, budget, path=images.filename)
        streamed_data = source.for_run(np.arange(n))
        assert source.decisions == ["streamed"], "the run fits the budget: give a larger --data-mb"
        resident_data = TrainData.from_arrays(np.array(images), labels, CLASSES, cpu)  # a private in-RAM copy
        resident, streamed = loop_for(resident_data, args, n, cpu), loop_for(streamed_data, args, n, cpu)
        timed(resident, args.warmup)
        timed(streamed, args.warmup)
        ips: dict[str, list[float]] = {"resident": [], "streamed": []}
        for _ in range(args.repeats):
            ips["resident"].append(timed(resident, args.steps))
            streamed.batches.close()  # an empty read-ahead queue: no head start from the resident block
            streamed.batches = streamed_data.train_batches(np.arange(n), streamed.order, cpu)
            ips["streamed"].append(timed(streamed, args.steps))
        streamed.close()
        del resident, resident_data
        for name, values in ips.items():
            print(f"{name:9s} {statistics.median(values):8.1f} img/s (blocks: {', '.join(f'{v:.1f}' for v in values)})")
        ratio = statistics.median(s / r for s, r in zip(ips["streamed"], ips["resident"]))
        model_mb = peak_rss(args, "model")
        stream_mb = peak_rss(args, "stream")
        print(
            f"peak RSS: streaming worker {stream_mb:.0f} MB; the model alone {model_mb:.0f} MB; budget "
            f"{budget / 2**20:.0f} MB; within budget + model: {stream_mb <= model_mb + budget / 2**20}"
        )
        print(f"stream/resident={ratio:.3f} peak_rss_mb={stream_mb:.0f} budget_mb={budget / 2**20:.0f}")
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
