"""Sweep presets: the IsoFLOP grid (budgets x ladder sizes), batch, length and per-run recipe.

- `smoke`: CPU, 3 budgets x 5 sizes x {MDM, AR} on the embedded byte corpus, batch 8 x 128; AR has
  its own grid, one to two rungs above MDM's, so that both objectives' optima are bracketed.
- `mini`: one budget, one size, a handful of steps: the end-to-end test of the tooling.
- `gpu_small`: 4 budgets (3e16-1e18) x 4-5 sizes (2M-142M) for one accelerator; give it a real
  corpus and tokenizer (`--config.data.source=... --config.data.tokenizer=...`).
- `smdm`: SMDM's budgets (6e18-1e20 under C = 6 N D), shapes and recipe (batch 256 x 2048, peak lr
  2e-4, warmup max(100, 1 %), AdamW (0.9, 0.95), wd 0.1), 8 sizes per budget, for a cluster.

Recipe rules, applied per run by the planner: every cell once per seed in `seeds` (runs of seeds
other than 0 are named `..._s<seed>`); peak lr = `lr * (lr_width / d_model) ** lr_exponent`, cosine
to `optim.min_lr_ratio` x peak over the run's own steps; warmup = max(`warmup_min`,
`warmup_fraction` x steps), at most half the steps. Why the grids are where they are, and how long
they take: docs/scaling_laws.md.
"""

from __future__ import annotations

import dataclasses

from mdm.errors import ConfigError

Grid = tuple[tuple[float, tuple[str, ...]], ...]  # (budget C in FLOPs, ladder sizes of its IsoFLOP curve)


@dataclasses.dataclass(frozen=True)
class Preset:
    """An IsoFLOP grid and the recipe every run of it follows."""

    name: str
    description: str
    grid: Grid
    batch_size: int
    seq_len: int
    convention: str = "full"  # FLOPs per token: 'full' (6 N_mm + attention) or '6n' (SMDM's 6 N_nonemb)
    min_steps: int = 100  # fewer steps than this: lower the batch (down to min_batch), else refuse the cell
    min_batch: int = 0  # 0: the batch stays fixed
    lr: float = 2e-3
    lr_width: int = 128
    lr_exponent: float = 0.5
    warmup_fraction: float = 0.05
    warmup_min: int = 10
    checkpoints_per_run: int = 4  # checkpoint cadence: a killed run loses at most 1/4 of its steps
    log_points: int = 20  # train-loss records per run
    overrides: tuple[tuple[str, object], ...] = ()  # config keys set for every run (besides the planned ones)
    base_configs: tuple[tuple[str, str], ...] = (("mdm", "configs/default.py"), ("ar", "configs/ar.py"))
    objective_grids: tuple[tuple[str, Grid], ...] = ()  # an objective's own grid, in place of `grid` for its runs
    seeds: tuple[int, ...] = (0,)  # every cell is trained once per seed (model init, data order, masks)

    def grid_for(self, objective: str) -> Grid:
        """The IsoFLOP grid of one objective's runs: its own if the preset gives one, else `grid`."""
        return dict(self.objective_grids).get(objective, self.grid)

    def base_config(self, objective: str) -> str:
        """The config file (relative to the repository root) an objective's runs start from."""
        configs = dict(self.base_configs)
        if objective not in configs:
            raise ConfigError(f"preset {self.name!r} has no base config for objective {objective!r}; use {', '.join(configs)}")
        return configs[objective]


_CPU_RECIPE = (
    ("data.tokenizer", "bytes"),  # the byte corpus the ladder and its V = 259 were made for
    ("optim.b1", 0.9),
    ("optim.b2", 0.95),
    ("optim.weight_decay", 0.1),
    ("optim.grad_clip", 1.0),
    ("optim.min_lr_ratio", 0.1),
    ("model.attention_chunk", 0),
    ("train.eval_batches", 16),
    ("train.eval_batch_size", 32),
    ("diffusion.eval_t_samples", 4),
    ("train.keep_checkpoints", 1),
    ("train.progress_bar", False),
    ("sample.num_samples", 0),
)

