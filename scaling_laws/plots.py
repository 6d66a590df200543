"""Figures of a scaling-law report, drawn with matplotlib's Agg canvas (no pyplot state) as PNG files.

- `plot_isoflop`: loss against N per budget with the fitted parabolas and their minima, one panel per
  objective;
- `plot_frontier`: N_opt and D_opt against C with the Approach-2 laws (95 % bootstrap bands) and the
  Approach-3 frontier;
- `plot_loss_vs_compute`: every run's loss against its FLOPs, the L_opt laws of both objectives, and
  the MDM/AR compute multiplier at equal loss;
- `plot_parametric`: Approach 3's predicted against observed loss.
"""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib import cm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from scaling_laws.approach2_isoflop import Approach2Fit
from scaling_laws.approach3_parametric import Approach3Fit
from scaling_laws.multiplier import MultiplierFit
from scaling_laws.results import RunResult

_STYLE = {"mdm": ("tab:red", "o", "MDM"), "ar": ("tab:blue", "s", "AR")}
_OTHER = ("tab:green", "^", None)


def _style(objective: str) -> tuple[str, str, str]:
    color, marker, label = _STYLE.get(objective, _OTHER)
    return color, marker, label or objective


def sci(x: float, digits: int = 2) -> str:
    """x as mathtext `m x 10^e` (e.g. 3x10^18), for labels."""
    if not (math.isfinite(x) and x > 0):
        return str(x)
    exponent = math.floor(math.log10(x))
    mantissa = round(x / 10**exponent, digits - 1)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    head = "" if mantissa == 1 else f"{mantissa:g}\\times"
    return f"${head}10^{{{exponent}}}$"


def _save(fig: Figure, path: pathlib.Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)


def _c_grid(budgets: Sequence[float], pad: float = 1.5) -> np.ndarray:
    return np.logspace(math.log10(min(budgets) / pad), math.log10(max(budgets) * pad), 100)


def plot_isoflop(path: str | pathlib.Path, rows: Mapping[str, Sequence[RunResult]], fits2: Mapping[str, Approach2Fit]) -> None:
    """Loss against non-embedding N at each budget, with the fitted parabolas (dotted when the budget is
    flagged) and the vertices of the unflagged ones (stars); one panel per objective in `fits2`."""
    objectives = list(fits2)
    fig = Figure(figsize=(6.4 * len(objectives), 4.8), layout="constrained")
    axes = fig.subplots(1, len(objectives), squeeze=False)[0]
    for ax, objective in zip(axes, objectives):
        fit = fits2[objective]
        _, marker, label = _style(objective)
        colors = cm.viridis(np.linspace(0.0, 0.9, len(fit.minima)))
        for color, m in zip(colors, fit.minima):
            runs = [r for r in rows[objective] if r.budget == m.budget]
            flag = "" if m.status == "ok" else f" ({m.status})"
            ax.scatter([r.params for r in runs], [r.loss for r in runs], color=color, marker=marker, s=22, zorder=3)
            n_grid = np.logspace(math.log10(m.n_min) - 0.1, math.log10(m.n_max) + 0.1, 100)
            ax.plot(
                n_grid, m.loss_at(n_grid), color=color, ls="-" if m.status == "ok" else ":", label=f"C = {sci(m.budget)}{flag}"
            )
            if m.status == "ok":  # a flagged vertex lies off the sampled sizes and would only stretch the axis
                ax.scatter([m.n_opt], [m.loss_opt], marker="*", s=160, color=color, edgecolor="black", zorder=4)
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"{label}: IsoFLOP profiles (stars: parabola minima)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="budget (FLOPs)", fontsize="small")
    fig.suptitle("Loss against model size at fixed compute")
    _save(fig, pathlib.Path(path))


