"""Figures: training curves of runs (metrics.jsonl) and the unmasking order of a sample.

    python -m mdm.plot --workdirs WORKDIR[,WORKDIR...] [--out DIR] [--x step|tokens] [--labels A,B,...]

writes curves.png (every panel) and one PNG per panel (train_loss, eval_loss, bits, lr,
tokens_per_s, grad_norm) with all runs on the same axes, e.g. an MDM and its AR twin. Each
run is labelled with its workdir's name, objective and parameter count (read from its newest
checkpoint's saved config and the step-0 record); --labels gives one label per workdir instead.
--out defaults to WORKDIR/plots for one run, else ./plots. Figures are matplotlib `Figure`s made
without pyplot, so no display or backend is needed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mdm import runs
from mdm.cli import parse_flags, run_cli
from mdm.errors import ConfigError, DataError
from mdm.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class Curve:
    """One panel: metric keys drawn as solid, dashed (EMA), ... lines; `band` adds +-stderr."""

    name: str
    title: str
    ylabel: str
    keys: tuple[str, ...]
    band: str | None = None
    smooth: bool = False
    log_y: bool = False


CURVES = (
    Curve("train_loss", "training loss (MDM: NELBO estimate, AR: NLL)", "nats/token", ("train/loss",), smooth=True),
    Curve(
        "eval_loss",
        "validation NLL bound (solid: params, dashed: EMA)",
        "nats/token",
        ("eval/nats_per_token", "eval_ema/nats_per_token"),
        band="eval/nats_per_token_stderr",
    ),
    Curve("bits", "validation bits/byte (dashed: EMA)", "bits/byte", ("eval/bits_per_byte", "eval_ema/bits_per_byte")),
    Curve("lr", "learning rate", "lr", ("train/lr",)),
    Curve("tokens_per_s", "training throughput", "tokens/s", ("train/tokens_per_s",)),
    Curve("grad_norm", "gradient norm (before clipping)", "global norm", ("train/grad_norm",), smooth=True, log_y=True),
)
# Without bytes (the synthetic source), the bits panel shows bits per token.
_BITS_PER_TOKEN = Curve(
    "bits", "validation bits/token (dashed: EMA)", "bits/token", ("eval/bits_per_token", "eval_ema/bits_per_token")
)
_STYLES = ("-", "--", ":")


@dataclasses.dataclass
class Run:
    """A workdir's metric records, and what its saved config says (None when it has no checkpoint)."""

    workdir: pathlib.Path
    label: str
    records: list[dict]
    objective: str | None = None
    tokens_per_step: int | None = None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps int64[n], values float64[n]) of the records holding `key`, in file order."""
        rows = [
            (r["step"], r[key]) for r in self.records if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
        ]
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        steps, values = zip(*rows)
        return np.asarray(steps, np.int64), np.asarray(values, np.float64)

    def has(self, key: str) -> bool:
        return any(key in r for r in self.records)


def load_run(workdir: str | pathlib.Path, label: str | None = None) -> Run:
    """Reads `workdir/metrics.jsonl` (and the saved config, if any) into a Run."""
    workdir = pathlib.Path(workdir)
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"no metrics.jsonl in {workdir}; pass a run's workdir (python train.py --workdir {workdir})")
    records = read_metrics(path)
    if not records:
        raise DataError(f"{path} holds no records yet; train for at least one log step (train.log_every)")
    config = runs.saved_config(workdir)
    objective, tokens_per_step = None, None
    if config is not None:
        objective = config.get("objective")
        try:
            tokens_per_step = int(config["train"]["batch_size"]) * int(config["data"]["seq_len"])
        except (KeyError, TypeError, ValueError):
            tokens_per_step = None
    if label is None:
        params = next((r["params"] for r in records if "params" in r), None)
        details = [d for d in (objective, _count(params)) if d]
        label = workdir.name + (f" ({', '.join(details)})" if details else "")
    return Run(workdir, label, records, objective, tokens_per_step)


def load_runs(workdirs: Sequence[str | pathlib.Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Runs for `workdirs`, labelled by `labels` (one per workdir) or by their names."""
    if not workdirs:
        raise ConfigError("give at least one workdir holding a metrics.jsonl")
    if labels is not None and len(labels) != len(workdirs):
        raise ConfigError(f"{len(labels)} labels for {len(workdirs)} workdirs; give one label per workdir")
    return [load_run(w, None if labels is None else labels[i]) for i, w in enumerate(workdirs)]


