"""Training objectives: pure `loss(params, batch, rng)` functions the one loop calls.

`REGISTRY` is the one table of objectives: each name maps to the function that builds it from a
config and whether its backbone is causal.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from mdm.errors import ConfigError
from mdm.networks import Transformer
from mdm.objectives import ar, bd3lm, mcd, mdm, nce
from mdm.objectives.ar import AutoregressiveObjective
from mdm.objectives.base import EVAL_SUM_KEYS, Objective
from mdm.objectives.mdm import MaskedDiffusionObjective


@dataclasses.dataclass(frozen=True)
class ObjectiveKind:
    """How to build one objective: `build(config, model, pad_id, token_bytes)`, whether the
    backbone it trains is causal and whether it needs a trained run to start from."""

    build: Callable[..., Objective]
    causal: bool = False
    needs_init: bool = False  # starts from a trained MDM named by init.workdir


# The masked-diffusion ELBO, its AR twin, masked consistency distillation of a trained MDM
# (config section mcd.*), the EDLM energy head trained by NCE against a frozen MDM (nce.*), and block
# diffusion (block.*), autoregressive over blocks and masked diffusion within each.
REGISTRY: dict[str, ObjectiveKind] = {
    "mdm": ObjectiveKind(mdm.from_config),
    "ar": ObjectiveKind(ar.from_config, causal=True),
    "mcd": ObjectiveKind(mcd.from_config, needs_init=True),
    nce.NAME: ObjectiveKind(nce.from_config, needs_init=True),
    bd3lm.NAME: ObjectiveKind(bd3lm.from_config),
}
OBJECTIVES = tuple(REGISTRY)


def objective_kind(name: str) -> ObjectiveKind:
    """The registry entry of `name`, or a one-line ConfigError listing the choices."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return REGISTRY[name]


def make_objective(config, model: Transformer, pad_id: int, token_bytes) -> Objective:
    """Builds the objective named by `config.objective` for `model`."""
    return objective_kind(config.objective).build(config, model, pad_id, token_bytes)


__all__ = [
    "OBJECTIVES",
    "REGISTRY",
    "EVAL_SUM_KEYS",
    "AutoregressiveObjective",
    "MaskedDiffusionObjective",
    "Objective",
    "ObjectiveKind",
    "make_objective",
    "objective_kind",
]
