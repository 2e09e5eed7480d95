"""Training throughput of one model on the same images, three ways, in one process:

  (a) limit:     forward, backward and optimiser step on one ready batch; no data work at all.
  (b) harness:   study/train.py's own loop (``TrainLoop.run``, what every study run calls): the
                 decoded dataset from the cache resident on the device, index slices of the
                 run's subset, batch augmentation, resize and normalisation on the device.
  (c) reference: the reference notebook's pipeline: JPEG files on disk (written here from the
                 same images), torchvision ImageFolder with PIL transforms (Resize,
                 RandomRotation, ToTensor, Normalize) and a DataLoader.

All three train the same model with the same optimiser (``TrainLoop.step``: bf16 autocast on
CUDA, the model's memory layout, compiled if asked), so they differ only in where the batches
come from. Each is warmed up, then timed ``--repeats`` times for ``--steps`` steps each, and
each ratio is the median of the per-repetition ratios. Within a repetition, on a CPU (a) and (b)
alternate step by step, so that other work on a shared machine slows both alike; on a GPU they
run as whole blocks (a GPU needs steps queued without a wait between them), in alternating
order. (c) runs as a block after them; its DataLoader keeps its workers between blocks, and the
batches they decoded ahead while (a) and (b) ran are consumed untimed first, so (c) is timed in
its steady state.

    python benchmarks/bench_train.py --model mobilevit_xxs --image-size 64 --batch-size 32

The last line is exactly ``harness/limit=R1 harness/reference=R2``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mobilevit_xxs", help="any timm model name (default mobilevit_xxs)")
    p.add_argument("--image-size", type=int, default=64, help="model input side in pixels (default 64)")
    p.add_argument(
        "--source-size",
        type=int,
        default=0,
        help="side of the stored images (cache and JPEG files); 0 = min(image size, 64), Tiny-ImageNet's",
    )
    p.add_argument("--batch-size", type=int, default=32, help="default 32, a study's default")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, default=8, help="steps per timed block")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps of each way before timing (compilation happens here)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed blocks of each way, interleaved")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (all cores)")
    p.add_argument(
        "--augment",
        default="standard",
        help="the harness's augmentation policy (default standard: shift, rotation, scale)",
    )
    p.add_argument(
        "--channels-last", default="auto", help="auto | on | off (auto: measured per model and device, as in a study)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (used by all three ways)")
    p.add_argument(
        "--loader-workers",
        type=int,
        default=2,
        help="DataLoader worker processes of the reference (default 2, a notebook's usual)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="skip (c); the last line then reports harness/reference=nan"
    )
    return p.parse_args(argv)


def harness_loop(args, device: torch.device, cache_dir: Path):
    """The study's own objects: the digits dataset decoded through the cache, its fixed splits,
    a full training subset, and the training loop a run of it would use."""
    from study import splits as splitting
    from study.config import DataConfig, StudyConfig, TrainConfig
    from study.plan import load_data
    from study.speed import Speed
    from study.train import TrainData, build_loop

    total_steps = (args.warmup + args.steps * args.repeats) * 3
    hp = TrainConfig(
        batch_size=args.batch_size, epochs=1, min_steps=total_steps, augment=args.augment, input_size=args.image_size
    ).resolved(args.model)
    cfg = StudyConfig(data=DataConfig(image_size=args.source_size, cache_dir=str(cache_dir)), train=hp)
    dataset, splits, _ = load_data(cfg)
    subset = splitting.training_subset(
        splits, dataset.labels, "fraction", 1.0, 0, cfg.data.min_per_class, dataset.class_names
    )
    with warnings.catch_warnings():  # a read-only memmap is only ever read
        warnings.simplefilter("ignore", UserWarning)
        data = TrainData.from_arrays(dataset.images, dataset.labels, dataset.num_classes, device, dataset.hflip)
    speed = Speed(channels_last=args.channels_last, compile=args.compile)
    loop = build_loop(data, subset, args.model, hp, seed=0, device=device, speed=speed)
    return loop, dataset, subset, splits


def reference_loader(dataset, subset: np.ndarray, folder: Path, args, mean, std, device: torch.device):
    """Write the subset's images as JPEG files and read them back as the reference did."""
    from PIL import Image
    from torchvision import datasets, transforms

    for i in subset:
        path = folder / dataset.class_names[dataset.labels[i]] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(dataset.images[i])).save(path, quality=95)
    transform = transforms.Compose(
        [
            transforms.Resize((args.image_size, args.image_size)),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    images = datasets.ImageFolder(str(folder), transform=transform)
    workers = args.loader_workers
    return torch.utils.data.DataLoader(
        images,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


class Endless:
    """Batches of a DataLoader, epoch after epoch, as the reference's training loop drew them."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def __next__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    from study.train import evaluate, resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.source_size = args.source_size or min(args.image_size, 64)
    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    loop, dataset, subset, splits = harness_loop(args, device, work / "cache")
    memory_format = torch.channels_last if loop.channels_last else torch.contiguous_format

    ready_x, ready_y = loop.batch_at(loop.order.take(1, device)[0])  # one batch, made once

    def limit(steps: int) -> None:
        for _ in range(steps):
            loop.step(ready_x, ready_y)
        synchronize(device)

    def harness(steps: int) -> None:
        loss_sum, _ = loop.run(steps)
        loss_sum.item()  # the loop's one synchronisation, as train_run does once per epoch

    ways = {"limit": limit, "harness": harness}
    if not args.no_reference:
        mean, std = loop.mean.tolist(), loop.std.tolist()
        batches = Endless(reference_loader(dataset, subset, work / "jpeg", args, mean, std, device))

        def reference(steps: int) -> None:
            loop.model.train()
            for _ in range(steps):
                x, y = next(batches)
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                loop.step(x, y.to(device, non_blocking=True))
            synchronize(device)

        ways["reference"] = reference
        prefetched = 2 * args.loader_workers  # the DataLoader's queue: prefetch_factor (2) per worker

    if args.channels_last != "auto":  # what channels_last=auto would pick for this model, by its own measurement
        import timm

        from study.speed import use_channels_last

        build = lambda: timm.create_model(args.model, num_classes=loop.data.num_classes)  # noqa: E731
        print(
            "channels_last=auto would choose "
            f"{use_channels_last('auto', args.model, build, args.image_size, args.batch_size, device)}"
        )
    print(
        f"model={args.model} input={args.image_size} source={args.source_size} batch={args.batch_size} device={device} "
        f"threads={torch.get_num_threads()} channels_last={loop.channels_last} compile={args.compile} "
        f"augment={args.augment} "
        f"loader_workers={args.loader_workers} steps={args.steps}x{args.repeats} torch={torch.__version__}",
        flush=True,
    )
    for fn in ways.values():
        fn(args.warmup)

    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.repeats):
        if device.type == "cpu":
            # (a) and (b) alternate step by step: other work on a shared CPU slows both alike.
            pair = {"limit": 0.0, "harness": 0.0}
            for i in range(args.steps):
                for name in ("limit", "harness") if i % 2 == 0 else ("harness", "limit"):
                    start = time.perf_counter()
                    ways[name](1)
                    pair[name] += time.perf_counter() - start
            for name, secs in pair.items():
                seconds[name].append(secs)
        else:  # on a GPU, steps must queue up without a wait between them: whole blocks
            for name in ("limit", "harness") if r % 2 == 0 else ("harness", "limit"):
                start = time.perf_counter()
                ways[name](args.steps)
                seconds[name].append(time.perf_counter() - start)
        if "reference" in ways:
            ways["reference"](prefetched)  # batches its workers decoded meanwhile: not timed
            start = time.perf_counter()
            ways["reference"](args.steps)
            seconds["reference"].append(time.perf_counter() - start)
    ips = {name: [args.steps * args.batch_size / s for s in secs] for name, secs in seconds.items()}
    labels = {
        "limit": "(a) limit: one ready batch, no data work",
        "harness": "(b) harness: study/train.py loop",
        "reference": "(c) reference: JPEG + ImageFolder + DataLoader",
    }
    for name, values in ips.items():
        print(
            f"{labels[name]:50s} {statistics.median(values):9.1f} img/s   blocks: "
            f"{' '.join(f'{v:.1f}' for v in values)}"
        )

    def paired(a: str, b: str) -> float:
        if a not in ips or b not in ips:
            return float("nan")
        return statistics.median(x / y for x, y in zip(ips[a], ips[b]))

    # Where (b)'s time goes beyond (a): the batch path alone (index, augment, resize, normalise).
    positions = loop.order.take(args.steps, device)
    synchronize(device)
    start = time.perf_counter()
    for i in range(args.steps):
        loop.batch_at(positions[i])
    synchronize(device)
    data_ms = (time.perf_counter() - start) / args.steps * 1000
    step_ms = args.batch_size / statistics.median(ips["limit"]) * 1000
    print(
        f"{'data path alone (batch_at, information only)':50s} {data_ms:9.2f} ms/batch = {data_ms / step_ms:.1%} of "
        f"a limit step ({step_ms:.1f} ms)"
    )

    val = torch.as_tensor(splits.val, device=device)
    start = time.perf_counter()
    evaluate(loop.plain, loop.data, val, loop.input_size, loop.mean, loop.std, device, loop.channels_last)
    eval_ips = len(val) / (time.perf_counter() - start)
    print(f"{'validation pass (evaluate, information only)':50s} {eval_ips:9.1f} img/s")
    medians = {name: statistics.median(values) for name, values in ips.items()}
    print(
        f"result model={args.model} input={args.image_size} batch={args.batch_size} device={device.type} "
        f"channels_last={loop.channels_last} "
        f"compile={args.compile} limit={medians['limit']:.1f} harness={medians['harness']:.1f} "
        f"reference={medians.get('reference', float('nan')):.1f}"
    )
    print(f"harness/limit={paired('harness', 'limit'):.3f} harness/reference={paired('harness', 'reference'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