def _count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit} params"
    return f"{int(n)} params"


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def _x(run: Run, steps: np.ndarray, x: str) -> np.ndarray:
    if x == "step":
        return steps
    if run.tokens_per_step is None:
        raise DataError(
            f"--x tokens needs the batch size and seq_len of {run.workdir}, but it has no saved checkpoint; use --x step"
        )
    return steps * run.tokens_per_step


def panels_for(runs: Sequence[Run]) -> list[Curve]:
    """The curves that some run has data for (bits per byte, else per token)."""
    out = []
    for curve in CURVES:
        if curve.name == "bits" and not any(r.has(curve.keys[0]) for r in runs):
            curve = _BITS_PER_TOKEN
        if any(r.has(curve.keys[0]) for r in runs):
            out.append(curve)
    return out


def draw_curve(ax, runs: Sequence[Run], curve: Curve, x: str = "step") -> None:
    """Draws `curve` for every run on `ax` (one colour per run; one line style per key)."""
    colours = colormaps["tab10"]
    for i, run in enumerate(runs):
        colour = colours(i % 10)
        for j, key in enumerate(curve.keys):
            steps, values = run.series(key)
            if not len(steps):
                continue
            xs = _x(run, steps, x)
            label = run.label if j == 0 else None
            if curve.smooth and len(values) > 20:
                ax.plot(xs, values, color=colour, alpha=0.25, linewidth=0.8)
                values = _moving_average(values, max(len(values) // 25, 2))
            ax.plot(
                xs,
                values,
                _STYLES[j % len(_STYLES)],
                color=colour,
                label=label,
                linewidth=1.5,
                marker="o" if len(xs) < 12 else None,
            )
            if curve.band and j == 0:
                b_steps, err = run.series(curve.band)
                if len(b_steps) == len(steps) and np.all(b_steps == steps):
                    ax.fill_between(xs, values - err, values + err, color=colour, alpha=0.2, linewidth=0)
    ax.set_title(curve.title, fontsize=10)
    ax.set_xlabel("training tokens" if x == "tokens" else "step")
    ax.set_ylabel(curve.ylabel)
    if curve.log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def curve_figure(runs: Sequence[Run], curve: Curve, x: str = "step") -> Figure:
    """One panel as its own figure."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    draw_curve(fig.add_subplot(), runs, curve, x)
    return fig


def curves_figure(runs: Sequence[Run], x: str = "step") -> Figure:
    """Every panel with data, in a grid of up to three columns."""
    panels = panels_for(runs)
    if not panels:
        raise DataError("no run has training or evaluation metrics yet; train for at least one log step")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    for i, curve in enumerate(panels):
        draw_curve(fig.add_subplot(rows, cols, i + 1), runs, curve, x)
    return fig


def write_curves(runs: Sequence[Run], out_dir: str | pathlib.Path, x: str = "step", dpi: int = 110) -> list[pathlib.Path]:
    """Writes curves.png and one PNG per panel into `out_dir`; returns their paths."""
    if x not in ("step", "tokens"):
        raise ConfigError(f"--x {x}: choose step or tokens")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a directory for the PNGs, e.g. --out {out_dir.parent / 'plots'}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or e
        raise ConfigError(f"--out {out_dir}: cannot create the directory ({reason}); give a writable directory") from None
    paths = [out_dir / "curves.png"]
    curves_figure(runs, x).savefig(paths[0], dpi=dpi)
    for curve in panels_for(runs):
        paths.append(out_dir / f"{curve.name}.png")
        curve_figure(runs, curve, x).savefig(paths[-1], dpi=dpi)
    return paths


# ----------------------------------------------------------------------------------------------
# The unmasking order (mdm.unmasking.Unmasking)

_VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def token_glyph(tokenizer, token: int) -> str:
    """A short visible rendering of one token (whitespace as ·, ↵, →; undecodable as ?; at most 3 characters)."""
    text = tokenizer.decode(np.asarray([token]))
    text = "".join(_VISIBLE.get(c, c if c.isprintable() and c != "\ufffd" else "?") for c in text)
    return (text or "?")[:3]


def unmasking_figure(unmasking, tokenizer, row: int = 0, max_rows: int = 16, width: int | None = None) -> Figure:
    """Three views of a recorded sample (`mdm.unmasking.Unmasking`):

    top left: heat map of the call at which each position was revealed (rows = samples, grey =
    fixed by the canvas); top right: fraction revealed against calls; bottom: sample `row` laid
    out `width` tokens per line, each cell coloured by its reveal call and showing its token.
    """
    steps_BxL = unmasking.reveal_step_BxL
    batch, length = steps_BxL.shape
    if not 0 <= row < batch:
        raise ConfigError(f"row={row} is outside the recorded batch of {batch} samples")
    width = width or min(length, 32)
    lines = -(-length // width)
    cmap = colormaps["viridis"].with_extremes(bad="0.8")
    vmax = max(unmasking.nfe - 1, 1)
    fig = Figure(figsize=(12, 3.2 + 0.42 * lines), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 1), height_ratios=(1.0, 0.12 + 0.13 * lines))

    ax = fig.add_subplot(grid[0, 0])
    shown = np.ma.masked_less(steps_BxL[:max_rows].astype(float), 0)
    image = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("position")
    ax.set_ylabel("sample")
    ax.set_title(f"denoiser call that revealed each position ({unmasking.nfe} calls)", fontsize=10)
    fig.colorbar(image, ax=ax, label="call", fraction=0.04)

    ax = fig.add_subplot(grid[0, 1])
    frac = unmasking.revealed_fraction_SxB()
    for b in range(min(batch, max_rows)):
        ax.plot(np.arange(frac.shape[0]), frac[:, b], color="C0", alpha=0.4, linewidth=1)
    ax.set_xlabel("call")
    ax.set_ylabel("fraction revealed")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("progress per sample", fontsize=10)

    ax = fig.add_subplot(grid[1, :])
    cells = np.full((lines, width), np.nan)
    cells.flat[:length] = np.where(steps_BxL[row] >= 0, steps_BxL[row], np.nan)
    ax.imshow(np.ma.masked_invalid(cells), aspect="auto", cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    tokens = unmasking.tokens_BxL[row]
    for i in range(length):
        r, c = divmod(i, width)
        step = steps_BxL[row, i]
        dark = step >= 0 and step < 0.6 * vmax  # viridis is dark at the low end
        ax.text(
            c,
            r,
            token_glyph(tokenizer, int(tokens[i])),
            ha="center",
            va="center",
            fontsize=8,
            family="monospace",
            color="white" if dark else "black",
        )
    ax.set_xticks([])
    ax.set_yticks(range(lines), [str(r * width) for r in range(lines)], fontsize=7)
    ax.set_title(f"sample {row}: each token coloured by the call that revealed it (grey: given)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# The command


FLAGS = {"workdirs": "", "out": "", "x": "step", "labels": ""}


def _run(argv: list[str]) -> None:
    flags, _, _ = parse_flags(argv, FLAGS, allow_config=False)
    workdirs = [w for w in flags["workdirs"].split(",") if w]
    if not workdirs:
        raise ConfigError("give --workdirs DIR[,DIR...]: run directories holding metrics.jsonl")
    if flags["x"] not in ("step", "tokens"):
        raise ConfigError(f"--x {flags['x']}: choose step or tokens")
    labels = flags["labels"].split(",") if flags["labels"] else None
    runs = load_runs(workdirs, labels)
    out = (
        pathlib.Path(flags["out"])
        if flags["out"]
        else (pathlib.Path(workdirs[0]) / "plots" if len(runs) == 1 else pathlib.Path("plots"))
    )
    for path in write_curves(runs, out, flags["x"]):
        print(path)


def main(argv: list[str]) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
