"""A scaling-law sweep summarised for the notebooks: fitted laws as text lines and the figures."""

from __future__ import annotations

import pathlib

from mdm.errors import ConfigError


def _ci(law: dict, level: str = "ci95") -> str:
    lo, hi = (law.get("exponent_intervals", {}).get(level) or [None, None])[:2]
    return "" if lo is None or hi is None else f" [{lo:.3g}, {hi:.3g}]"


def summarize_fits(fits: dict) -> list[str]:
    """Printable lines from a sweep's fits.json: the Approach-2 laws, the Approach-3 fit and the multiplier."""
    lines = [f"{fits.get('num_runs', '?')} runs from {fits.get('results_csv', 'results.csv')}"]
    for objective, result in fits.get("objectives", {}).items():
        laws = result.get("approach2", {}).get("laws", {})
        text = ", ".join(
            f"{name} ~ C^{law['exponent']:.3g}{_ci(law)}" for name, law in laws.items() if law.get("exponent") is not None
        )
        lines.append(f"{objective} approach 2 (95 % CI): {text or 'no law (too few valid budgets)'}")
        params = result.get("approach3", {}).get("params", {})
        if params:
            lines.append(
                f"{objective} approach 3: L(N, D) = " + ", ".join(f"{k}={v:.4g}" for k, v in params.items() if v is not None)
            )
    multiplier = fits.get("multiplier", {})
    if "multiplier" in multiplier and multiplier["multiplier"]:
        k = len(multiplier["multiplier"]) // 2
        lines.append(
            f"MDM/AR compute multiplier at equal loss L={multiplier['losses'][k]:.4f}: x{multiplier['multiplier'][k]:.3g}"
        )
    elif "error" in multiplier:
        lines.append(f"multiplier: {multiplier['error']}")
    return lines


def sweep_report(sweep_dir: str | pathlib.Path, *, bootstrap: int = 200, bootstrap3: int = 20, seed: int = 0):
    """(summary lines, figure paths) of a scaling-law sweep; runs `scaling_laws.report` first when
    fits.json is missing or older than results.csv."""
    import json

    sweep_dir = pathlib.Path(sweep_dir)
    from scaling_laws import report
    results, fits_path = sweep_dir / "results.csv", sweep_dir / "fits.json"
    if not results.is_file() and not fits_path.is_file():
        raise ConfigError(f"{sweep_dir} holds no results.csv; set SWEEP_DIR to a sweep directory (python -m scaling_laws.sweep)")
    if not fits_path.is_file() or (results.is_file() and results.stat().st_mtime > fits_path.stat().st_mtime):
        report.build_report(sweep_dir, n_boot=bootstrap, n_boot3=bootstrap3, seed=seed)  # a FitError is an MdmError
    fits = json.loads(fits_path.read_text())
    figures = [sweep_dir / name for name in fits.get("figures", report.FIGURES.values()) if (sweep_dir / name).is_file()]
    return summarize_fits(fits), figures
