"""The MDM/AR compute multiplier at equal loss: C_mdm(L) / C_ar(L), how many times the AR's compute
the MDM needs to reach loss L, from the two objectives' Approach-2 laws L_opt = k C^c. In closed
form it is K L^p; its intervals pair the two fits' bootstrap replicates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from scaling_laws.approach2_isoflop import Approach2Fit
from scaling_laws.power_laws import PowerLaw, percentile_interval
from scaling_laws.results import FitError


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
