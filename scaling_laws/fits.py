"""Scaling-law fits on a sweep's `results.csv`: Chinchilla Approaches 2 and 3, bootstrap intervals, and
the MDM/AR compute multiplier at equal loss.

Conventions:
- C is a run's planned budget (`budget`, FLOPs); all runs of one IsoFLOP curve share it.
- N is the non-embedding parameter count (`params`), D the tokens trained (`tokens`), L the final
  validation loss in nats/token (`loss`).
- FLOPs per token f(N) = flops / tokens is read from the runs, not assumed to be 6N: the library
  counts attention and head FLOPs (`mdm/flops.py`), so D_opt(C) = C / f(N_opt), with f interpolated
  piecewise-linearly in log-log between the sizes of that budget (linear extrapolation beyond them).
  When every run has f = 6N this is Chinchilla's and SMDM's D_opt = C / (6 N_opt).
- Intervals are percentile bootstrap intervals: runs are resampled with replacement within each
  budget (the sweep design of budgets is kept), the whole procedure is refitted, and the 2.5-97.5 %
  (95 %) and 10-90 % (80 %, as in Chinchilla) percentiles of the valid replicates are reported with
  their count. They measure run-to-run noise of the losses given the sampled sizes and the form of
  the law; they do not include the form's own bias (e.g. the parabola bias of Approach 2).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import pathlib
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
import threadpoolctl
from scipy import optimize

from mdm.errors import MdmError

RESULT_COLUMNS = (
    "objective",
    "run",
    "budget",
    "params",
    "params_total",
    "tokens",
    "flops",
    "loss",
    "steps",
    "batch_size",
    "seq_len",
    "workdir",
)
_INT_COLUMNS = ("params", "params_total", "tokens", "steps", "batch_size", "seq_len")
_FLOAT_COLUMNS = ("budget", "flops", "loss")
_POSITIVE_COLUMNS = ("budget", "params", "tokens", "flops", "loss")
LEVELS = (0.95, 0.80)


class FitError(MdmError):
    """Results that cannot be read or fitted: a missing file or column, a degenerate sweep design,
    non-finite or non-positive values."""


class IsoFlopWarning(UserWarning):
    """An IsoFLOP budget left out of the power laws: its parabola opens downward ("concave") or its
    vertex lies outside the sampled sizes ("clipped")."""


# ----------------------------------------------------------------------------------------------
# results.csv


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One finished run of a sweep (one row of results.csv); `extra` keeps any further columns."""

    objective: str
    run: str
    budget: float
    params: int
    params_total: int
    tokens: int
    flops: float
    loss: float
    steps: int
    batch_size: int
    seq_len: int
    workdir: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def flops_per_token(self) -> float:
        """f(N): training FLOPs per token of this run's model."""
        return self.flops / self.tokens