def plot_frontier(
    path: str | pathlib.Path, fits2: Mapping[str, Approach2Fit], fits3: Mapping[str, Approach3Fit] | None = None
) -> None:
    """N_opt(C) and D_opt(C): Approach-2 minima (filled: used; hollow: flagged), the fitted laws with 95 %
    bootstrap bands, and (dashed) the Approach-3 frontier at the sweep budgets."""
    fits3 = fits3 or {}
    fig = Figure(figsize=(12.8, 4.8), layout="constrained")
    ax_n, ax_d = fig.subplots(1, 2)
    for objective, fit in fits2.items():
        color, marker, label = _style(objective)
        c_grid = _c_grid([m.budget for m in fit.minima])
        for ax, law, attr, sym in ((ax_n, fit.n_opt, "n_opt", "N"), (ax_d, fit.d_opt, "d_opt", "D")):
            used = [m for m in fit.minima if m.status == "ok"]
            clipped = [m for m in fit.minima if m.status == "clipped"]
            ax.scatter([m.budget for m in used], [getattr(m, attr) for m in used], color=color, marker=marker, zorder=3)
            if clipped:
                ax.scatter(
                    [m.budget for m in clipped],
                    [getattr(m, attr) for m in clipped],
                    facecolor="none",
                    edgecolor=color,
                    marker=marker,
                    label=f"{label}: clipped budgets (not fitted)",
                )
            lo, hi = law.exponent_interval()
            ax.plot(
                c_grid,
                law.law(c_grid),
                color=color,
                label=f"{label}: ${sym}_{{\\mathrm{{opt}}}} \\propto C^{{{law.law.exponent:.3f}}}$ [{lo:.3f}, {hi:.3f}]",
            )
            band_lo, band_hi = law.band(c_grid)
            if np.all(np.isfinite(band_lo)):
                ax.fill_between(c_grid, band_lo, band_hi, color=color, alpha=0.15, lw=0)
            if objective in fits3:
                f3 = fits3[objective]
                values = f3.frontier_n_B if sym == "N" else f3.frontier_d_B
                exponent = np.polyfit(np.log(f3.frontier_budgets_B), np.log(values), 1)[0]
                ax.plot(
                    f3.frontier_budgets_B,
                    values,
                    color=color,
                    ls="--",
                    marker="x",
                    label=f"{label} approach 3: $\\propto C^{{{exponent:.3f}}}$",
                )
    for ax in (ax_n, ax_d):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", title="[ ]: 95 % CI of the exponent", title_fontsize="small")
    ax_n.set_ylabel("compute-optimal size $N_\\mathrm{opt}$ (non-embedding parameters)")
    ax_n.set_title("Optimal model size against compute (bands: 95 % bootstrap)")
    ax_d.set_ylabel("compute-optimal data $D_\\mathrm{opt}$ (tokens)")
    ax_d.set_title("Optimal training tokens against compute (bands: 95 % bootstrap)")
    _save(fig, pathlib.Path(path))


