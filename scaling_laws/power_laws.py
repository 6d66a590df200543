"""Pieces shared by the fits: power laws y = k x^e fitted by least squares in log-log (for one fit
or many bootstrap replicates at once), percentile intervals, the measured FLOPs-per-token curve f(N),
and a one-BLAS-thread context.

Intervals are percentile bootstrap intervals: runs are resampled with replacement within each
budget (the sweep's design of budgets is kept), the whole procedure is refitted, and the 2.5-97.5 %
(95 %) and 10-90 % (80 %, as in Chinchilla) percentiles of the valid replicates are reported with
their count. They measure run-to-run noise given the sampled sizes and the form of the law, not the
form's own bias (e.g. the parabola bias of Approach 2).

f(N) is piecewise linear in log-log between the sizes of a budget (extended linearly beyond them),
so D_opt(C) = C / f(N_opt) under the library's FLOP count (`mdm/flops.py`, attention and head
included); when every run has f = 6N this is Chinchilla's D_opt = C / (6 N_opt).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import threadpoolctl

from scaling_laws.results import FitError

LEVELS = (0.95, 0.80)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x ** exponent."""

    coefficient: float
    exponent: float

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=np.float64) ** self.exponent

    def inverse(self, y: np.ndarray | float) -> np.ndarray:
        """x such that law(x) = y."""
        return np.exp((np.log(np.asarray(y, dtype=np.float64)) - math.log(self.coefficient)) / self.exponent)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Ordinary least squares of log y on log x (needs >= 2 distinct positive x)."""
    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    log_k, slope, ok = masked_loglog_fit(lx, ly[None], np.ones((1, lx.size)))
    if not ok[0]:
        raise FitError(f"a power law needs >= 2 distinct positive x values, got {list(x)}")
    return PowerLaw(float(math.exp(log_k[0])), float(slope[0]))


def masked_loglog_fit(lx_C: np.ndarray, ly_RxC: np.ndarray, w_RxC: np.ndarray):
    """Per row r, least squares of ly on lx over the points with weight 1. Returns (intercept_R,
    slope_R, ok_R); ok is False where fewer than 2 distinct x carry weight."""
    w = w_RxC.astype(np.float64)
    ly = np.where(w > 0, ly_RxC, 0.0)
    s0, sx, sy = w.sum(1), (w * lx_C).sum(1), (w * ly).sum(1)
    sxx, sxy = (w * lx_C**2).sum(1), (w * lx_C * ly).sum(1)
    det = s0 * sxx - sx**2
    ok = (s0 >= 2) & (det > 1e-12 * np.maximum(s0 * sxx, 1e-300))
    det = np.where(ok, det, 1.0)
    slope = (s0 * sxy - sx * sy) / det
    intercept = (sy - slope * sx) / np.where(ok, s0, 1.0)
    return np.where(ok, intercept, np.nan), np.where(ok, slope, np.nan), ok


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples ((nan, nan) when there are none)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def flops_per_token_curve(params: Sequence[float], flops_per_token: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """f(N) through measured (N, FLOPs/token) points: piecewise linear in log-log, extended linearly
    in log-log beyond the end points (one size: f proportional to N through it)."""
    lx = np.log(np.asarray(params, np.float64))
    lf = np.log(np.asarray(flops_per_token, np.float64))
    xs = np.unique(lx)
    fs = np.array([lf[lx == v].mean() for v in xs])
    if xs.size == 1:
        lo_slope = hi_slope = 1.0
    else:
        lo_slope = (fs[1] - fs[0]) / (xs[1] - xs[0])
        hi_slope = (fs[-1] - fs[-2]) / (xs[-1] - xs[-2])

    def f(n: np.ndarray) -> np.ndarray:
        x = np.log(np.asarray(n, np.float64))
        inner = np.interp(x, xs, fs)
        out = np.where(x < xs[0], fs[0] + lo_slope * (x - xs[0]), inner)
        return np.exp(np.where(x > xs[-1], fs[-1] + hi_slope * (x - xs[-1]), out))

    return f


@dataclasses.dataclass(frozen=True, eq=False)
class LawFit:
    """A compute law y = k C^e fitted to per-budget optima, with its bootstrap replicates
    (`boot_log_coef_R`, `boot_exponent_R`: the valid replicates only)."""

    name: str
    law: PowerLaw
    boot_log_coef_R: np.ndarray
    boot_exponent_R: np.ndarray

    def exponent_interval(self, level: float = 0.95) -> tuple[float, float]:
        return percentile_interval(self.boot_exponent_R, level)

    def coefficient_interval(self, level: float = 0.95) -> tuple[float, float]:
        lo, hi = percentile_interval(self.boot_log_coef_R, level)
        return (math.exp(lo), math.exp(hi)) if math.isfinite(lo) else (math.nan, math.nan)

    def band(self, c_G: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile interval of the law's value at the computes c_G (shape [G])."""
        if self.boot_exponent_R.size == 0:
            nan = np.full(np.shape(c_G), np.nan)
            return nan, nan
        log_y_RxG = self.boot_log_coef_R[:, None] + self.boot_exponent_R[:, None] * np.log(np.asarray(c_G))[None]
        lo, hi = np.quantile(log_y_RxG, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return np.exp(lo), np.exp(hi)


def one_blas_thread():
    """A context in which BLAS/LAPACK use one thread (threadpoolctl). The fits make only tiny
    BLAS/LAPACK calls (SciPy's L-BFGS-B calls LAPACK every iteration), and waking OpenBLAS's
    threads for them made Approach 3 about 40x slower on a busy 2-core machine."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
