"""CPU latency of a study's deployed models, PyTorch eager against ONNX Runtime fp32 and int8,
timed in one process and interleaved round by round, so every variant meets the same load.

Reads a study whose `study run` exported its models (the kept weights and `<out>/deploy/`):

    python -m study run --out /tmp/full --fractions 1.0 --seeds 1      # trains and exports
    python benchmarks/bench_deploy.py --out /tmp/full [--rounds 3] [--seconds 1]

Prints, per model and thread setting, the median over rounds of each variant's p50 and p95 (ms,
batch 1) and the ratio PyTorch p50 / variant p50 (above 1: the variant is faster), with the
machine's load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import costs  # noqa: E402
from study.deploy import ONNXRUNTIME, PYTORCH, load_trained, ort_latency_ms  # noqa: E402
from study.machine import available_cores  # noqa: E402
from study.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the study's folder (its study.db)")
    parser.add_argument("--name", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per variant and thread setting")
    args = parser.parse_args()

    store = Store(f"sqlite:///{Path(args.out).absolute() / 'study.db'}", create=False)
    study = store.study(args.name)
    num_classes = len(study.dataset["class_names"])
    rows = [d for d in store.deployments(study.id) if d.status == "done"]
    runs = {r.id: r for r in store.runs(study.id)}
    threads_all = available_cores()
    load_before = os.getloadavg()[0]
    print(f"load average (1 min) before: {load_before:.2f}; {threads_all} cores; {args.rounds} rounds")
    print("| model | threads | variant | size MB | p50 ms | p95 ms | PyTorch p50 / variant p50 |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for run_id in sorted({d.run_id for d in rows}):
        run = runs[run_id]
        model = load_trained(run.model, num_classes, store.weights(run_id))
        side = next(d.details["input_size"] for d in rows if d.run_id == run_id)
        files = {d.precision: Path(d.details["file"]) for d in rows if d.run_id == run_id and d.runtime == ONNXRUNTIME}
        sizes = {d.precision if d.runtime == ONNXRUNTIME else PYTORCH: d.size_mb for d in rows if d.run_id == run_id}
        image = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
        for threads in (1, threads_all):
            timed: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for _ in range(args.rounds):  # interleaved: each round times every variant once
                timed[PYTORCH].append(costs.inference_latency_ms(model, side, threads, args.seconds)[:2])
                for precision, path in files.items():
                    timed[precision].append(ort_latency_ms(path, image, threads, args.seconds)[:2])
            base = float(np.median([t[0] for t in timed[PYTORCH]]))
            for variant, values in timed.items():
                p50, p95 = (float(np.median(v)) for v in zip(*values))
                name = "pytorch fp32" if variant == PYTORCH else f"onnxruntime {variant}"
                print(
                    f"| {run.model} | {threads} | {name} | {sizes.get(variant, float('nan')):.2f} | {p50:.3f} "
                    f"| {p95:.3f} | {base / p50:.2f} |"
                )
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