def _parse_int(text: str, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise FitError(f"{where}: {column}={text!r} is not an integer; fix the row or re-run the collector")
    return int(value)


def _parse_float(text: str, column: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FitError(f"{where}: {column}={text!r} is not a number; fix the row or re-run the collector") from None


def read_results(path: str | pathlib.Path) -> list[RunResult]:
    """Reads a sweep's results.csv (header + one row per finished run) into RunResults, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FitError(f"no results file at {path}: run the sweep's collector first (it writes SWEEP_DIR/results.csv)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        missing = [c for c in RESULT_COLUMNS if c not in header]
        if missing:
            raise FitError(f"{path} lacks column(s) {', '.join(missing)}: results.csv needs {', '.join(RESULT_COLUMNS)}")
        extra_columns = [c for c in header if c not in RESULT_COLUMNS]
        rows = []
        for line, record in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if None in record or any(record[c] is None for c in header):
                raise FitError(f"{where}: the row has {'more' if None in record else 'fewer'} fields than the header")
            values: dict[str, object] = {c: record[c] for c in ("objective", "run", "workdir")}
            values.update({c: _parse_int(record[c], c, where) for c in _INT_COLUMNS})
            values.update({c: _parse_float(record[c], c, where) for c in _FLOAT_COLUMNS})
            rows.append(RunResult(**values, extra=tuple((c, record[c]) for c in extra_columns)))
    return rows


def write_results(path: str | pathlib.Path, rows: Iterable[RunResult]) -> None:
    """Writes RunResults as results.csv: the contract columns, then any extra columns (sorted by name)."""
    rows = list(rows)
    extra_columns = sorted({name for r in rows for name, _ in r.extra})
    with pathlib.Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*RESULT_COLUMNS, *extra_columns])
        for r in rows:
            extra = dict(r.extra)
            base = [repr(v) if isinstance(v, float) else str(v) for v in (getattr(r, c) for c in RESULT_COLUMNS)]
            writer.writerow([*base, *(extra.get(c, "") for c in extra_columns)])


def objectives_in(rows: Sequence[RunResult]) -> list[str]:
    """The objectives present, "mdm" and "ar" first, then any others alphabetically."""
    names = {r.objective for r in rows}
    return [n for n in ("mdm", "ar") if n in names] + sorted(names - {"mdm", "ar"})


def runs_of(rows: Sequence[RunResult], objective: str) -> list[RunResult]:
    """The rows of one objective."""
    return [r for r in rows if r.objective == objective]


@dataclasses.dataclass(frozen=True)
class ReplicateSpread:
    """How much the loss of one cell (objective, budget, N) moves between replicates (seeds)."""

    cells: int  # cells with two or more runs
    runs: int  # the runs in those cells
    pooled_std: float  # sqrt of the cells' mean unbiased variance: one run's noise, nats/token
    max_range: float  # the largest max - min within a cell


def replicate_spread(runs: Sequence[RunResult]) -> ReplicateSpread | None:
    """The seed noise of the replicated cells among `runs` (one objective); None when no cell is replicated."""
    cells: dict[tuple[float, int], list[float]] = {}
    for r in runs:
        cells.setdefault((r.budget, r.params), []).append(r.loss)
    repl = [np.asarray(v) for v in cells.values() if len(v) > 1]
    if not repl:
        return None
    return ReplicateSpread(
        cells=len(repl),
        runs=sum(v.size for v in repl),
        pooled_std=float(np.sqrt(np.mean([v.var(ddof=1) for v in repl]))),
        max_range=float(max(v.max() - v.min() for v in repl)),
    )


def _check_runs(runs: Sequence[RunResult]) -> str:
    """Validates the runs of one fit; returns their objective."""
    if not runs:
        raise FitError("no runs to fit: results.csv has no rows for this objective; finish some runs first")
    objectives = sorted({r.objective for r in runs})
    if len(objectives) > 1:
        raise FitError(f"runs of several objectives ({', '.join(objectives)}) in one fit: fit each with runs_of(rows, name)")
    for r in runs:
        for column in _POSITIVE_COLUMNS:
            value = getattr(r, column)
            if not (math.isfinite(value) and value > 0):
                raise FitError(
                    f"run {r.run!r} ({r.objective}) has {column}={value!r}: budgets, sizes, tokens, FLOPs and losses "
                    "must be finite and positive; fix or drop the row"
                )
    return objectives[0]


def _by_budget(runs: Sequence[RunResult], objective: str, min_budgets: int = 2) -> dict[float, list[RunResult]]:
    groups: dict[float, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.budget, []).append(r)
    if len(groups) < min_budgets:
        only = ", ".join(f"{c:.3g}" for c in groups)
        raise FitError(
            f"objective {objective!r} has runs at {len(groups)} budget(s) ({only} FLOPs): a compute scaling law needs "
            f">= {min_budgets}; add budgets to the sweep"
        )
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------------------------
# Shared pieces: power laws, intervals, FLOPs per token


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
    log_k, slope, ok = _masked_loglog_fit(lx, ly[None], np.ones((1, lx.size)))
    if not ok[0]:
        raise FitError(f"a power law needs >= 2 distinct positive x values, got {list(x)}")
    return PowerLaw(float(math.exp(log_k[0])), float(slope[0]))


def _masked_loglog_fit(lx_C: np.ndarray, ly_RxC: np.ndarray, w_RxC: np.ndarray):
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


# ----------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP profiles


@dataclasses.dataclass(frozen=True)
class IsoFlopMinimum:
    """One budget's parabola loss = c0 + c1 u + c2 u^2, u = ln N - centre, and its vertex.

    status: "ok" (c2 > 0 and the vertex inside the sampled sizes), "clipped" (vertex outside them:
    n_opt/d_opt/loss_opt are extrapolations) or "concave" (c2 <= 0: no minimum, optima are nan).
    Only "ok" budgets enter the compute laws."""

    budget: float
    coef: tuple[float, float, float]
    centre: float
    n_opt: float
    d_opt: float
    loss_opt: float
    n_min: float
    n_max: float
    num_runs: int
    num_sizes: int
    status: str

    def loss_at(self, n: np.ndarray) -> np.ndarray:
        u = np.log(np.asarray(n, np.float64)) - self.centre
        return self.coef[0] + self.coef[1] * u + self.coef[2] * u**2


@dataclasses.dataclass(frozen=True)
class _Budget:
    """One budget's design: log sizes and losses of its runs, size ids, and f(N)."""

    budget: float
    x_K: np.ndarray
    y_K: np.ndarray
    size_id_K: np.ndarray
    centre: float
    fpt: Callable[[np.ndarray], np.ndarray]


def _budgets(runs: Sequence[RunResult], objective: str) -> list[_Budget]:
    out = []
    for budget, group in _by_budget(runs, objective).items():
        sizes = sorted({r.params for r in group})
        if len(sizes) < 3:
            raise FitError(
                f"budget C={budget:.3g} of objective {objective!r} has {len(sizes)} distinct size(s) {sizes}: an IsoFLOP "
                "parabola needs >= 3; add sizes to that budget"
            )
        x = np.log(np.array([r.params for r in group], np.float64))
        out.append(
            _Budget(
                budget=budget,
                x_K=x,
                y_K=np.array([r.loss for r in group], np.float64),
                size_id_K=np.array([sizes.index(r.params) for r in group]),
                centre=float(np.log(sizes).mean()),
                fpt=flops_per_token_curve([r.params for r in group], [r.flops_per_token for r in group]),
            )
        )
    return out


def _parabola_vertices(b: _Budget, idx_RxK: np.ndarray) -> dict[str, np.ndarray]:
    """Least-squares parabolas of loss in u = ln N - centre for R resamples (rows of run indices).

    Returns arrays of shape [R]: c0, c1, c2, ln N_opt, L_opt, ln N range, number of distinct sizes
    and status codes (0 ok, 1 clipped, 2 concave, 3 fewer than 3 distinct sizes)."""
    u = b.x_K[idx_RxK] - b.centre
    y = b.y_K[idx_RxK]
    moments = [(u**k).sum(1) for k in range(5)]
    m_Rx3x3 = np.stack([np.stack(moments[i : i + 3], -1) for i in range(3)], -2)
    t_Rx3 = np.stack([(u**k * y).sum(1) for k in range(3)], -1)
    ids = np.sort(b.size_id_K[idx_RxK], axis=1)
    distinct = 1 + (np.diff(ids, axis=1) != 0).sum(1)
    enough = distinct >= 3
    m_Rx3x3 = np.where(enough[:, None, None], m_Rx3x3, np.eye(3))
    c = np.linalg.solve(m_Rx3x3, np.where(enough[:, None], t_Rx3, 0.0)[..., None])[..., 0]
    c0, c1, c2 = c[:, 0], c[:, 1], c[:, 2]
    convex = c2 > 0
    safe_c2 = np.where(convex, c2, 1.0)
    u_opt = np.where(convex, -c1 / (2 * safe_c2), np.nan)
    l_opt = np.where(convex, c0 - c1**2 / (4 * safe_c2), np.nan)
    u_min, u_max = u.min(1), u.max(1)
    inside = (u_opt >= u_min) & (u_opt <= u_max)
    status = np.where(~enough, 3, np.where(~convex, 2, np.where(inside, 0, 1)))
    return {
        "c0": c0,
        "c1": c1,
        "c2": c2,
        "log_n_opt": u_opt + b.centre,
        "loss_opt": l_opt,
        "log_n_min": u_min + b.centre,
        "log_n_max": u_max + b.centre,
        "distinct": distinct,
        "status": status,
    }


_STATUS = {0: "ok", 1: "clipped", 2: "concave"}


@dataclasses.dataclass(frozen=True, eq=False)
class Approach2Fit:
    """IsoFLOP minima per budget and the laws N_opt = k_N C^a, D_opt = k_D C^b, L_opt = k_L C^c.

    Bootstrap: `n_boot_requested` replicates resample runs within each budget and redo the whole
    procedure (parabolas, flagging, laws); a replicate is valid when >= 2 budgets stay "ok", and the
    intervals use the `n_boot_valid` valid ones. `mean_budgets_dropped` is the mean number of budgets
    a valid replicate left out (flagged, or fewer than 3 distinct sizes after resampling)."""

    objective: str
    minima: tuple[IsoFlopMinimum, ...]
    n_opt: LawFit
    d_opt: LawFit
    loss_opt: LawFit
    n_boot_requested: int
    n_boot_valid: int
    mean_budgets_dropped: float

    @property
    def laws(self) -> dict[str, LawFit]:
        return {"n_opt": self.n_opt, "d_opt": self.d_opt, "loss_opt": self.loss_opt}

    @property
    def used(self) -> tuple[IsoFlopMinimum, ...]:
        """The budgets that entered the laws."""
        return tuple(m for m in self.minima if m.status == "ok")


def isoflop_minima(runs: Sequence[RunResult], strict: bool = False) -> list[IsoFlopMinimum]:
    """Per budget, the OLS parabola of loss in ln N (all runs, repeats included) and its vertex.

    A concave or clipped budget raises FitError when `strict`, else it is flagged in `status` and an
    IsoFlopWarning names it. Needs >= 2 budgets and >= 3 distinct sizes per budget."""
    objective = _check_runs(runs)
    out = []
    for b in _budgets(runs, objective):
        v = {k: a[0] for k, a in _parabola_vertices(b, np.arange(b.x_K.size)[None]).items()}
        status = _STATUS[int(v["status"])]
        n_opt = math.exp(v["log_n_opt"]) if status != "concave" else math.nan
        d_opt = b.budget / float(b.fpt(n_opt)) if status != "concave" else math.nan
        m = IsoFlopMinimum(
            budget=b.budget,
            coef=(float(v["c0"]), float(v["c1"]), float(v["c2"])),
            centre=b.centre,
            n_opt=n_opt,
            d_opt=d_opt,
            loss_opt=float(v["loss_opt"]),
            n_min=math.exp(v["log_n_min"]),
            n_max=math.exp(v["log_n_max"]),
            num_runs=int(b.x_K.size),
            num_sizes=int(v["distinct"]),
            status=status,
        )
        if status != "ok":
            what = (
                "its parabola opens downward (no minimum)"
                if status == "concave"
                else f"its vertex N={n_opt:.3g} lies outside the sampled sizes [{m.n_min:.3g}, {m.n_max:.3g}]"
            )
            message = (
                f"{objective} budget C={b.budget:.3g}: {what}; it is left out of the compute laws "
                "(widen or re-centre that budget's sizes)"
            )
            if strict:
                raise FitError(message)
            warnings.warn(message, IsoFlopWarning, stacklevel=2)
        out.append(m)
    return out


def fit_approach2(runs: Sequence[RunResult], n_boot: int = 1000, seed: int = 0, strict: bool = False) -> Approach2Fit:
    """Chinchilla Approach 2 on one objective's runs: IsoFLOP parabolas, then log-log least squares of
    N_opt, D_opt and L_opt on C over the "ok" budgets, with `n_boot` bootstrap replicates (see
    Approach2Fit). Raises FitError when fewer than 2 budgets are usable."""
    with one_blas_thread():
        return _fit_approach2(runs, n_boot, seed, strict)


def _fit_approach2(runs: Sequence[RunResult], n_boot: int, seed: int, strict: bool) -> Approach2Fit:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minima = isoflop_minima(runs, strict=strict)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    objective = runs[0].objective
    used = [m for m in minima if m.status == "ok"]
    if len(used) < 2:
        flagged = ", ".join(f"C={m.budget:.3g} ({m.status})" for m in minima if m.status != "ok")
        raise FitError(
            f"objective {objective!r}: only {len(used)} budget(s) have an interior IsoFLOP minimum (flagged: {flagged}); "
            "a compute law needs >= 2: widen or re-centre the sizes of the flagged budgets"
        )
    point = {
        "n_opt": fit_power_law([m.budget for m in used], [m.n_opt for m in used]),
        "d_opt": fit_power_law([m.budget for m in used], [m.d_opt for m in used]),
        "loss_opt": fit_power_law([m.budget for m in used], [m.loss_opt for m in used]),
    }

    budgets = _budgets(runs, objective)
    log_c = np.log([b.budget for b in budgets])
    rng = np.random.default_rng(seed)
    per_budget = []
    for b in budgets:
        idx = rng.integers(0, b.x_K.size, size=(n_boot, b.x_K.size))
        v = _parabola_vertices(b, idx)
        ok = v["status"] == 0
        log_n = np.where(ok, v["log_n_opt"], 0.0)
        log_d = np.log(b.budget) - np.log(b.fpt(np.exp(log_n)))
        per_budget.append((ok, log_n, log_d, np.log(np.where(ok, v["loss_opt"], 1.0))))
    ok_RxC = np.stack([p[0] for p in per_budget], 1)
    boot = {}
    valid = ok_RxC.sum(1) >= 2
    for name, col in (("n_opt", 1), ("d_opt", 2), ("loss_opt", 3)):
        ly = np.stack([p[col] for p in per_budget], 1)
        intercept, slope, fit_ok = _masked_loglog_fit(log_c, ly, ok_RxC)
        valid &= fit_ok
        boot[name] = (intercept, slope)
    laws = {
        name: LawFit(name, point[name], boot[name][0][valid], boot[name][1][valid]) for name in ("n_opt", "d_opt", "loss_opt")
    }
    dropped = (len(budgets) - ok_RxC[valid].sum(1)).mean() if valid.any() else math.nan
    return Approach2Fit(
        objective=objective,
        minima=tuple(minima),
        n_boot_requested=n_boot,
        n_boot_valid=int(valid.sum()),
        mean_budgets_dropped=float(dropped),
        **laws,
    )


# ----------------------------------------------------------------------------------------------
# Approach 3: parametric L(N, D) = E + A / N^alpha + B / D^beta


PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def chinchilla_init_grid() -> np.ndarray:
    """Chinchilla's 4,500 initialisations of (a, b, e, alpha, beta): alpha, beta in {0, 0.5, ..., 2},
    e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}. Shape [4500, 5]."""
    ab = np.arange(0.0, 26.0, 5.0)
    e = np.arange(-1.0, 1.01, 0.5)
    exps = np.arange(0.0, 2.01, 0.5)
    return np.array(list(itertools.product(ab, ab, e, exps, exps)), np.float64)


def _huber_objective(theta_Gx5: np.ndarray, log_n_K: np.ndarray, log_d_K: np.ndarray, log_l_K: np.ndarray, delta: float):
    """Summed Huber loss of the LSE-form log residuals for G parameter vectors (a, b, e, alpha, beta),
    and its gradient. Returns (loss_G, grad_Gx5)."""
    a, b, e, alpha, beta = (theta_Gx5[:, i : i + 1] for i in range(5))
    u = np.stack([a - alpha * log_n_K, b - beta * log_d_K, np.broadcast_to(e, a.shape[:1] + log_n_K.shape)], 0)
    top = u.max(0)
    w = np.exp(u - top)
    total = w.sum(0)
    r = top + np.log(total) - log_l_K
    w = w / total
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r**2, delta * (absr - 0.5 * delta)).sum(1)
    h = np.clip(r, -delta, delta)
    grad = np.stack(
        [(h * w[0]).sum(1), (h * w[1]).sum(1), (h * w[2]).sum(1), -(h * w[0] * log_n_K).sum(1), -(h * w[1] * log_d_K).sum(1)],
        1,
    )
    return loss, grad


def _lbfgs(theta0: np.ndarray, data: tuple[np.ndarray, np.ndarray, np.ndarray], delta: float) -> tuple[np.ndarray, float]:
    def fun(theta):
        loss, grad = _huber_objective(theta[None], *data, delta)
        return float(loss[0]), grad[0]

    # Tolerances far below the Huber loss scale (~delta * residual * runs): SciPy's defaults stop
    # early on it, the convergence failure Besiroglu et al. found in Chinchilla's own fit.
    res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-11})
    return res.x, float(res.fun)


