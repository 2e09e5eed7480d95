"""Is a learning curve monotone? Mean accuracy that falls between consecutive sizes by more than
noise: such a curve is reported as not monotone and not fitted (``analysis.curves``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.stats import holm, t_summary

# A drop in mean accuracy between consecutive sizes counts as real when it is larger than
# both twice its standard error and one percentage point.
DROP_TOLERANCE = 0.01


def monotonicity_problem(points_of_model: pd.DataFrame, alpha: float = 0.05) -> str:
    """'' unless mean accuracy falls between consecutive sizes both by more than DROP_TOLERANCE
    and significantly; else a sentence naming the largest such drop.

    ``points_of_model``: one model's runs (seed, n_train, acc). Each drop is tested by a
    one-sided paired t-test over seeds (nested subsets pair a seed's runs), and the K - 1 tests
    of successive drops are Holm-adjusted, so the check's false-alarm rate stays below alpha.
    A summary table (n_train, mean, std, n_seeds) is accepted too, then tested unpaired (Welch).
    """
    if "mean" in points_of_model:
        return _monotonicity_from_summary(points_of_model, alpha)
    table = points_of_model.pivot_table(index="seed", columns="n_train", values="acc", aggfunc="mean")
    sizes = list(table.columns)
    drops, p_values = [], []
    for small, large in zip(sizes[:-1], sizes[1:]):
        d = (table[small] - table[large]).dropna().to_numpy(float)
        drop = float(table[small].mean() - table[large].mean())
        p = t_summary(d, floor=1e-4, alternative="greater")["p"] if len(d) >= 2 else np.nan
        drops.append((small, large, drop, table[small].mean(), table[large].mean()))
        p_values.append(p)
    return _worst_drop(drops, holm(p_values), alpha)


def _monotonicity_from_summary(s: pd.DataFrame, alpha: float) -> str:
    s = s.sort_values("n_train")
    mean, se = s["mean"].to_numpy(), (s["std"] / np.sqrt(s["n_seeds"])).to_numpy()
    n, k = s["n_train"].to_numpy(), s["n_seeds"].to_numpy()
    drops, p_values = [], []
    for i in range(len(s) - 1):
        se_d = np.hypot(se[i], se[i + 1])
        df = max(int(min(k[i], k[i + 1])) - 1, 1)
        p = float(stats.t.sf((mean[i] - mean[i + 1]) / se_d, df)) if se_d > 0 else np.nan
        drops.append((n[i], n[i + 1], mean[i] - mean[i + 1], mean[i], mean[i + 1]))
        p_values.append(p)
    return _worst_drop(drops, holm(p_values), alpha)


def _worst_drop(drops: list[tuple], adjusted: np.ndarray, alpha: float) -> str:
    worst, text = 0.0, ""
    for (small, large, drop, m_small, m_large), p in zip(drops, adjusted):
        if drop > DROP_TOLERANCE and p < alpha and drop > worst:
            worst = drop
            text = (
                f"mean accuracy falls from {m_small:.3f} at {int(small)} images to {m_large:.3f} at {int(large)} "
                f"(one-sided paired test over seeds, Holm-adjusted p = {p:.2g})"
            )
    return text
