"""Group-sequential tests that spend their error over the looks (Lan and DeMets 1983).

A sequential study looks at a pair of arms after every seed it adds. Testing at the plain 5%
level at every look would reject a true null far more often than 5% over the whole sequence.
A spending function alpha(t) says how much of the two-sided error may be spent by information
fraction t (here: seeds so far / the most seeds a cell may get); the boundary c_k of look k is
set so that, under the null, the chance of first crossing at look k is alpha(t_k) - alpha(t_{k-1})
(Jennison and Turnbull 2000, ch. 19: recursive numerical integration over the continuation
region of the score, whose increments are independent normals).

- O'Brien-Fleming type: each side spends alpha/2 as 2 - 2 Phi(z_{1-alpha/4} / sqrt(t)), the
  convention of gsDesign and rpact (``sfLDOF``, ``asOF``): spends almost nothing early, so the
  last boundary is close to the fixed-sample 1.96;
- Pocock type: alpha(t) = alpha log(1 + (e - 1) t): spends evenly, decides early more often.

Seeds are few, so each look's statistic is a paired t with n - 1 degrees of freedom: a look
rejects when its two-sided p-value is below the boundary's nominal level 2 (1 - Phi(c_k))
(the "significance level" approach, Jennison and Turnbull 2000, sec. 3.8). The repeated
confidence interval of a look, the mean difference +/- t_{n-1}(1 - level_k / 2) times its
standard error, excludes 0 exactly when the look rejects, and the intervals of all looks
together cover the true difference with probability at least 1 - alpha, so the interval at a
data-dependent stop keeps its level (Jennison and Turnbull 2000, ch. 9).

torch-free; used by ``analysis.sequential`` (the ``--until-ci`` rule) and its benchmark.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

OBRIEN_FLEMING, POCOCK = "obrien-fleming", "pocock"
SPENDING = (OBRIEN_FLEMING, POCOCK)
GRID = 401  # points over each look's continuation region: boundaries to about 1e-5


def spent(t: float, alpha: float = 0.05, spending: str = OBRIEN_FLEMING) -> float:
    """The two-sided error a spending function has spent by information fraction ``t``."""
    t = min(max(float(t), 0.0), 1.0)
    if t <= 0:
        return 0.0
    if spending == OBRIEN_FLEMING:
        return float(4 - 4 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 4) / math.sqrt(t)))
    if spending == POCOCK:
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {spending!r}; use one of {', '.join(SPENDING)}")


def boundaries(fractions, alpha: float = 0.05, spending: str = OBRIEN_FLEMING) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K for looks at increasing information ``fractions``
    (each in (0, 1]); under the null, P(first |Z_k| >= c_k at look k) is the error spent
    between look k - 1 and look k, so the whole sequence spends alpha(t_K)."""
    return np.array(_boundaries(tuple(round(float(t), 12) for t in fractions), float(alpha), spending))