def _fit_parametric(data, delta: float, starts_Sx5: np.ndarray) -> tuple[np.ndarray, float]:
    best_theta, best_loss = starts_Sx5[0], math.inf
    for theta0 in starts_Sx5:
        theta, loss = _lbfgs(theta0, data, delta)
        if np.all(np.isfinite(theta)) and loss < best_loss:
            best_theta, best_loss = theta, loss
    return best_theta, best_loss


def _best_grid_points(data, delta: float, n_starts: int | None) -> np.ndarray:
    grid = chinchilla_init_grid()
    if n_starts is None or n_starts >= grid.shape[0]:
        return grid
    loss, _ = _huber_objective(grid, *data, delta)
    return grid[np.argsort(loss, kind="stable")[:n_starts]]


def _to_named(theta: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta)."""
    a, b, e, alpha, beta = theta
    return np.array([math.exp(e), math.exp(a), math.exp(b), alpha, beta])


def chinchilla_allocation(
    e_abab: Sequence[float], compute: np.ndarray | float, flops_per_param_token: float = 6.0
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Closed-form compute-optimal allocation of L = E + A/N^alpha + B/D^beta under C = k N D:
    N_opt = G (C/k)^a, D_opt = (C/k)^b / G, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta). `e_abab` is (E, A, B, alpha, beta).
    Returns (N_opt, D_opt, a, b, G)."""
    _, big_a, big_b, alpha, beta = (float(v) for v in e_abab)
    g = (alpha * big_a / (beta * big_b)) ** (1.0 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    c = np.asarray(compute, np.float64) / flops_per_param_token
    return g * c**a, c**b / g, a, b, g


def optimal_allocation(
    e_abab: Sequence[float],
    compute: float,
    flops_per_token: Callable[[np.ndarray], np.ndarray],
    log_n_bounds: tuple[float, float],
) -> tuple[float, float, float, bool]:
    """Numerical compute-optimal allocation under C = f(N) D: minimises L(N, C / f(N)) over ln N in
    `log_n_bounds` (bounded Brent). Returns (N_opt, D_opt, L_opt, at_bound)."""
    e, big_a, big_b, alpha, beta = (float(v) for v in e_abab)

    def loss(log_n: float) -> float:
        n = math.exp(log_n)
        d = compute / float(flops_per_token(n))
        return e + big_a * n**-alpha + big_b * d**-beta

    res = optimize.minimize_scalar(loss, bounds=log_n_bounds, method="bounded", options={"xatol": 1e-9})
    n = math.exp(res.x)
    span = log_n_bounds[1] - log_n_bounds[0]
    at_bound = min(res.x - log_n_bounds[0], log_n_bounds[1] - res.x) < 1e-6 * span
    return n, compute / float(flops_per_token(n)), float(res.fun), bool(at_bound)


@dataclasses.dataclass(frozen=True, eq=False)
class Approach3Fit:
    """L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla Approach 3) and the allocation it implies.

    `params` is (E, A, B, alpha, beta); `huber_loss` the summed Huber loss (delta `delta`) of the log
    residuals at the optimum, the best of `num_starts` L-BFGS starts. `boot_params_Rx5` holds the
    `n_boot_valid` bootstrap refits (runs resampled within each budget; each refit starts from the
    point estimate and from the replicate's best grid point; replicates with alpha or beta <= 0 are
    dropped). The frontier is computed under the
    measured FLOPs per token f(N) at each sweep budget (`frontier_*_B`, with bootstrap replicates
    `boot_frontier_n_RxB`); `closed_form` gives Chinchilla's C = 6ND frontier exponents."""

    objective: str
    params: np.ndarray
    huber_loss: float
    delta: float
    num_runs: int
    num_starts: int
    boot_params_Rx5: np.ndarray
    n_boot_requested: int
    n_boot_valid: int
    frontier_budgets_B: np.ndarray
    frontier_n_B: np.ndarray
    frontier_d_B: np.ndarray
    frontier_loss_B: np.ndarray
    frontier_at_bound_B: np.ndarray
    boot_frontier_n_RxB: np.ndarray

    def predict(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Predicted loss (nats/token) at sizes n and token counts d (broadcast)."""
        e, big_a, big_b, alpha, beta = self.params
        return e + big_a * np.asarray(n, np.float64) ** -alpha + big_b * np.asarray(d, np.float64) ** -beta

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Bootstrap percentile interval of one of E, A, B, alpha, beta."""
        return percentile_interval(self.boot_params_Rx5[:, PARAM_NAMES.index(name)], level)

    def closed_form(self) -> dict[str, float]:
        """Chinchilla's C = 6ND frontier: exponents a (N_opt), b (D_opt) and G."""
        _, _, a, b, g = chinchilla_allocation(self.params, 1.0)
        return {"a": a, "b": b, "G": g}

    def closed_form_interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        values = [chinchilla_allocation(p, 1.0)[{"a": 2, "b": 3, "G": 4}[name]] for p in self.boot_params_Rx5]
        return percentile_interval(np.array(values), level)

    def frontier_law(self) -> PowerLaw:
        """N_opt = k C^a fitted (log-log least squares) to the numerical frontier at the sweep budgets."""
        return fit_power_law(self.frontier_budgets_B, self.frontier_n_B)

    def frontier_exponent_interval(self, level: float = 0.95) -> tuple[float, float]:
        lc = np.log(self.frontier_budgets_B)
        _, slope, ok = _masked_loglog_fit(lc, np.log(self.boot_frontier_n_RxB), np.ones_like(self.boot_frontier_n_RxB))
        return percentile_interval(slope[ok], level)


def fit_approach3(
    runs: Sequence[RunResult], n_boot: int = 200, seed: int = 0, delta: float = 1e-3, n_starts: int | None = 16
) -> Approach3Fit:
    """Chinchilla Approach 3 on one objective's runs: summed Huber loss (delta) of
    LSE(a - alpha ln N, b - beta ln D, e) - ln L, minimised by L-BFGS from the `n_starts` best points of
    Chinchilla's 4,500-point grid (None: from all of them), best kept. Needs >= 2 budgets and more runs
    than the 5 parameters."""
    with one_blas_thread():
        return _fit_approach3(runs, n_boot, seed, delta, n_starts)


def _fit_approach3(runs: Sequence[RunResult], n_boot: int, seed: int, delta: float, n_starts: int | None) -> Approach3Fit:
    objective = _check_runs(runs)
    groups = _by_budget(runs, objective)
    if len(runs) <= len(PARAM_NAMES):
        raise FitError(
            f"objective {objective!r} has {len(runs)} runs: the parametric law has {len(PARAM_NAMES)} parameters and needs "
            "more runs than that; add runs to the sweep"
        )
    log_n = np.log([r.params for r in runs])
    log_d = np.log([r.tokens for r in runs])
    log_l = np.log([r.loss for r in runs])
    starts = _best_grid_points((log_n, log_d, log_l), delta, n_starts)
    theta, loss = _fit_parametric((log_n, log_d, log_l), delta, starts)
    params = _to_named(theta)

    fpt = flops_per_token_curve([r.params for r in runs], [r.flops_per_token for r in runs])
    bounds = (float(log_n.min()) - math.log(1e3), float(log_n.max()) + math.log(1e3))
    budgets = np.array(list(groups), np.float64)
    frontier = np.array([optimal_allocation(params, c, fpt, bounds) for c in budgets], np.float64).reshape(-1, 4)

    rng = np.random.default_rng(seed)
    index_groups = [np.flatnonzero(np.array([r.budget == c for r in runs])) for c in groups]
    boot_params, boot_front = [], []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in index_groups])
        data = (log_n[idx], log_d[idx], log_l[idx])
        starts_r = np.concatenate([theta[None], _best_grid_points(data, delta, 1)])
        theta_r, _ = _fit_parametric(data, delta, starts_r)
        p = _to_named(theta_r)
        if not np.all(np.isfinite(p)) or p[3] <= 0 or p[4] <= 0:
            continue
        boot_params.append(p)
        boot_front.append([optimal_allocation(p, c, fpt, bounds)[0] for c in budgets])
    return Approach3Fit(
        objective=objective,
        params=params,
        huber_loss=loss,
        delta=delta,
        num_runs=len(runs),
        num_starts=int(starts.shape[0]),
        boot_params_Rx5=np.array(boot_params, np.float64).reshape(-1, 5),
        n_boot_requested=n_boot,
        n_boot_valid=len(boot_params),
        frontier_budgets_B=budgets,
        frontier_n_B=frontier[:, 0],
        frontier_d_B=frontier[:, 1],
        frontier_loss_B=frontier[:, 2],
        frontier_at_bound_B=frontier[:, 3].astype(bool),
        boot_frontier_n_RxB=np.array(boot_front, np.float64).reshape(-1, budgets.size),
    )


