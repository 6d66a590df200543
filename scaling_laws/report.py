"""Fit a finished sweep and write its report.

    python -m scaling_laws.report --sweep_dir DIR [--bootstrap 1000] [--bootstrap3 100] [--seed 0] [--strict]

Reads DIR/results.csv, fits every objective present (Approach 2 and Approach 3; the MDM/AR
compute multiplier when both "mdm" and "ar" are there) and writes DIR/fits.json (every fitted
number with its bootstrap intervals), isoflop.png, frontier.png, loss_vs_compute.png, parametric.png
and report.md, then prints a short summary. A missing or degenerate results.csv stops it with one
line, `error: ...`, and exit status 2.

Flags: --bootstrap and --bootstrap3, the Approach-2 and Approach-3 bootstrap replicates; --seed, the
bootstrap seed; --strict, stop on a concave or clipped IsoFLOP budget instead of flagging it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import warnings
from typing import Any

import numpy as np

from mdm.cli import parse_flags, run_cli
from mdm.errors import ConfigError
from scaling_laws import plots
from scaling_laws.approach2_isoflop import Approach2Fit, IsoFlopWarning, fit_approach2
from scaling_laws.approach3_parametric import PARAM_NAMES, Approach3Fit, fit_approach3
from scaling_laws.multiplier import MultiplierFit, fit_multiplier
from scaling_laws.power_laws import LEVELS
from scaling_laws.report_markdown import INTERVAL_NOTE, fmt_ci, markdown
from scaling_laws.results import FitError, RunResult, objectives_in, read_results, replicate_spread, runs_of

FIGURES = {
    "isoflop": "isoflop.png",
    "frontier": "frontier.png",
    "loss_vs_compute": "loss_vs_compute.png",
    "parametric": "parametric.png",
}


def _num(x: Any) -> Any:
    """A JSON-safe number: nan/inf become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays become Python values, nan/inf become None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


def _intervals(get) -> dict[str, list[Any]]:
    return {f"ci{round(level * 100)}": [_num(v) for v in get(level)] for level in LEVELS}


def _law_json(law) -> dict[str, Any]:
    return {
        "coefficient": _num(law.law.coefficient),
        "exponent": _num(law.law.exponent),
        "exponent_intervals": _intervals(law.exponent_interval),
        "coefficient_intervals": _intervals(law.coefficient_interval),
    }


def approach2_json(fit: Approach2Fit) -> dict[str, Any]:
    return {
        "budgets": [
            {
                "budget": m.budget,
                "status": m.status,
                "num_runs": m.num_runs,
                "num_sizes": m.num_sizes,
                "n_range": [m.n_min, m.n_max],
                "n_opt": _num(m.n_opt),
                "d_opt": _num(m.d_opt),
                "loss_opt": _num(m.loss_opt),
                "parabola": {"c0": m.coef[0], "c1": m.coef[1], "c2": m.coef[2], "centre_ln_n": m.centre},
            }
            for m in fit.minima
        ],
        "laws": {name: _law_json(law) for name, law in fit.laws.items()},
        "bootstrap": {
            "requested": fit.n_boot_requested,
            "valid": fit.n_boot_valid,
            "mean_budgets_dropped": _num(fit.mean_budgets_dropped),
            "resampling": "runs with replacement within each budget",
        },
    }


def approach3_json(fit: Approach3Fit) -> dict[str, Any]:
    closed = fit.closed_form()
    law = fit.frontier_law()
    return {
        "params": {name: _num(v) for name, v in zip(PARAM_NAMES, fit.params)},
        "param_intervals": {name: _intervals(lambda level, name=name: fit.interval(name, level)) for name in PARAM_NAMES},
        "huber_loss": fit.huber_loss,
        "huber_delta": fit.delta,
        "num_runs": fit.num_runs,
        "lbfgs_starts": fit.num_starts,
        "frontier_6ND_closed_form": {
            **{k: _num(v) for k, v in closed.items()},
            "intervals": {k: _intervals(lambda level, k=k: fit.closed_form_interval(k, level)) for k in closed},
        },
        "frontier_measured_flops": {
            "budgets": fit.frontier_budgets_B.tolist(),
            "n_opt": fit.frontier_n_B.tolist(),
            "d_opt": fit.frontier_d_B.tolist(),
            "loss_opt": fit.frontier_loss_B.tolist(),
            "at_search_bound": fit.frontier_at_bound_B.tolist(),
            "n_opt_law": {"coefficient": law.coefficient, "exponent": law.exponent},
            "n_opt_exponent_intervals": _intervals(fit.frontier_exponent_interval),
        },
        "bootstrap": {
            "requested": fit.n_boot_requested,
            "valid": fit.n_boot_valid,
            "resampling": "runs with replacement within each budget; refits with alpha or beta <= 0 dropped",
        },
    }


