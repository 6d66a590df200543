"""report.md of a fitted sweep, one section builder each: the runs, their seed spread, the IsoFLOP
flags, the Approach-2 and Approach-3 tables, the MDM/AR multiplier, the figures and what the
bootstrap intervals mean.
"""

from __future__ import annotations

import math
import pathlib

from scaling_laws.approach2_isoflop import Approach2Fit
from scaling_laws.approach3_parametric import PARAM_NAMES, Approach3Fit
from scaling_laws.multiplier import MultiplierFit
from scaling_laws.results import RunResult, objectives_in, replicate_spread, runs_of

INTERVAL_NOTE = (
    "Intervals are percentile bootstrap intervals (95 %: 2.5-97.5 %, 80 %: 10-90 %): runs are resampled with "
    "replacement within each budget and the whole fit is redone; they cover run-to-run noise given the sampled "
    "sizes and the form of the law, not the bias of the form itself."
)


def fmt_num(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def fmt_ci(pair, digits: int = 4) -> str:
    return f"[{fmt_num(pair[0], digits)}, {fmt_num(pair[1], digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


_RUN_HEADER = [
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
]


def _runs_section(rows: list[RunResult]) -> list[str]:
    """The title, the table of every run and the largest FLOPs deviation from a budget."""
    counts = ", ".join(f"{o}: {len(runs_of(rows, o))}" for o in objectives_in(rows))
    out = [f"{len(rows)} finished runs ({counts}) from `results.csv`. Loss: final validation loss in nats/token.", ""]
    out += ["## Runs", ""]
    ordered = sorted(rows, key=lambda r: (objectives_in(rows).index(r.objective), r.budget, r.params, r.run))
    out += _table(
        _RUN_HEADER,
        [
            [
                r.objective,
                r.run,
                fmt_num(r.budget, 3),
                str(r.params),
                str(r.params_total),
                str(r.tokens),
                fmt_num(r.flops, 4),
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
    return out + [f"Largest deviation of a run's FLOPs from its budget: {worst:.2%} (the planner's rule is 1 %).", ""]


def _seed_spread_section(rows: list[RunResult]) -> list[str]:
    """The replicate noise per objective; empty when no cell was trained with several seeds."""
    spreads = {o: replicate_spread(runs_of(rows, o)) for o in objectives_in(rows)}
    if not any(spreads.values()):
        return []
    out = [
        "## Seed spread",
        "",
        "Cells (objective, budget, N) trained with several seeds; all their runs enter the fits. Compare the pooled "
        "standard deviation with the depth of the IsoFLOP curves: where it is comparable, a budget's minimum is noise.",
        "",
    ]
    return out + _table(
        ["objective", "replicated cells", "runs", "pooled std (nats/token)", "largest range"],
        [
            [o, str(sp.cells), str(sp.runs), f"{sp.pooled_std:.4f}", f"{sp.max_range:.4f}"]
            for o, sp in spreads.items()
            if sp is not None
        ],
    )


def _approach2_section(fits2: dict[str, Approach2Fit]) -> list[str]:
    """Per objective: the IsoFLOP minima of every budget, the three compute laws and the bootstrap count."""
    out = ["## Approach 2: IsoFLOP profiles", ""]
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
                    fmt_num(m.budget, 3),
                    str(m.num_runs),
                    str(m.num_sizes),
                    f"{fmt_num(m.n_min, 3)} to {fmt_num(m.n_max, 3)}",
                    fmt_num(m.n_opt),
                    fmt_num(m.d_opt),
                    fmt_num(m.d_opt / m.n_opt, 3),
                    fmt_num(m.loss_opt),
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
                    fmt_num(law.law.coefficient),
                    fmt_num(law.law.exponent),
                    fmt_ci(law.exponent_interval(0.95)),
                    fmt_ci(law.exponent_interval(0.80)),
                ]
                for name, law in fit.laws.items()
            ],
        )
        out += [
            f"Bootstrap: {fit.n_boot_valid} valid of {fit.n_boot_requested} replicates "
            f"(a valid replicate keeps >= 2 budgets; on average it dropped {fmt_num(fit.mean_budgets_dropped, 3)}).",
            "",
        ]
    return out


def _approach3_section(fits3: dict[str, Approach3Fit]) -> list[str]:
    """Per objective: the parameters of L(N, D), the frontier exponents and the frontier per budget."""
    out = ["## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", ""]
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
                [name, fmt_num(v), fmt_ci(fit.interval(name, 0.95)), fmt_ci(fit.interval(name, 0.80))]
                for name, v in zip(PARAM_NAMES, fit.params)
            ],
        )
        closed = fit.closed_form()
        law = fit.frontier_law()
        out += _table(
            ["frontier", "N_opt exponent a", "95 % CI"],
            [
                ["C = 6ND (closed form, a = beta/(alpha+beta))", fmt_num(closed["a"]), fmt_ci(fit.closed_form_interval("a"))],
                [
                    "measured FLOPs per token, at the sweep budgets",
                    fmt_num(law.exponent),
                    fmt_ci(fit.frontier_exponent_interval()),
                ],
            ],
        )
        out += _table(
            ["budget C", "N_opt", "D_opt", "L_opt", "at search bound"],
            [
                [fmt_num(c, 3), fmt_num(n), fmt_num(d), fmt_num(loss), str(bool(b))]
                for c, n, d, loss, b in zip(
                    fit.frontier_budgets_B, fit.frontier_n_B, fit.frontier_d_B, fit.frontier_loss_B, fit.frontier_at_bound_B
                )
            ],
        )
        out += [
            f"Huber loss {fmt_num(fit.huber_loss)} over {fit.num_runs} runs; bootstrap: {fit.n_boot_valid} valid of "
            f"{fit.n_boot_requested} replicates.",
            "",
        ]
    return out