@lru_cache(maxsize=512)
def _boundaries(fractions: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    t = np.asarray(fractions, float)
    if len(t) == 0:
        return ()
    if np.any(t <= 0) or np.any(t > 1 + 1e-12) or np.any(np.diff(t) <= 0):
        raise ValueError(f"information fractions must increase within (0, 1]: {fractions}")
    increments = np.diff(np.concatenate([[0.0], [spent(x, alpha, spending) for x in t]]))
    out = [float(stats.norm.isf(increments[0] / 2))]
    # Sub-density of the score S_1 = Z_1 sqrt(t_1) on its continuation region.
    grid, weights = _grid(out[0] * math.sqrt(t[0]))
    density = _pdf(grid / math.sqrt(t[0])) / math.sqrt(t[0]) * weights
    for k in range(1, len(t)):
        sd = math.sqrt(t[k] - t[k - 1])
        root = math.sqrt(t[k])

        def excess(c: float, grid=grid, density=density, sd=sd, root=root, goal=increments[k]) -> float:
            """Probability of first crossing at this look with boundary c, less the error to spend."""
            upper = stats.norm.sf((c * root - grid) / sd)
            lower = stats.norm.cdf((-c * root - grid) / sd)
            return float(np.sum(density * (upper + lower))) - goal

        if increments[k] <= 1e-15:
            c = 40.0  # nothing to spend: a boundary no statistic reaches
        else:
            c = float(optimize.brentq(excess, 1e-6, 40.0, xtol=1e-10))
        out.append(c)
        new_grid, new_weights = _grid(c * root)
        kernel = _pdf((new_grid[:, None] - grid[None, :]) / sd) / sd
        density = (kernel @ density) * new_weights
        grid = new_grid
    return tuple(out)


def _pdf(z: np.ndarray) -> np.ndarray:
    """The standard normal density (numpy's exp: scipy's is slower on large grids)."""
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _grid(half: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on [-half, half] and their Simpson weights."""
    x = np.linspace(-half, half, GRID)
    w = np.ones(GRID)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return x, w * (x[1] - x[0]) / 3


def nominal_levels(fractions, alpha: float = 0.05, spending: str = OBRIEN_FLEMING) -> np.ndarray:
    """The two-sided nominal p-value each look's test must fall below: 2 (1 - Phi(c_k))."""
    return 2 * stats.norm.sf(boundaries(fractions, alpha, spending))


def look_fractions(n_seeds: int, first: int, max_seeds: int) -> list[float]:
    """The information fractions of the looks a pair with ``n_seeds`` seeds has had: one per seed
    count from ``first`` (the study's initial seeds) to ``n_seeds``, over ``max_seeds``. A pair
    that skipped a look (it got two seeds in one round) is tested as if it had looked: its
    boundaries are those of more looks, which only makes it more conservative."""
    first = max(2, min(first, n_seeds))
    top = max(max_seeds, n_seeds)
    return [k / top for k in range(first, n_seeds + 1)]


def look(
    d: np.ndarray,
    first: int,
    max_seeds: int,
    alpha: float = 0.05,
    spending: str = OBRIEN_FLEMING,
    floor: float = 0.0,
) -> dict:
    """The group-sequential test of paired differences ``d`` (in seed order), looked at after
    each seed from ``first`` on: ``decided`` once some look's paired t-test had a two-sided
    p-value below that look's nominal level (the boundary was crossed; the decision then stands,
    whatever later seeds show), ``decided_at`` the seeds of that look (0 if none), and, at the
    latest look, ``level`` (its nominal level), ``p`` and the repeated confidence interval
    ``ci_low``/``ci_high``. ``floor``: a standard deviation below it is a constant difference
    (the test set's resolution); it counts as that floor, so a constant non-zero difference can
    be decided and a constant zero one is not."""
    d = np.asarray(d, float)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "level": math.nan, "p": math.nan}
    out.update(decided=False, decided_at=0, ci_low=-math.inf, ci_high=math.inf)
    if n < 2:
        return out
    levels = nominal_levels(look_fractions(n, first, max_seeds), alpha, spending)
    start = n - len(levels) + 1  # the seeds of the first look
    for k, level in zip(range(start, n + 1), levels):
        p, mean, half = _t_look(d[:k], float(level), floor)
        if p < level and not out["decided"]:
            out.update(decided=True, decided_at=k)
    out.update(level=float(levels[-1]), p=p, ci_low=mean - half, ci_high=mean + half)
    return out


def _t_look(d: np.ndarray, level: float, floor: float) -> tuple[float, float, float]:
    """The paired t-test's p-value, the mean, and the half-width of the interval at ``level``."""
    n = len(d)
    se = max(float(d.std(ddof=1)), floor) / math.sqrt(n)
    mean = float(d.mean())
    if se == 0:
        return (1.0 if mean == 0 else 0.0), mean, 0.0
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return p, mean, float(stats.t.isf(level / 2, n - 1) * se)