def plot_loss_vs_compute(
    path: str | pathlib.Path,
    rows: Mapping[str, Sequence[RunResult]],
    fits2: Mapping[str, Approach2Fit],
    multiplier: MultiplierFit | None = None,
) -> None:
    """Every run's loss against its training FLOPs (faint), the IsoFLOP minima and the L_opt laws with
    95 % bootstrap bands; with `multiplier`, an arrow at one loss from the AR to the MDM compute."""
    fig = Figure(figsize=(8.0, 5.6), layout="constrained")
    ax = fig.subplots()
    for objective, fit in fits2.items():
        color, marker, label = _style(objective)
        runs = rows[objective]
        ax.scatter([r.flops for r in runs], [r.loss for r in runs], color=color, marker=marker, s=12, alpha=0.3)
        used = fit.used
        ax.scatter([m.budget for m in used], [m.loss_opt for m in used], color=color, marker=marker, edgecolor="black", zorder=3)
        c_grid = _c_grid([r.budget for r in runs])
        if multiplier is not None and objective == "mdm":
            top = float(np.exp(np.log(multiplier.ar_compute_K) + np.log(multiplier.multiplier_K)).max()) * 1.5
            c_grid = np.logspace(math.log10(c_grid[0]), math.log10(max(c_grid[-1], top)), 100)
        law = fit.loss_opt
        lo, hi = law.exponent_interval()
        ax.plot(
            c_grid,
            law.law(c_grid),
            color=color,
            label=f"{label}: $L_\\mathrm{{opt}} = {law.law.coefficient:.3g}\\,C^{{{law.law.exponent:.4f}}}$ [{lo:.4f}, {hi:.4f}]",
        )
        band_lo, band_hi = law.band(c_grid)
        if np.all(np.isfinite(band_lo)):
            ax.fill_between(c_grid, band_lo, band_hi, color=color, alpha=0.15, lw=0)
    if multiplier is not None and multiplier.losses_K.size:
        k = multiplier.losses_K.size // 2
        loss, c_ar, factor = multiplier.losses_K[k], multiplier.ar_compute_K[k], multiplier.multiplier_K[k]
        ax.annotate(
            "",
            xy=(c_ar * factor, loss),
            xytext=(c_ar, loss),
            arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.5},
        )
        lo, hi = multiplier.interval()[k]
        extrapolated = " (extrapolated)" if multiplier.extrapolated_K[k] else ""
        ax.text(
            0.03,
            0.04,
            f"equal loss L = {loss:.3f} nats/token: $C_\\mathrm{{MDM}} / C_\\mathrm{{AR}}$ = {factor:.3g} "
            f"(95 % CI {lo:.3g}-{hi:.3g}){extrapolated}\n"
            f"multiplier(L) = {math.exp(multiplier.log_prefactor):.3g} $L^{{{multiplier.loss_power:.3g}}}$",
            transform=ax.transAxes,
            fontsize="small",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "gray"},
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    # The y range follows the runs (and the arrow), not a law's bootstrap band far out in extrapolation.
    shown = [r.loss for runs in rows.values() for r in runs] + [float(x) for x in (multiplier.losses_K if multiplier else [])]
    ax.set_ylim(min(shown) / 1.15, max(shown) * 1.15)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Loss against compute: runs (faint), IsoFLOP minima and $L_\\mathrm{opt}(C)$ laws")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper right", title="[ ]: 95 % CI of the exponent", title_fontsize="small")
    _save(fig, pathlib.Path(path))


def plot_parametric(path: str | pathlib.Path, rows: Mapping[str, Sequence[RunResult]], fits3: Mapping[str, Approach3Fit]) -> None:
    """Approach 3's predicted loss L(N, D) against each run's observed loss, with the identity line."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    lows, highs = [], []
    for objective, fit in fits3.items():
        color, marker, label = _style(objective)
        runs = rows[objective]
        observed = np.array([r.loss for r in runs])
        predicted = fit.predict(np.array([r.params for r in runs]), np.array([r.tokens for r in runs]))
        e, big_a, big_b, alpha, beta = fit.params
        ax.scatter(
            observed,
            predicted,
            color=color,
            marker=marker,
            s=18,
            label=f"{label}: E={e:.3g}, A={big_a:.3g}, B={big_b:.3g}, $\\alpha$={alpha:.3f}, $\\beta$={beta:.3f}",
        )
        lows.append(min(observed.min(), predicted.min()))
        highs.append(max(observed.max(), predicted.max()))
    lo, hi = min(lows), max(highs)
    ax.plot([lo, hi], [lo, hi], color="gray", ls="--", label="predicted = observed")
    ax.set_xlabel("observed validation loss (nats/token)")
    ax.set_ylabel("Approach 3 prediction (nats/token)")
    ax.set_title("Approach 3: $L = E + A/N^\\alpha + B/D^\\beta$ against the runs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, pathlib.Path(path))