# ----------------------------------------------------------------------------------------------
# The MDM/AR compute multiplier at equal loss


def log_compute_at_loss(law: PowerLaw, loss: np.ndarray | float) -> np.ndarray:
    """ln C at which the loss law L_opt = k C^c reaches `loss` (c must be negative)."""
    if not law.exponent < 0:
        raise FitError(
            f"the loss law L_opt = {law.coefficient:.4g} C^{law.exponent:.4g} does not fall with compute: no multiplier"
        )
    return (np.log(np.asarray(loss, np.float64)) - math.log(law.coefficient)) / law.exponent


def compute_multiplier(loss_law_mdm: PowerLaw, loss_law_ar: PowerLaw, loss: np.ndarray | float) -> np.ndarray:
    """C_mdm(L) / C_ar(L): how many times the AR's compute the MDM needs to reach loss L, from the two
    L_opt = k C^c laws. As a function of loss it is K L^p with p = 1/c_mdm - 1/c_ar."""
    return np.exp(log_compute_at_loss(loss_law_mdm, loss) - log_compute_at_loss(loss_law_ar, loss))


def multiplier_at_ar_compute(loss_law_mdm: PowerLaw, loss_law_ar: PowerLaw, c_ar: np.ndarray | float) -> np.ndarray:
    """The multiplier at the loss the AR reaches with compute c_ar:
    (k_ar / k_mdm)^(1/c_mdm) * c_ar^(c_ar_exp / c_mdm - 1)."""
    return compute_multiplier(loss_law_mdm, loss_law_ar, loss_law_ar(c_ar))


