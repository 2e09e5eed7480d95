"""The curve band's coverage beyond the data on bench_calibration's simulated shapes, quickly.

Run:  DIS=1 NS=5 PYTHONPATH=. python benchmarks/check_band_shapes.py

Calls ``benchmarks/bench_calibration._curve_rep`` for its 9 shapes x 8 studies at NS seeds
(default 5) and prints the pooled coverage of the band at 2x and 4x the largest size and inside
it, then per shape. DIS overrides the disagreement weight (``analysis.bands.DISAGREEMENT_SD``).
A check used to choose that weight (docs/statistics.md), not a replacement for the benchmark.
"""

import os
import time

import numpy as np

import benchmarks.bench_calibration as bc

if os.environ.get("DIS"):
    _f = bc.fit_learning_curves

    def _g(*a, **k):
        lc = _f(*a, **k)
        for c in lc.curves.values():
            c.disagreement_weight = float(os.environ["DIS"])
        return lc

    bc.fit_learning_curves = _g
t = time.time()
res = {"2x": [], "4x": [], "meas": []}
worst = {}
for j, shape in enumerate(bc.SHAPES):
    cov2 = []
    for i in range(8):
        r = bc._curve_rep(
            int(os.environ.get("NS", "5")) * 1_000_000 + 10_000 * j + i, int(os.environ.get("NS", "5")), shape
        )
        if r.get("refused"):
            continue
        res["2x"].append(r["cov_band_2x"])
        res["4x"].append(r["cov_band_4x"])
        res["meas"].extend(r["cov_band_measured"])
        cov2.append((r["cov_band_2x"], r["cov_band_4x"]))
    worst[shape] = np.mean(cov2, axis=0).round(2).tolist() if cov2 else None
print({k: round(float(np.mean(v)), 3) for k, v in res.items()}, {k: len(v) for k, v in res.items()})
print(worst, f"{time.time() - t:.0f}s")
