"""A training step with the study's optimiser (fused AdamW) against torch's default AdamW (the
per-tensor "foreach" implementation), on the default study's models, in one process.

Each model trains on one random batch of the default study's shape (32 images of 32 px, one
thread, as each of a study's workers runs). The two optimisers update two copies of the same
model; their steps alternate in blocks, so other work on a shared machine slows both alike. The
ratio per model is the median over blocks of (study step time) / (default step time).

    python benchmarks/bench_optimizer.py

The last line is exactly ``study/default=R`` (the geometric mean over the models; below 1 is faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilevit_xxs,mobilenetv2_100,resnet18", help="timm model names")
    p.add_argument("--image-size", type=int, default=32, help="default 32, the default study's")
    p.add_argument("--batch-size", type=int, default=32, help="default 32, the default study's")
    p.add_argument("--steps", type=int, default=5, help="steps per timed block (default 5)")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks of each optimiser (default 7)")
    return p.parse_args(argv)


def seconds_per_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    args = parse_args(argv)
    from study.config import TrainConfig
    from study.models import create_model
    from study.optim import make_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    hp = TrainConfig().resolved()
    ratios = []
    for name in args.models.split(","):
        study_model = create_model(name, 10).train()
        default_model = copy.deepcopy(study_model)
        ways = {
            "study": (study_model, make_optimizer(study_model, hp)),
            "default": (default_model, make_optimizer(default_model, hp, fused=False)),
        }
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        y = torch.randint(0, 10, (args.batch_size,))
        times: dict[str, list[float]] = {way: [] for way in ways}
        for model, opt in ways.values():  # warm-up: first steps allocate the optimiser state
            seconds_per_step(model, opt, x, y, 2)
        for r in range(args.repeats):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for way in order:
                times[way].append(seconds_per_step(*ways[way], x, y, args.steps))
        ratio = statistics.median(s / d for s, d in zip(times["study"], times["default"]))
        ratios.append(ratio)
        print(
            f"{name}: study {1000 * statistics.median(times['study']):.1f} ms/step, "
            f"default {1000 * statistics.median(times['default']):.1f} ms/step, ratio {ratio:.3f}",
            flush=True,
        )
    print(f"study/default={statistics.geometric_mean(ratios):.3f}")


if __name__ == "__main__":
    main()
