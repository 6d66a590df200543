"""Fit a finished sweep and write its report.

    python -m scaling_laws.report SWEEP_DIR [--bootstrap 1000] [--bootstrap3 100] [--seed 0] [--strict]

Reads SWEEP_DIR/results.csv, fits every objective present (Approach 2 and Approach 3; the MDM/AR
compute multiplier when both "mdm" and "ar" are there) and writes SWEEP_DIR/fits.json (every fitted
number with its bootstrap intervals), isoflop.png, frontier.png, loss_vs_compute.png, parametric.png
and report.md, then prints a short summary. A missing or degenerate results.csv stops it with one
line, `error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import warnings
from typing import Any

import numpy as np


from mdm.cli import run_cli
from scaling_laws import plots
from scaling_laws.fits import (
    LEVELS,
    PARAM_NAMES,
    Approach2Fit,
    Approach3Fit,
    FitError,
    IsoFlopWarning,
    MultiplierFit,
    RunResult,
    fit_approach2,
    fit_approach3,
    fit_multiplier,
    objectives_in,
    read_results,
    replicate_spread,
    runs_of,
)

FIGURES = {
    "isoflop": "isoflop.png",
    "frontier": "frontier.png",
    "loss_vs_compute": "loss_vs_compute.png",
    "parametric": "parametric.png",
}
INTERVAL_NOTE = (
    "Intervals are percentile bootstrap intervals (95 %: 2.5-97.5 %, 80 %: 10-90 %): runs are resampled with "
    "replacement within each budget and the whole fit is redone; they cover run-to-run noise given the sampled "
    "sizes and the form of the law, not the bias of the form itself."
)


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
# report.md


def _g(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _ci(pair, digits: int = 4) -> str:
    return f"[{_g(pair[0], digits)}, {_g(pair[1], digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _markdown(
    sweep_dir: pathlib.Path,
    rows: list[RunResult],
    fits2: dict[str, Approach2Fit],
    fits3: dict[str, Approach3Fit],
    multiplier: MultiplierFit | None,
    multiplier_error: str | None,
    flags: list[str],
) -> str:
    out = [f"# Scaling-law fits: {sweep_dir.name}", ""]
    counts = ", ".join(f"{o}: {len(runs_of(rows, o))}" for o in objectives_in(rows))
    out += [f"{len(rows)} finished runs ({counts}) from `results.csv`. Loss: final validation loss in nats/token.", ""]
    out += ["## Runs", ""]
    ordered = sorted(rows, key=lambda r: (objectives_in(rows).index(r.objective), r.budget, r.params, r.run))
    out += _table(
        [
            "objective",
            "run",
            "budget C",
            "N (non-emb.)",
            "N total",
            "tokens D",
            "FLOPs",
            "FLOPs/C",
            "loss",
            "steps",
            "batch",
            "seq",
        ],
        [
            [
                r.objective,
                r.run,
                _g(r.budget, 3),
                str(r.params),
                str(r.params_total),
                str(r.tokens),
                _g(r.flops, 4),
                f"{r.flops / r.budget:.3f}",
                f"{r.loss:.4f}",
                str(r.steps),
                str(r.batch_size),
                str(r.seq_len),
            ]
            for r in ordered
        ],
    )
    worst = max(abs(r.flops / r.budget - 1) for r in rows)
    out += [f"Largest deviation of a run's FLOPs from its budget: {worst:.2%} (the planner's rule is 1 %).", ""]
    spreads = {o: replicate_spread(runs_of(rows, o)) for o in objectives_in(rows)}
    if any(spreads.values()):
        out += [
            "## Seed spread",
            "",
            "Cells (objective, budget, N) trained with several seeds; all their runs enter the fits. Compare the pooled "
            "standard deviation with the depth of the IsoFLOP curves: where it is comparable, a budget's minimum is noise.",
            "",
        ]
        out += _table(
            ["objective", "replicated cells", "runs", "pooled std (nats/token)", "largest range"],
            [
                [o, str(sp.cells), str(sp.runs), f"{sp.pooled_std:.4f}", f"{sp.max_range:.4f}"]
                for o, sp in spreads.items()
                if sp is not None
            ],
        )
    if flags:
        out += ["## Flags", "", *(f"- {f}" for f in flags), ""]

    out += ["## Approach 2: IsoFLOP profiles", ""]
    out += [
        "Per budget, an ordinary least-squares parabola of loss in ln N; its vertex gives N_opt and L_opt, and "
        "D_opt = C / f(N_opt) with f = FLOPs per token interpolated in log-log between the budget's runs. Budgets "
        "whose parabola opens downward or whose vertex lies outside the sampled sizes are flagged and left out of "
        "the laws, which are least squares in log-log over the remaining budgets.",
        "",
    ]
    for objective, fit in fits2.items():
        out += [f"### {objective}", ""]
        out += _table(
            ["budget C", "runs", "sizes", "N range", "N_opt", "D_opt", "D_opt/N_opt", "L_opt", "status"],
            [
                [
                    _g(m.budget, 3),
                    str(m.num_runs),
                    str(m.num_sizes),
                    f"{_g(m.n_min, 3)} to {_g(m.n_max, 3)}",
                    _g(m.n_opt),
                    _g(m.d_opt),
                    _g(m.d_opt / m.n_opt, 3),
                    _g(m.loss_opt),
                    m.status,
                ]
                for m in fit.minima
            ],
        )
        out += _table(
            ["law", "coefficient k", "exponent", "95 % CI", "80 % CI"],
            [
                [
                    f"{name} = k C^e",
                    _g(law.law.coefficient),
                    _g(law.law.exponent),
                    _ci(law.exponent_interval(0.95)),
                    _ci(law.exponent_interval(0.80)),
                ]
                for name, law in fit.laws.items()
            ],
        )
        out += [
            f"Bootstrap: {fit.n_boot_valid} valid of {fit.n_boot_requested} replicates "
            f"(a valid replicate keeps >= 2 budgets; on average it dropped {_g(fit.mean_budgets_dropped, 3)}).",
            "",
        ]

    out += ["## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", ""]
    out += [
        "Summed Huber loss (delta 1e-3) of log residuals in the log-sum-exp form, L-BFGS from the best points of "
        "Chinchilla's 4,500-point initialisation grid. The frontier is the minimum of L(N, C / f(N)) under the runs' "
        "measured FLOPs per token f; the closed form assumes C = 6ND.",
        "",
    ]
    for objective, fit in fits3.items():
        out += [f"### {objective}", ""]
        out += _table(
            ["parameter", "estimate", "95 % CI", "80 % CI"],
            [
                [name, _g(v), _ci(fit.interval(name, 0.95)), _ci(fit.interval(name, 0.80))]
                for name, v in zip(PARAM_NAMES, fit.params)
            ],
        )
        closed = fit.closed_form()
        law = fit.frontier_law()
        out += _table(
            ["frontier", "N_opt exponent a", "95 % CI"],
            [
                ["C = 6ND (closed form, a = beta/(alpha+beta))", _g(closed["a"]), _ci(fit.closed_form_interval("a"))],
                ["measured FLOPs per token, at the sweep budgets", _g(law.exponent), _ci(fit.frontier_exponent_interval())],
            ],
        )
        out += _table(
            ["budget C", "N_opt", "D_opt", "L_opt", "at search bound"],
            [
                [_g(c, 3), _g(n), _g(d), _g(loss), str(bool(b))]
                for c, n, d, loss, b in zip(
                    fit.frontier_budgets_B, fit.frontier_n_B, fit.frontier_d_B, fit.frontier_loss_B, fit.frontier_at_bound_B
                )
            ],
        )
        out += [
            f"Huber loss {_g(fit.huber_loss)} over {fit.num_runs} runs; bootstrap: {fit.n_boot_valid} valid of "
            f"{fit.n_boot_requested} replicates.",
            "",
        ]

    out += ["## MDM/AR compute multiplier at equal loss", ""]
    if multiplier is not None:
        out += [
            "C_mdm(L) / C_ar(L) from the two Approach-2 L_opt laws: how many times the AR's compute the MDM needs to "
            f"reach the same loss. Closed form: multiplier(L) = {_g(math.exp(multiplier.log_prefactor))} * "
            f"L^{_g(multiplier.loss_power)}. Intervals pair the objectives' bootstrap replicates "
            f"({multiplier.n_pairs} pairs). Extrapolated: the loss lies outside the L_opt range one of the laws was fitted on.",
            "",
        ]
        out += _table(
            ["loss L", "AR compute", "multiplier", "95 % CI", "80 % CI", "extrapolated"],
            [
                [f"{loss:.4f}", _g(c, 3), _g(m, 4), _ci(ci95, 3), _ci(ci80, 3), "yes" if ex else "no"]
                for loss, c, m, ci95, ci80, ex in zip(
                    multiplier.losses_K,
                    multiplier.ar_compute_K,
                    multiplier.multiplier_K,
                    multiplier.interval(0.95),
                    multiplier.interval(0.80),
                    multiplier.extrapolated_K,
                )
            ],
        )
    else:
        out += [multiplier_error or "Needs both objectives, mdm and ar.", ""]

    out += ["## Figures", ""]
    titles = {
        "isoflop": "IsoFLOP profiles",
        "frontier": "Compute-optimal size and data",
        "loss_vs_compute": "Loss against compute",
        "parametric": "Approach 3 fit",
    }
    out += [f"- [{titles[k]}]({name})" for k, name in FIGURES.items()]
    out += ["", *(f"![{titles[k]}]({name})" for k, name in FIGURES.items()), ""]
    out += ["## About the intervals", "", INTERVAL_NOTE, ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The command


def build_report(
    sweep_dir: str | pathlib.Path, n_boot: int = 1000, n_boot3: int = 100, seed: int = 0, strict: bool = False
) -> dict:
    """Fits SWEEP_DIR/results.csv and writes fits.json, the PNGs and report.md; returns the fits.json
    content plus a "summary" list of printable lines and a "flags" list of IsoFLOP warnings."""
    sweep_dir = pathlib.Path(sweep_dir)
    rows = read_results(sweep_dir / "results.csv")
    if not rows:
        raise FitError(f"{sweep_dir / 'results.csv'} has no runs: finish some runs and re-run the collector")
    objectives = objectives_in(rows)
    by_objective = {o: runs_of(rows, o) for o in objectives}
    fits2, fits3 = {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IsoFlopWarning)
        for i, objective in enumerate(objectives):
            fits2[objective] = fit_approach2(by_objective[objective], n_boot=n_boot, seed=seed + 1000 * i, strict=strict)
            fits3[objective] = fit_approach3(by_objective[objective], n_boot=n_boot3, seed=seed + 1000 * i + 1)
    flags = [str(w.message) for w in caught if issubclass(w.category, IsoFlopWarning)]

    multiplier, multiplier_error = None, None
    if "mdm" in fits2 and "ar" in fits2:
        try:
            multiplier = fit_multiplier(fits2["mdm"], fits2["ar"])
        except FitError as e:
            multiplier_error = f"No multiplier: {e}."

    plots.plot_isoflop(sweep_dir / FIGURES["isoflop"], by_objective, fits2)
    plots.plot_frontier(sweep_dir / FIGURES["frontier"], fits2, fits3)
    plots.plot_loss_vs_compute(sweep_dir / FIGURES["loss_vs_compute"], by_objective, fits2, multiplier)
    plots.plot_parametric(sweep_dir / FIGURES["parametric"], by_objective, fits3)

    result = {
        "results_csv": str(sweep_dir / "results.csv"),
        "num_runs": len(rows),
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
                "replicates": dataclasses.asdict(sp) if (sp := replicate_spread(by_objective[o])) else None,
            }
            for o in objectives
        },
        "multiplier": multiplier_json(multiplier)
        if multiplier is not None
        else {"error": multiplier_error or "needs mdm and ar"},
        "flags": flags,
        "figures": list(FIGURES.values()),
    }
    (sweep_dir / "fits.json").write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")
    (sweep_dir / "report.md").write_text(_markdown(sweep_dir, rows, fits2, fits3, multiplier, multiplier_error, flags))

    summary = [f"scaling-law fits of {len(rows)} runs in {sweep_dir}"]
    for o in objectives:
        f2, f3 = fits2[o], fits3[o]
        laws = "  ".join(
            f"{name} ~ C^{law.law.exponent:.4g} {_ci(law.exponent_interval(), 3)}"
            for name, law in (("N_opt", f2.n_opt), ("D_opt", f2.d_opt), ("L_opt", f2.loss_opt))
        )
        summary.append(f"{o} approach 2: {laws} ({f2.n_boot_valid}/{f2.n_boot_requested} bootstrap replicates, 95 % CI)")
        e, big_a, big_b, alpha, beta = f3.params
        summary.append(
            f"{o} approach 3: E={e:.4g} A={big_a:.4g} B={big_b:.4g} alpha={alpha:.4g} beta={beta:.4g}; "
            f"N_opt ~ C^{f3.frontier_law().exponent:.4g} at the sweep budgets"
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
    return {**result, "summary": summary}


def _run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m scaling_laws.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="directory holding results.csv; outputs are written beside it")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Approach-2 bootstrap replicates (default 1000)")
    parser.add_argument("--bootstrap3", type=int, default=100, help="Approach-3 bootstrap replicates (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--strict", action="store_true", help="stop on a concave or clipped IsoFLOP budget instead of flagging it"
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 0 or args.bootstrap3 < 0:
        raise FitError("--bootstrap and --bootstrap3 must be >= 0")
    report = build_report(args.sweep_dir, n_boot=args.bootstrap, n_boot3=args.bootstrap3, seed=args.seed, strict=args.strict)
    for flag in report["flags"]:
        print(f"warning: {flag}", file=sys.stderr)
    print("\n".join(report["summary"]))


def main(argv: list[str]) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