@dataclasses.dataclass(frozen=True, eq=False)
class MultiplierFit:
    """C_mdm(L)/C_ar(L) at losses `losses_K` (default: the AR law's L_opt at the AR budgets, so
    `ar_compute_K` are those budgets), with bootstrap intervals over `n_pairs` paired replicates
    (replicate i of each objective, drawn independently; pairs where a law does not fall are
    dropped). `extrapolated_K` marks losses outside either objective's fitted L_opt range.
    Closed form: multiplier = exp(log_prefactor) * L^loss_power."""

    losses_K: np.ndarray
    ar_compute_K: np.ndarray
    multiplier_K: np.ndarray
    boot_multiplier_RxK: np.ndarray
    extrapolated_K: np.ndarray
    log_prefactor: float
    loss_power: float
    n_pairs: int

    def interval(self, level: float = 0.95) -> np.ndarray:
        """Percentile intervals, shape [K, 2]."""
        return np.array([percentile_interval(col, level) for col in self.boot_multiplier_RxK.T]).reshape(-1, 2)


def fit_multiplier(mdm: Approach2Fit, ar: Approach2Fit, losses: Sequence[float] | None = None) -> MultiplierFit:
    """The compute multiplier from the two Approach-2 L_opt laws (see MultiplierFit)."""
    law_m, law_a = mdm.loss_opt.law, ar.loss_opt.law
    if losses is None:
        ar_compute = np.array([m.budget for m in ar.used], np.float64)
        losses_K = law_a(ar_compute)
    else:
        losses_K = np.asarray(losses, np.float64)
        ar_compute = np.exp(log_compute_at_loss(law_a, losses_K))
    multiplier = compute_multiplier(law_m, law_a, losses_K)
    r = min(mdm.n_boot_valid, ar.n_boot_valid)
    km, cm = mdm.loss_opt.boot_log_coef_R[:r], mdm.loss_opt.boot_exponent_R[:r]
    ka, ca = ar.loss_opt.boot_log_coef_R[:r], ar.loss_opt.boot_exponent_R[:r]
    keep = (cm < 0) & (ca < 0)
    log_l = np.log(losses_K)[None]
    boot = np.exp((log_l - km[keep, None]) / cm[keep, None] - (log_l - ka[keep, None]) / ca[keep, None])

    def loss_range(fit: Approach2Fit) -> tuple[float, float]:
        values = fit.loss_opt.law(np.array([m.budget for m in fit.used]))
        return float(values.min()), float(values.max())

    (m_lo, m_hi), (a_lo, a_hi) = loss_range(mdm), loss_range(ar)
    tol = 1e-9
    extrapolated = (losses_K < max(m_lo, a_lo) * (1 - tol)) | (losses_K > min(m_hi, a_hi) * (1 + tol))
    return MultiplierFit(
        losses_K=losses_K,
        ar_compute_K=ar_compute,
        multiplier_K=multiplier,
        boot_multiplier_RxK=boot,
        extrapolated_K=extrapolated,
        log_prefactor=math.log(law_a.coefficient) / law_a.exponent - math.log(law_m.coefficient) / law_m.exponent,
        loss_power=1.0 / law_m.exponent - 1.0 / law_a.exponent,
        n_pairs=int(keep.sum()),
    )
