"""Whether ``--compile`` (``torch.compile``, inductor) pays on this CPU once its compile time counts.

For each model of the default study, two copies train side by side in one process on the same
batch (32 images at 32 px, one torch thread, in the memory layout a study would choose for the
model, as a study's CPU worker trains): one eager, one compiled the way a study worker compiles
(``study.speed.prepare_model``), both with the plateau budget's optimiser
(``study.optim.make_optimizer``). The first compiled step is timed alone (the compilation); then
eager and compiled steps alternate, so that other work on the machine slows both alike, and the
medians are compared.

    python benchmarks/bench_compile.py [--models mobilenetv2_100,mobilevit_xxs,resnet18] [--steps 30]

Per model it prints the compile time, both step times, their ratio and the steps a worker must
train before compiling has paid for itself. The last line is exactly
``compiled/eager=R compile_s=S break_even_steps=N``: R the geometric mean of the step-time
ratios, S the summed compile time, N the summed break-even steps (``inf`` where compiled steps
are not faster).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.bench_optimizer import seconds_per_step  # noqa: E402


def measure(name: str, steps: int, batch: int, size: int) -> tuple[float, float, float]:
    """(compile seconds, eager step seconds, compiled step seconds) of model ``name``, in the
    layout ``--channels-last auto`` chooses for it."""
    from study.config import TrainConfig
    from study.models import create_model
    from study.optim import make_optimizer
    from study.speed import Speed, prepare_model, use_channels_last

    hp = TrainConfig(budget="plateau").resolved(name)
    device = torch.device("cpu")
    layout = use_channels_last("auto", name, lambda: create_model(name, 10), size, batch, device)
    torch.manual_seed(0)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    if layout:
        images = images.contiguous(memory_format=torch.channels_last)
    eager, _ = prepare_model(create_model(name, 10), (name, "eager"), device, layout, Speed())
    compiled, _ = prepare_model(create_model(name, 10), (name, "bench"), device, layout, Speed(compile=True))
    eager_opt, compiled_opt = make_optimizer(eager, hp), make_optimizer(compiled, hp)
    compile_s = seconds_per_step(compiled, compiled_opt, images, labels, 1)
    for _ in range(3):  # warm-up of both (allocator, caches, the compiled graph's first calls)
        seconds_per_step(eager, eager_opt, images, labels, 1)
        seconds_per_step(compiled, compiled_opt, images, labels, 1)
    eager_s, compiled_s = [], []
    for _ in range(steps):
        eager_s.append(seconds_per_step(eager, eager_opt, images, labels, 1))
        compiled_s.append(seconds_per_step(compiled, compiled_opt, images, labels, 1))
    return compile_s, statistics.median(eager_s), statistics.median(compiled_s)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenetv2_100,mobilevit_xxs,resnet18", help="comma-separated timm names")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each copy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a study's CPU worker trains on one thread (--threads 1)

    ratios, total_compile, total_break_even = [], 0.0, 0.0
    for name in args.models.split(","):
        compile_s, eager_s, compiled_s = measure(name, args.steps, args.batch_size, args.image_size)
        gain = eager_s - compiled_s
        break_even = compile_s / gain if gain > 0 else math.inf
        ratios.append(compiled_s / eager_s)
        total_compile += compile_s
        total_break_even += break_even
        print(
            f"{name}: compile {compile_s:.1f} s, step eager {eager_s * 1e3:.1f} ms, "
            f"compiled {compiled_s * 1e3:.1f} ms (ratio {compiled_s / eager_s:.3f}), "
            f"pays after {break_even:.0f} steps",
            flush=True,
        )
    ratio = math.exp(statistics.fmean(math.log(r) for r in ratios))
    print(f"compiled/eager={ratio:.3f} compile_s={total_compile:.1f} break_even_steps={total_break_even:.0f}")


if __name__ == "__main__":
    main()
