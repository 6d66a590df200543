"""The IsoFLOP planner: budgets x ladder sizes -> one run spec each (steps, batch, lr, warmup).

For budget C and a size with F FLOPs per token (`mdm.flops`, under the preset's convention), a run
of `steps` steps at batch B and length S trains D = steps B S tokens and spends F D FLOPs, so

    steps = round(C / (F B S)),   |F D - C| / C <= 0.5 / steps

which is <= 0.5 % at the presets' >= 100 steps. A cell with fewer than `min_steps` steps halves its
batch (not below `min_batch`) until it has them; if it still has too few (or not even one) the
planner refuses it with one line naming the budget, the size and the fix. MDM and AR runs of a
cell get the same steps, batch and recipe: one protocol for both.

Learning rate and warm-up per size are the preset's rules (see `scaling_laws/presets.py`):
lr = lr_ref (width_ref / d_model)^exponent, warmup = max(warmup_min, fraction x steps) <= steps / 2,
cosine decay over the run's own steps.
"""

from __future__ import annotations

import dataclasses
import math

from mdm.errors import ConfigError
from mdm.flops import nonembedding_params, smdm_flops_per_token, total_params, train_flops_per_token
from scaling_laws.ladder import Shape, get_shape
from scaling_laws.presets import Grid, Preset

OBJECTIVES = ("mdm", "ar")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One planned run: what to train, for how long, and what it costs."""

    name: str  # '<objective>_C<budget>_<size>', also the run's workdir name
    objective: str  # 'mdm' or 'ar'
    size: str  # ladder name
    budget: float  # planned compute C (FLOPs), shared by the runs of one IsoFLOP curve
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    params: int  # N, non-embedding
    params_total: int
    convention: str  # 'full' or '6n': how `flops_per_token` counts
    flops_per_token: float  # under `convention`
    flops_per_token_full: float  # 6 N_mm + 12 n_layers L d
    flops_per_token_6n: float  # 6 N_nonemb
    base_config: str  # config file relative to the repository root
    overrides: tuple[tuple[str, str], ...]  # ('section.key', value as typed on the command line)
    seed: int = 0  # the config's `seed`: replicates of one cell differ only in it

    @property
    def tokens(self) -> int:
        """D: tokens the run trains on (every position of every window counts)."""
        return self.steps * self.batch_size * self.seq_len

    @property
    def flops(self) -> float:
        """Planned compute F D under the preset's convention."""
        return self.flops_per_token * self.tokens

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = [list(kv) for kv in self.overrides]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["overrides"] = tuple((str(k), str(v)) for k, v in d["overrides"])
        return cls(**d)


def budget_tag(budget: float) -> str:
    """A short name for a budget: 2e11 -> '2e11', 1.5e12 -> '1.5e12'."""
    mantissa, exponent = f"{budget:.3g}".split("e") if "e" in f"{budget:.3g}" else (f"{budget:.3g}", "0")
    return f"{mantissa}e{int(exponent)}"


def peak_lr(preset: Preset, shape: Shape) -> float:
    """lr_ref (width_ref / d_model)^exponent."""
    return preset.lr * (preset.lr_width / shape.d_model) ** preset.lr_exponent


