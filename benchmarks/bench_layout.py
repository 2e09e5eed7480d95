"""Memory layout per model: seconds of a forward and backward pass in the default (NCHW) and
the channels-last layout, measured in one process, alternating, as ``--channels-last auto``
measures them before a study's first run of a model (``study.speed.layout_seconds``, here with
more passes).

    python benchmarks/bench_layout.py --models mobilevit_xxs,mobilenetv2_100,resnet18 --image-size 64

One line per model; each ends with ``channels_last/default=R`` (the channels-last pass's speed
over the default one's: above 1, channels-last is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import timm  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilevit_xxs,mobilenetv2_100,resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, default=10, help="timed passes per layout (the fastest counts)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (all cores)")
    args = p.parse_args(argv)

    from study.speed import configure_device, layout_seconds
    from study.train import resolve_device

    device = resolve_device(args.device)
    configure_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"input={args.image_size} batch={args.batch_size} device={device} threads={torch.get_num_threads()} "
        f"load_1m={os.getloadavg()[0]:.2f} torch={torch.__version__}"
    )
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        seconds = layout_seconds(
            lambda name=name: timm.create_model(name, num_classes=10),
            args.image_size,
            args.batch_size,
            device,
            args.steps,
        )
        plain, cl = (args.batch_size / seconds[layout] for layout in (False, True))
        print(
            f"{name:20s} default {plain:8.1f} img/s   channels_last {cl:8.1f} img/s   "
            f"channels_last/default={cl / plain:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
