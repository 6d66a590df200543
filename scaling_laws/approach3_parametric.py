"""Chinchilla Approach 3, the parametric law L(N, D) = E + A / N^alpha + B / D^beta: the summed Huber
loss of log residuals in log-sum-exp form, minimised by L-BFGS from the best points of Chinchilla's
4,500-point initialisation grid, with bootstrap refits on runs resampled within each budget. The
compute-optimal frontier minimises L(N, C / f(N)) under the runs' measured FLOPs per token f at
each sweep budget; `chinchilla_allocation` is the closed form under C = 6ND.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np
from scipy import optimize

from scaling_laws.power_laws import (
    PowerLaw,
    fit_power_law,
    flops_per_token_curve,
    masked_loglog_fit,
    one_blas_thread,
    percentile_interval,
)
from scaling_laws.results import FitError, RunResult, check_runs, runs_by_budget

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
        _, slope, ok = masked_loglog_fit(lc, np.log(self.boot_frontier_n_RxB), np.ones_like(self.boot_frontier_n_RxB))
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
    objective = check_runs(runs)
    groups = runs_by_budget(runs, objective)
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
