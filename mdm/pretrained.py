"""Loading a trained run for inference: config, tokenizer, objective and (EMA) params."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import logging

import jax
from etils import epath

from mdm.checkpoint import Checkpointer, as_path
from mdm.config import config_from_saved, validate
from mdm.errors import CheckpointError, ConfigError
from mdm.experiment import Experiment, abstract_state, build

log = logging.getLogger("mdm")


@dataclasses.dataclass
class Trained:
    """A restored run: what `build` makes from its saved config, plus the chosen params."""

    experiment: Experiment
    params: Any
    frozen: Any  # the objective's frozen tree (a teacher, a frozen denoiser) or None
    step: int
    workdir: epath.Path  # absolute local path or cloud URL

    @property
    def config(self):
        return self.experiment.config


def load_trained(workdir: str | pathlib.Path, step: int | None = None, use_ema: bool = True) -> Trained:
    """Restores the checkpoint at `step` (default: the latest) of the run in `workdir`."""
    workdir = as_path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"no checkpoints under {workdir}; train first: python train.py --workdir {workdir}")
    checkpointer = Checkpointer(workdir)
    steps = checkpointer.manager.all_steps()
    if not steps:
        raise CheckpointError(f"no finished checkpoint under {workdir / 'checkpoints'}; train longer or check the path")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {workdir}; available: {sorted(steps)}")
    config, dropped = config_from_saved(checkpointer.restore_config(step))
    if dropped:
        log.warning("ignoring config keys this version no longer has: %s", ", ".join(dropped))
    try:
        validate(config)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {workdir}/checkpoints/{step} has a config this version rejects: {e}") from e
    exp = build(config)
    state, _ = checkpointer.restore(step, abstract_state(exp, jax.random.PRNGKey(0), config.data.seq_len), config)
    return Trained(exp, state.ema_params if use_ema else state.params, state.frozen, step, workdir)