def multiplier_json(fit: MultiplierFit) -> dict[str, Any]:
    return {
        "definition": "C_mdm(L) / C_ar(L) from the Approach-2 L_opt laws",
        "losses": fit.losses_K.tolist(),
        "ar_compute": fit.ar_compute_K.tolist(),
        "multiplier": fit.multiplier_K.tolist(),
        **{f"ci{round(level * 100)}": [[_num(v) for v in row] for row in fit.interval(level)] for level in LEVELS},
        "extrapolated": fit.extrapolated_K.tolist(),
        "closed_form": {"log_prefactor": fit.log_prefactor, "loss_power": fit.loss_power},
        "bootstrap_pairs": fit.n_pairs,
    }


# ----------------------------------------------------------------------------------------------
# The command


def _fit_objectives(
    by_objective: dict[str, list[RunResult]], n_boot: int, n_boot3: int, seed: int, strict: bool
) -> tuple[dict[str, Approach2Fit], dict[str, Approach3Fit], list[str]]:
    """Approach 2 and 3 for every objective (seeds seed + 1000 i and seed + 1000 i + 1 for the i-th);
    returns both fits per objective and the IsoFLOP warnings raised on the way."""
    fits2, fits3 = {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IsoFlopWarning)
        for i, (objective, runs) in enumerate(by_objective.items()):
            fits2[objective] = fit_approach2(runs, n_boot=n_boot, seed=seed + 1000 * i, strict=strict)
            fits3[objective] = fit_approach3(runs, n_boot=n_boot3, seed=seed + 1000 * i + 1)
    return fits2, fits3, [str(w.message) for w in caught if issubclass(w.category, IsoFlopWarning)]


def _multiplier_or_error(fits2: dict[str, Approach2Fit]) -> tuple[MultiplierFit | None, str | None]:
    """The MDM/AR multiplier when both objectives are there, else None; the reason it failed, if it did."""
    if "mdm" not in fits2 or "ar" not in fits2:
        return None, None
    try:
        return fit_multiplier(fits2["mdm"], fits2["ar"]), None
    except FitError as e:
        return None, f"No multiplier: {e}."


def _fits_json(
    sweep_dir: pathlib.Path,
    by_objective: dict[str, list[RunResult]],
    fits2: dict[str, Approach2Fit],
    fits3: dict[str, Approach3Fit],
    multiplier: MultiplierFit | None,
    multiplier_error: str | None,
    flags: list[str],
) -> dict[str, Any]:
    """The content of fits.json (before `_clean`)."""
    return {
        "results_csv": str(sweep_dir / "results.csv"),
        "num_runs": sum(len(runs) for runs in by_objective.values()),
        "conventions": {
            "C": "planned budget of each run (FLOPs)",
            "N": "non-embedding parameters",
            "D": "tokens trained",
            "loss": "final validation loss, nats/token",
            "D_opt": "C / f(N_opt), f = FLOPs per token interpolated in log-log between a budget's runs",
            "intervals": INTERVAL_NOTE,
        },
        "objectives": {
            o: {
                "approach2": approach2_json(fits2[o]),
                "approach3": approach3_json(fits3[o]),
                "replicates": dataclasses.asdict(sp) if (sp := replicate_spread(runs)) else None,
            }
            for o, runs in by_objective.items()
        },
        "multiplier": multiplier_json(multiplier)
        if multiplier is not None
        else {"error": multiplier_error or "needs mdm and ar"},
        "flags": flags,
        "figures": list(FIGURES.values()),
    }


