"""Training objectives: pure `loss(params, batch, rng)` functions the one loop calls."""

from __future__ import annotations

from mdm.errors import ConfigError
from mdm.networks import Transformer
from mdm.objectives.ar import AutoregressiveObjective
from mdm.objectives.base import EVAL_SUM_KEYS, Objective
from mdm.objectives.mdm import MaskedDiffusionObjective
from mdm.schedules import make_schedule

OBJECTIVES = ("mdm", "ar")


def make_objective(config, model: Transformer, pad_id: int, token_bytes) -> Objective:
    """Builds the objective named by `config.objective` for `model`."""
    common = dict(
        model=model,
        pad_id=pad_id,
        token_bytes=tuple(int(b) for b in token_bytes),
        mask_padding=config.data.mode == "pad",
    )
    if config.objective == "mdm":
        d = config.diffusion
        return MaskedDiffusionObjective(
            schedule=make_schedule(d.schedule, d.eps, d.power),
            t_min=d.t_min,
            eval_t_samples=d.eval_t_samples,
            **common,
        )
    if config.objective == "ar":
        return AutoregressiveObjective(**common)
    raise ConfigError(f"unknown objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}")


__all__ = [
    "EVAL_SUM_KEYS",
    "AutoregressiveObjective",
    "MaskedDiffusionObjective",
    "Objective",
    "OBJECTIVES",
    "make_objective",
]
