"""Chinchilla Approach 2, IsoFLOP profiles: per budget C, an ordinary least-squares parabola of loss
in ln N over that budget's runs; its vertex gives N_opt and L_opt, and D_opt = C / f(N_opt) with f
the budget's measured FLOPs per token. A budget whose parabola opens downward ("concave") or whose
vertex lies outside the sampled sizes ("clipped") is flagged with an IsoFlopWarning and left out;
the laws N_opt, D_opt, L_opt = k C^e are least squares in log-log over the other budgets, with
bootstrap intervals that redo the whole procedure on runs resampled within each budget.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from scaling_laws.power_laws import LawFit, fit_power_law, flops_per_token_curve, masked_loglog_fit, one_blas_thread
from scaling_laws.results import FitError, RunResult, check_runs, runs_by_budget


class IsoFlopWarning(UserWarning):
    """An IsoFLOP budget left out of the power laws: its parabola opens downward ("concave") or its
    vertex lies outside the sampled sizes ("clipped")."""


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
    for budget, group in runs_by_budget(runs, objective).items():
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
    objective = check_runs(runs)
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
        intercept, slope, fit_ok = masked_loglog_fit(log_c, ly, ok_RxC)
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