def _summary(
    sweep_dir: pathlib.Path,
    num_runs: int,
    fits2: dict[str, Approach2Fit],
    fits3: dict[str, Approach3Fit],
    multiplier: MultiplierFit | None,
    multiplier_error: str | None,
) -> list[str]:
    """The lines the command prints: each objective's laws, the multiplier at the middle loss, the files."""
    summary = [f"scaling-law fits of {num_runs} runs in {sweep_dir}"]
    for o, f2 in fits2.items():
        laws = "  ".join(
            f"{name} ~ C^{law.law.exponent:.4g} {fmt_ci(law.exponent_interval(), 3)}"
            for name, law in (("N_opt", f2.n_opt), ("D_opt", f2.d_opt), ("L_opt", f2.loss_opt))
        )
        summary.append(f"{o} approach 2: {laws} ({f2.n_boot_valid}/{f2.n_boot_requested} bootstrap replicates, 95 % CI)")
        e, big_a, big_b, alpha, beta = fits3[o].params
        summary.append(
            f"{o} approach 3: E={e:.4g} A={big_a:.4g} B={big_b:.4g} alpha={alpha:.4g} beta={beta:.4g}; "
            f"N_opt ~ C^{fits3[o].frontier_law().exponent:.4g} at the sweep budgets"
        )
    if multiplier is not None:
        k = multiplier.losses_K.size // 2
        lo, hi = multiplier.interval()[k]
        summary.append(
            f"multiplier C_mdm/C_ar at equal loss L={multiplier.losses_K[k]:.4f}: x{multiplier.multiplier_K[k]:.4g} "
            f"[{lo:.4g}, {hi:.4g}]{' (extrapolated)' if multiplier.extrapolated_K[k] else ''}"
        )
    elif multiplier_error:
        summary.append(multiplier_error)
    summary.append(f"wrote {sweep_dir / 'fits.json'}, {sweep_dir / 'report.md'} and {len(FIGURES)} figures")
    return summary


def build_report(
    sweep_dir: str | pathlib.Path, n_boot: int = 1000, n_boot3: int = 100, seed: int = 0, strict: bool = False
) -> dict:
    """Fits SWEEP_DIR/results.csv and writes fits.json, the PNGs and report.md; returns the fits.json
    content plus a "summary" list of printable lines and a "flags" list of IsoFLOP warnings."""
    sweep_dir = pathlib.Path(sweep_dir)
    rows = read_results(sweep_dir / "results.csv")
    if not rows:
        raise FitError(f"{sweep_dir / 'results.csv'} has no runs: finish some runs and re-run the collector")
    by_objective = {o: runs_of(rows, o) for o in objectives_in(rows)}
    fits2, fits3, flags = _fit_objectives(by_objective, n_boot, n_boot3, seed, strict)
    multiplier, multiplier_error = _multiplier_or_error(fits2)

    plots.plot_isoflop(sweep_dir / FIGURES["isoflop"], by_objective, fits2)
    plots.plot_frontier(sweep_dir / FIGURES["frontier"], fits2, fits3)
    plots.plot_loss_vs_compute(sweep_dir / FIGURES["loss_vs_compute"], by_objective, fits2, multiplier)
    plots.plot_parametric(sweep_dir / FIGURES["parametric"], by_objective, fits3)

    result = _fits_json(sweep_dir, by_objective, fits2, fits3, multiplier, multiplier_error, flags)
    (sweep_dir / "fits.json").write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")
    (sweep_dir / "report.md").write_text(markdown(sweep_dir, rows, fits2, fits3, multiplier, multiplier_error, flags, FIGURES))
    return {**result, "summary": _summary(sweep_dir, len(rows), fits2, fits3, multiplier, multiplier_error)}


FLAGS = {"sweep_dir": "", "bootstrap": 1000, "bootstrap3": 100, "seed": 0, "strict": False}


def _run(argv: list[str]) -> None:
    flags, _, _ = parse_flags(argv, FLAGS, allow_config=False)
    if not flags["sweep_dir"]:
        raise ConfigError("give --sweep_dir DIR: the sweep directory holding results.csv (outputs are written beside it)")
    if flags["bootstrap"] < 0 or flags["bootstrap3"] < 0:
        raise FitError("--bootstrap and --bootstrap3 must be >= 0")
    report = build_report(
        flags["sweep_dir"], n_boot=flags["bootstrap"], n_boot3=flags["bootstrap3"], seed=flags["seed"], strict=flags["strict"]
    )
    for flag in report["flags"]:
        print(f"warning: {flag}", file=sys.stderr)
    print("\n".join(report["summary"]))


def main(argv: list[str]) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