_GPU_RECIPE = (
    ("optim.b1", 0.9),
    ("optim.b2", 0.95),
    ("optim.weight_decay", 0.1),
    ("optim.grad_clip", 1.0),
    ("optim.min_lr_ratio", 0.1),
    ("model.attention_chunk", 0),
    ("model.tie_embeddings", False),
    ("model.dtype", "bfloat16"),
    ("train.eval_batches", 32),
    ("diffusion.eval_t_samples", 32),
    ("train.keep_checkpoints", 1),
    ("train.progress_bar", False),
    ("sample.num_samples", 0),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smoke",
            description="CPU: 3 budgets x 5 sizes x {mdm, ar}, byte corpus, batch 8 x 128, ~22 min on 2 cores",
            grid=(
                (5e11, ("5k", "8k", "19k", "33k", "51k")),
                (1e12, ("5k", "8k", "19k", "33k", "74k")),
                (3e12, ("19k", "33k", "51k", "74k", "131k")),
            ),
            objective_grids=(
                (
                    "ar",  # AR's optima sit 2-4x above MDM's at these budgets (the pilot in scaling_laws/README.md)
                    (
                        (5e11, ("8k", "19k", "33k", "51k", "74k")),
                        (1e12, ("19k", "33k", "51k", "74k", "131k")),
                        (3e12, ("33k", "51k", "74k", "131k", "300k")),
                    ),
                ),
            ),
            batch_size=8,
            seq_len=128,
            min_steps=200,
            overrides=_CPU_RECIPE,
        ),
        Preset(
            name="mini",
            description="test: 1 budget x 1 size, 6 steps of batch 8 x 32",
            grid=((1.3e8, ("8k",)),),
            batch_size=8,
            seq_len=32,
            min_steps=1,
            warmup_min=1,
            checkpoints_per_run=2,
            overrides=(
                ("data.tokenizer", "bytes"),
                ("model.attention_chunk", 0),
                ("train.eval_batches", 2),
                ("train.eval_batch_size", 8),
                ("diffusion.eval_t_samples", 2),
                ("train.keep_checkpoints", 1),
                ("train.progress_bar", False),
                ("sample.num_samples", 0),
            ),
        ),
        Preset(
            name="gpu_small",
            description="one accelerator: C in 3e16..1e18 x 6M..142M; set a real corpus and tokenizer",
            grid=(
                (3e16, ("2M", "6M", "19M", "34M")),
                (1e17, ("6M", "19M", "34M", "66M")),
                (3e17, ("6M", "19M", "34M", "66M", "113M")),
                (1e18, ("19M", "34M", "66M", "113M", "142M")),
            ),
            batch_size=64,
            seq_len=1024,
            min_steps=200,
            min_batch=16,
            lr=1e-3,
            lr_width=256,
            lr_exponent=0.5,
            warmup_fraction=0.02,
            warmup_min=50,
            overrides=_GPU_RECIPE,
        ),
        Preset(
            name="smdm",
            description="SMDM's grid: C = 6 N D in 6e18..1e20, batch 256 x 2048, lr 2e-4; a cluster's work",
            grid=(
                (6e18, ("34M", "48M", "66M", "85M", "113M", "142M", "170M", "206M")),
                (1e19, ("48M", "66M", "85M", "113M", "142M", "170M", "206M", "268M")),
                (3e19, ("85M", "113M", "142M", "170M", "206M", "268M", "336M", "472M")),
                (6e19, ("113M", "142M", "170M", "206M", "268M", "336M", "472M", "629M")),
                (1e20, ("170M", "206M", "268M", "336M", "472M", "629M", "831M", "1028M")),
            ),
            batch_size=256,
            seq_len=2048,
            convention="6n",
            min_steps=200,
            lr=2e-4,
            lr_exponent=0.0,
            warmup_fraction=0.01,
            warmup_min=100,
            overrides=_GPU_RECIPE,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
