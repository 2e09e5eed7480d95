"""Parametric learning-curve families and their least-squares fitting (LCDB's families).

Every family is written for accuracy that rises with n and is fitted on x = n / n_scale, where
n_scale is the largest measured size: parameters then have comparable magnitudes (b is the gap
below the asymptote at the largest size for pow3), which keeps the optimiser well conditioned.
``analysis.curves`` builds a model's curve from them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy.optimize import least_squares


@dataclass(frozen=True)
class Family:
    """A parametric learning-curve family acc = f(x; theta), x = n / n_scale, rising in x."""

    name: str
    formula: str
    params: tuple[str, ...]
    func: Callable[[np.ndarray, np.ndarray], np.ndarray]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    starts: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]
    asymptote: str = ""  # the parameter that is the accuracy as n grows without bound
    exponent: str = ""  # the parameter that sets how fast the gap closes ('' where none is a power)
    jac: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (len(x), n_params) derivatives

    def __call__(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.func(np.asarray(x, dtype=float), np.asarray(theta, dtype=float))


# Analytic derivatives: least squares then needs no finite differences (about twice as fast).
def _pow3_jac(x, t):
    p = x ** -t[2]
    return np.column_stack([np.ones_like(x), -p, t[1] * p * np.log(x)])


def _pow4_jac(x, t):
    p = (x + t[3]) ** -t[2]
    return np.column_stack([np.ones_like(x), -p, t[1] * p * np.log(x + t[3]), t[1] * t[2] * (x + t[3]) ** (-t[2] - 1)])


def _exp3_jac(x, t):
    e = np.exp(-t[1] * x)
    return np.column_stack([-e, t[0] * x * e, np.ones_like(x)])


def _mmf4_jac(x, t):
    a, b, c, d = t
    u = x**d
    q = (b + u) ** 2
    return np.column_stack([b / (b + u), u * (a - c) / q, u / (b + u), b * (c - a) * u * np.log(x) / q])


def _wbl4_jac(x, t):
    a, b, _, d = t
    u = x**d
    e = np.exp(-a * u)
    return np.column_stack([b * u * e, -e, np.ones_like(x), b * e * a * u * np.log(x)])


def _linear_pair(basis: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (p, q) in y = p - q * basis: starting values for the two linear parameters
    of a family, given its nonlinear ones (variable projection)."""
    design = np.column_stack([np.ones_like(basis), -basis])
    (p, q), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(p), float(q)


def _pow3_starts(x, y):
    out = []
    for c in (0.1, 0.3, 0.7, 1.5):
        a, b = _linear_pair(x**-c, y)
        out.append(np.array([a, b, c]))
    return out


def _pow4_starts(x, y):
    out = []
    for c, d in product((0.3, 1.0), (0.02, 0.3)):
        a, b = _linear_pair((x + d) ** -c, y)
        out.append(np.array([a, b, c, d]))
    return out


def _exp3_starts(x, y):
    out = []
    for b in (1.0, 5.0, 20.0):
        c, a = _linear_pair(np.exp(-b * x), y)
        out.append(np.array([a, b, c]))
    return out


def _mmf4_starts(x, y):
    return [np.array([0.0, b, float(y.max()), d]) for b, d in product((0.05, 0.5), (0.7, 1.5))]


def _wbl4_starts(x, y):
    out = []
    for a, d in product((2.0, 10.0), (0.5, 1.0)):
        c, b = _linear_pair(np.exp(-a * x**d), y)
        out.append(np.array([a, b, c, d]))
    return out


# LCDB's families (Mohr & van Rijn, 2022), written for a rising accuracy.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "pow3",
            "a - b * x^(-c)",
            ("a", "b", "c"),
            lambda x, t: t[0] - t[1] * x ** -t[2],
            (0.0, 0.0, 1e-3),
            (1.0, 2.0, 5.0),
            _pow3_starts,
            "a",
            "c",
            _pow3_jac,
        ),
        Family(
            "pow4",
            "a - b * (x + d)^(-c)",
            ("a", "b", "c", "d"),
            lambda x, t: t[0] - t[1] * (x + t[3]) ** -t[2],
            (0.0, 0.0, 1e-3, 0.0),
            (1.0, 50.0, 5.0, 10.0),
            _pow4_starts,
            "a",
            "c",
            _pow4_jac,
        ),
        Family(
            "exp3",
            "c - a * exp(-b * x)",
            ("a", "b", "c"),
            lambda x, t: t[2] - t[0] * np.exp(-t[1] * x),
            (0.0, 1e-3, 0.0),
            (2.0, 1e3, 1.0),
            _exp3_starts,
            "c",
            "",
            _exp3_jac,
        ),
        Family(
            "mmf4",
            "(a * b + c * x^d) / (b + x^d)",
            ("a", "b", "c", "d"),
            lambda x, t: (t[0] * t[1] + t[2] * x ** t[3]) / (t[1] + x ** t[3]),
            (0.0, 1e-6, 0.0, 0.05),
            (1.0, 1e3, 1.0, 5.0),
            _mmf4_starts,
            "c",
            "d",
            _mmf4_jac,
        ),
        Family(
            "wbl4",
            "c - b * exp(-a * x^d)",
            ("a", "b", "c", "d"),
            lambda x, t: t[2] - t[1] * np.exp(-t[0] * x ** t[3]),
            (1e-3, 0.0, 0.0, 0.05),
            (1e3, 2.0, 1.0, 5.0),
            _wbl4_starts,
            "c",
            "d",
            _wbl4_jac,
        ),
    )
}
DEFAULT_FAMILIES = ("pow3", "exp3", "pow4", "mmf4", "wbl4")  # simplest first: ties go to the first


def _monotone_and_finite(family: Family, theta: np.ndarray, x_min: float) -> bool:
    """A usable fit is finite and never falls, from well below the data to far beyond it."""
    grid = np.geomspace(x_min / 10, 1e4, 400)
    values = family(grid, theta)
    return bool(np.all(np.isfinite(values)) and np.all(np.diff(values) >= -1e-9))


def fit_family(
    family: Family, x: np.ndarray, y: np.ndarray, starts: list[np.ndarray] | None = None
) -> np.ndarray | None:
    """Least-squares parameters of ``family`` for points (x, y), from several starting points
    (the family's own, or ``starts``); the best finite, rising fit, or None."""
    lower, upper = np.array(family.lower), np.array(family.upper)
    span = upper - lower
    best, best_cost = None, np.inf
    for theta0 in starts if starts is not None else family.starts(x, y):
        theta0 = np.clip(np.where(np.isfinite(theta0), theta0, lower), lower + 1e-6 * span, upper - 1e-6 * span)
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                jac = (lambda t: family.jac(x, t)) if family.jac is not None else "2-point"
                res = least_squares(lambda t: family(x, t) - y, theta0, jac=jac, bounds=(lower, upper), method="trf")
        except (ValueError, np.linalg.LinAlgError):
            continue
        if (
            np.all(np.isfinite(res.x))
            and np.isfinite(res.cost)
            and res.cost < best_cost
            and _monotone_and_finite(family, res.x, x.min())
        ):
            best, best_cost = res.x, res.cost
    return best


def aicc(rss: float, n_points: int, n_params: int) -> float:
    """Corrected Akaike criterion of a least-squares fit (the noise variance counts as a
    parameter); infinite where there are too few points for the correction."""
    k = n_params + 1
    if n_points - k - 1 <= 0:
        return np.inf
    return float(n_points * np.log(max(rss, 1e-12) / n_points) + 2 * k + 2 * k * (k + 1) / (n_points - k - 1))