def warmup_steps(preset: Preset, steps: int) -> int:
    """max(warmup_min, round(fraction x steps)), capped at half the steps."""
    return min(max(preset.warmup_min, round(preset.warmup_fraction * steps)), steps // 2)


def format_value(value: object) -> str:
    """A config value as train.py's `--config.key=value` parser reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _steps_and_batch(preset: Preset, step_flops_per_sample: float, budget: float, size: str) -> tuple[int, int]:
    batch = preset.batch_size
    steps = round(budget / (step_flops_per_sample * batch))
    while steps < preset.min_steps and preset.min_batch and batch // 2 >= preset.min_batch and batch % 2 == 0:
        batch //= 2
        steps = round(budget / (step_flops_per_sample * batch))
    one_step = step_flops_per_sample * batch
    if steps < 1:
        raise ConfigError(
            f"budget {budget:.3g} FLOPs is too small for even one step of size {size} (one step of batch {batch} x "
            f"{preset.seq_len} costs {one_step:.3g} FLOPs); raise the budget or pick a smaller size"
        )
    if steps < preset.min_steps:
        raise ConfigError(
            f"budget {budget:.3g} FLOPs buys only {steps} steps of size {size} at batch {batch} x {preset.seq_len} "
            f"(preset {preset.name!r} needs >= {preset.min_steps}); raise the budget or drop the size"
        )
    return steps, batch


def plan_run(
    preset: Preset,
    objective: str,
    size: str,
    budget: float,
    vocab_size: int,
    *,
    tie_embeddings: bool = True,
    time_conditioning: bool = False,
    convention: str | None = None,
    seed: int = 0,
) -> RunSpec:
    """The run of `objective` at ladder `size` that spends `budget` FLOPs under the preset's rules, with `seed`."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r}: choose from {', '.join(OBJECTIVES)}")
    if not (budget > 0 and math.isfinite(budget)):
        raise ConfigError(f"budget {budget!r} must be a positive number of FLOPs, e.g. 1e12")
    convention = convention or preset.convention
    shape = get_shape(size)
    cfg = shape.config(vocab_size, causal=objective == "ar", tie_embeddings=tie_embeddings, time_conditioning=time_conditioning)
    full = train_flops_per_token(cfg, preset.seq_len)
    six_n = smdm_flops_per_token(cfg)
    if convention not in ("full", "6n"):
        raise ConfigError(f"FLOP convention {convention!r}: choose 'full' or '6n'")
    per_token = full if convention == "full" else six_n
    steps, batch = _steps_and_batch(preset, per_token * preset.seq_len, budget, size)
    lr = peak_lr(preset, shape)
    warmup = warmup_steps(preset, steps)
    planned = {
        **shape.overrides(),
        "objective": objective,
        "data.seq_len": preset.seq_len,
        "train.batch_size": batch,
        "train.num_steps": steps,
        "optim.lr": lr,
        "optim.warmup_steps": warmup,
        "train.eval_every": steps,
        "train.checkpoint_every": max(1, math.ceil(steps / preset.checkpoints_per_run)),
        "train.log_every": max(1, steps // preset.log_points),
        "seed": seed,
    }
    overrides = dict(preset.overrides)
    overrides.update(planned)
    return RunSpec(
        name=f"{objective}_C{budget_tag(budget)}_{size}" + (f"_s{seed}" if seed else ""),
        objective=objective,
        size=size,
        budget=float(budget),
        steps=steps,
        batch_size=batch,
        seq_len=preset.seq_len,
        lr=lr,
        warmup_steps=warmup,
        params=nonembedding_params(cfg),
        params_total=total_params(cfg),
        convention=convention,
        flops_per_token=per_token,
        flops_per_token_full=full,
        flops_per_token_6n=six_n,
        base_config=preset.base_config(objective),
        overrides=tuple((k, format_value(v)) for k, v in overrides.items()),
        seed=seed,
    )


def plan_sweep(
    preset: Preset,
    vocab_size: int,
    objectives: tuple[str, ...] = OBJECTIVES,
    *,
    budgets: tuple[float, ...] | None = None,
    sizes: tuple[str, ...] | None = None,
    tie_embeddings: bool = True,
    time_conditioning: bool = False,
    convention: str | None = None,
    seeds: tuple[int, ...] | None = None,
) -> list[RunSpec]:
    """Every run of the grid (each objective's own, `Preset.grid_for`), objective-major, then by budget,
    size and seed.

    `budgets` / `sizes` replace the preset's grid: given budgets use the preset's sizes (all of
    them) unless `sizes` is given too; given sizes alone apply to every preset budget. `seeds`
    replaces the preset's seeds.
    """
    if not objectives:
        raise ConfigError("no objectives to plan; pass --objectives mdm,ar")

    def grid(objective: str) -> Grid:
        preset_grid = preset.grid_for(objective)
        if not (budgets or sizes):
            return preset_grid
        all_sizes = tuple(dict.fromkeys(s for _, ss in preset_grid for s in ss))
        return tuple((c, tuple(sizes) if sizes else all_sizes) for c in (budgets or [c for c, _ in preset_grid]))

    runs = [
        plan_run(
            preset,
            objective,
            size,
            budget,
            vocab_size,
            tie_embeddings=tie_embeddings,
            time_conditioning=time_conditioning,
            convention=convention,
            seed=seed,
        )
        for objective in objectives
        for budget, budget_sizes in grid(objective)
        for size in budget_sizes
        for seed in (preset.seeds if seeds is None else seeds)
    ]
    if not runs:
        raise ConfigError("the grid holds no runs; give at least one budget, size and seed")
    if any(seed < 0 for seed in (preset.seeds if seeds is None else seeds)):
        raise ConfigError("seeds must be non-negative integers, e.g. --seeds 0,1")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("the grid names a run twice (a repeated budget, size, seed or objective); list each once")
    return runs