def _multiplier_section(multiplier: MultiplierFit | None, multiplier_error: str | None) -> list[str]:
    """The MDM/AR compute multiplier per loss, or why there is none."""
    out = ["## MDM/AR compute multiplier at equal loss", ""]
    if multiplier is None:
        return out + [multiplier_error or "Needs both objectives, mdm and ar.", ""]
    out += [
        "C_mdm(L) / C_ar(L) from the two Approach-2 L_opt laws: how many times the AR's compute the MDM needs to "
        f"reach the same loss. Closed form: multiplier(L) = {fmt_num(math.exp(multiplier.log_prefactor))} * "
        f"L^{fmt_num(multiplier.loss_power)}. Intervals pair the objectives' bootstrap replicates "
        f"({multiplier.n_pairs} pairs). Extrapolated: the loss lies outside the L_opt range one of the laws was fitted on.",
        "",
    ]
    return out + _table(
        ["loss L", "AR compute", "multiplier", "95 % CI", "80 % CI", "extrapolated"],
        [
            [f"{loss:.4f}", fmt_num(c, 3), fmt_num(m, 4), fmt_ci(ci95, 3), fmt_ci(ci80, 3), "yes" if ex else "no"]
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


def _figures_section(figures: dict[str, str]) -> list[str]:
    """Links to the figures, the figures themselves, and what the intervals mean."""
    titles = {
        "isoflop": "IsoFLOP profiles",
        "frontier": "Compute-optimal size and data",
        "loss_vs_compute": "Loss against compute",
        "parametric": "Approach 3 fit",
    }
    out = ["## Figures", ""]
    out += [f"- [{titles[k]}]({name})" for k, name in figures.items()]
    out += ["", *(f"![{titles[k]}]({name})" for k, name in figures.items()), ""]
    return out + ["## About the intervals", "", INTERVAL_NOTE, ""]


def markdown(
    sweep_dir: pathlib.Path,
    rows: list[RunResult],
    fits2: dict[str, Approach2Fit],
    fits3: dict[str, Approach3Fit],
    multiplier: MultiplierFit | None,
    multiplier_error: str | None,
    flags: list[str],
    figures: dict[str, str],
) -> str:
    """report.md: the runs, the seed spread, the IsoFLOP flags, both approaches, the multiplier, and links to
    `figures` ({key: file name}; keys isoflop, frontier, loss_vs_compute, parametric)."""
    out = [f"# Scaling-law fits: {sweep_dir.name}", ""]
    out += _runs_section(rows)
    out += _seed_spread_section(rows)
    if flags:
        out += ["## Flags", "", *(f"- {f}" for f in flags), ""]
    out += _approach2_section(fits2)
    out += _approach3_section(fits3)
    out += _multiplier_section(multiplier, multiplier_error)
    out += _figures_section(figures)
    return "\n".join(out)
