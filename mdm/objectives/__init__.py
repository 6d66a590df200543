"""Training objectives: pure `loss(params, batch, rng)` functions the one loop calls."""

from __future__ import annotations

from mdm.errors import ConfigError
from mdm.networks import Transformer
from mdm.objectives import mcd, nce
from mdm.objectives.ar import AutoregressiveObjective
from mdm.objectives.base import EVAL_SUM_KEYS, Objective, shared_fields
from mdm.objectives.mdm import MaskedDiffusionObjective
from mdm.schedules import make_schedule

# The masked-diffusion ELBO, its AR twin, masked consistency distillation of a trained MDM
# (config section mcd.*), and the EDLM energy head trained by NCE against a frozen MDM (nce.*).
OBJECTIVES = ("mdm", "ar", "mcd", "edlm_nce")


def make_objective(config, model: Transformer, pad_id: int, token_bytes) -> Objective:
    """Builds the objective named by `config.objective` for `model`."""
    common = dict(model=model, **shared_fields(config, pad_id, token_bytes))
    if config.objective == "mdm":
        d = config.diffusion
        return MaskedDiffusionObjective(
            schedule=make_schedule(d.schedule, d.eps, d.power),
            t_min=d.t_min,
            eval_t_samples=d.eval_t_samples,
            eval_estimator=d.eval_estimator,
            **common,
        )
    if config.objective == "ar":
        return AutoregressiveObjective(**common)
    if config.objective == "mcd":
        return mcd.from_config(config, model, pad_id, token_bytes)
    if config.objective == "edlm_nce":
        return nce.from_config(config, model, pad_id, token_bytes)
    raise ConfigError(f"unknown objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}")


__all__ = [
    "OBJECTIVES",
    "EVAL_SUM_KEYS",
    "AutoregressiveObjective",
    "MaskedDiffusionObjective",
    "Objective",
    "make_objective",
]
