"""Trained runs restored from disk: for inference (`load_trained`), as the start of another run
(`init_params`, for `init.workdir`) and as the energy of the EDLM sampler (`load_energy`).

Every "can this run use that one" question goes through `runs.check_compatible` with the key
groups that matter for the purpose, and fails as one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Sequence

import jax
from etils import epath
from jax.sharding import Mesh

from mdm import runs
from mdm.checkpoint import Checkpointer, UnreadableCheckpoint
from mdm.config import config_from_saved, validate
from mdm.energy import EnergyModel
from mdm.errors import CheckpointError, ConfigError
from mdm.experiment import Experiment, abstract_params, abstract_state, build, sharded_abstract_state
from mdm.objectives import objective_kind
from mdm.sharding import DEFAULT_RULES

log = logging.getLogger("mdm")

ENERGY_KINDS = ("ar", "nce")  # an AR run (its carry-over AR energy) or a trained NCE energy run


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


def _saved_config(checkpointer: Checkpointer, step: int) -> Any:
    """The config saved with `step`, migrated to this version's schema (dropped keys warned about)."""
    config, dropped = config_from_saved(checkpointer.restore_config(step))
    if dropped:
        log.warning("ignoring config keys this version no longer has: %s", ", ".join(dropped))
    return config


def _open(workdir: epath.Path, step: int | None, missing: str, flag: str = "--step") -> tuple[Checkpointer, int, Any]:
    """(checkpointer, chosen step, saved config) of the run in `workdir`; `missing` is the error
    when it has no checkpoints folder."""
    if not runs.has_checkpoints(workdir):
        raise CheckpointError(missing)
    checkpointer = Checkpointer(workdir)
    step = runs.choose_step(workdir, step, checkpointer.manager.all_steps(), flag)
    return checkpointer, step, _saved_config(checkpointer, step)


def _restore_trained(checkpointer: Checkpointer, workdir: epath.Path, step: int, use_ema: bool) -> Trained:
    config = _saved_config(checkpointer, step)
    try:
        validate(config)
    except ConfigError as e:
        where = runs.checkpoint_dir(workdir) / str(step)
        raise CheckpointError(f"checkpoint {where} has a config this version rejects: {e}") from e
    exp = build(config)
    state, _ = checkpointer.restore(step, abstract_state(exp, jax.random.PRNGKey(0), config.data.seq_len), config)
    return Trained(exp, state.ema_params if use_ema else state.params, state.frozen, step, workdir)


def load_trained(workdir: str | pathlib.Path, step: int | None = None, use_ema: bool = True) -> Trained:
    """Restores the checkpoint at `step` (default: the latest) of the run in `workdir`.

    Without `step`, a run that is still training may rotate its latest step away (or be writing
    it) between listing and reading: then the steps are listed again and the newest other one is
    restored, once, with a warning."""
    workdir = runs.as_path(workdir)
    missing = f"no checkpoints under {workdir}; train first: python train.py --workdir {workdir}"
    if not runs.has_checkpoints(workdir):
        raise CheckpointError(missing)
    checkpointer = Checkpointer(workdir)
    chosen = runs.choose_step(workdir, step, checkpointer.manager.all_steps())
    try:
        return _restore_trained(checkpointer, workdir, chosen, use_ema)
    except (UnreadableCheckpoint, FileNotFoundError) as e:
        if step is not None:
            raise
        checkpointer = Checkpointer(workdir)  # lists the steps anew
        others = [s for s in checkpointer.manager.all_steps() if s != chosen]
        if not others:
            raise
        log.warning(
            "step %d of %s vanished or cannot be read (%s); loading step %d, the latest now", chosen, workdir, e, max(others)
        )
        return _restore_trained(checkpointer, workdir, max(others), use_ema)


def _shapes(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_kind(exp: Experiment, saved, where: str) -> None:
    """A causal (AR) run starts only a causal run and a bidirectional one only a bidirectional
    one: the same params would otherwise silently serve another attention pattern. The exception
    is an objective that adapts a causal model (an MDM with diffusion.shift)."""
    config = exp.config
    mine, theirs = objective_kind(config.objective).causal, objective_kind(saved.objective).causal
    if mine != theirs and not (theirs and exp.objective.adapts_causal):
        kind = lambda causal: "causal" if causal else "bidirectional"  # noqa: E731
        adapting = theirs and config.objective == "mdm"
        adapt = " (or adapt it into an MDM: --config.diffusion.shift=true, as configs/adapt.py does)" if adapting else ""
        raise ConfigError(
            f"init.workdir={where!r} is a {kind(theirs)} objective={saved.objective!r} run but this "
            f"objective={config.objective!r} run is {kind(mine)}; start from a run of the same kind{adapt}"
        )


def _check_shift(config, saved, where: str) -> None:
    """Two diffusion runs must agree on the shift: the same params read the input one position
    apart otherwise (an AR source is adapted instead: `_check_kind`)."""
    if objective_kind(saved.objective).causal:
        return
    theirs, mine = bool(saved.diffusion.get("shift", False)), bool(config.diffusion.shift)
    if theirs != mine:
        raise ConfigError(
            f"init.workdir={where!r} was trained with diffusion.shift={theirs} but this run sets {mine}; "
            f"pass --config.diffusion.shift={str(theirs).lower()} (the shift is part of the model)"
        )


def init_params(exp: Experiment, init, mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """The params of the run `init.workdir` (checkpoint `init.step`, 0 = latest; EMA if
    `init.use_ema`), restored directly onto `mesh` when given, checked against the params that
    `exp.objective.pretrained_model` expects."""
    workdir = runs.as_path(init.workdir)
    missing = f"init.workdir={str(workdir)!r} holds no checkpoint; train that run first or fix the path"
    checkpointer, step, saved = _open(workdir, init.step or None, missing, "init.step")
    _check_kind(exp, saved, str(workdir))
    exp.objective.check_source(exp.config, saved)
    _check_shift(exp.config, saved, str(workdir))
    source = build(saved)
    rng = jax.random.PRNGKey(0)
    seq_len = saved.data.seq_len
    if mesh is None:
        target = abstract_state(source, rng, seq_len)
    else:
        _, target = sharded_abstract_state(source, rng, seq_len, mesh, rules)
    state, _ = checkpointer.restore(step, target, saved)
    params = state.ema_params if init.use_ema else state.params
    expected = abstract_params(exp.objective.pretrained_model, rng, exp.config.data.seq_len)
    if _shapes(params) != _shapes(expected) or source.tokenizer.vocab_size != exp.tokenizer.vocab_size:
        raise ConfigError(
            f"init.workdir={str(workdir)!r} holds a model (objective {saved.objective}, {saved.model.num_layers} layers, "
            f"d_model {saved.model.d_model}, vocab {source.tokenizer.vocab_size}) that this run cannot start from; "
            "give this config the same model.* and data.tokenizer settings"
        )
    return params


def _train_energy_command(kind: str, workdir: str) -> str:
    """The command that trains an energy run of `kind`."""
    if kind == "ar":
        return f"python train.py --config configs/ar.py --workdir {workdir or 'runs/ar'}"
    return f"python train.py --config configs/edlm_nce.py --config.init.workdir MDM_RUN --workdir {workdir or 'runs/nce'}"


def check_energy_source(kind: str, workdir: str) -> None:
    """One-line errors for an unknown energy kind, no energy workdir or one without checkpoints."""
    if kind not in ENERGY_KINDS:
        raise ConfigError(
            f"--energy={kind!r}: choose ar (the carry-over AR energy of an AR run) or nce (a trained NCE energy run)"
        )
    if not workdir:
        raise ConfigError(
            f"--energy {kind} needs --energy_workdir DIR (the run to read the energy from; train one: "
            f"{_train_energy_command(kind, '')})"
        )
    if not runs.has_checkpoints(workdir):
        raise CheckpointError(
            f"--energy_workdir {workdir} holds no checkpoint; train the {kind.upper()} energy first: "
            f"{_train_energy_command(kind, workdir)}"
        )


def load_energy(
    kind: str,
    workdir: str,
    denoiser_config: Any,
    *,
    step: int | None = None,
    use_ema: bool = True,
    carry_over: bool = True,
    denoiser_workdir: str | pathlib.Path | None = None,
) -> tuple[EnergyModel, dict[str, Any]]:
    """The energy for the 'edlm' sampler and a record of where it came from.

    kind 'ar': the AR run in `workdir` gives the carry-over AR energy (or the plain AR energy
    with carry_over=False); kind 'nce': a trained NCE energy run. The energy run must share the
    denoiser run's tokenizer and sequence length (`denoiser_config`). An NCE energy is trained
    against one MDM (its `init.workdir`); a warning is logged when `denoiser_workdir` is another run.
    """
    from mdm.energy.autoregressive import make_ar_energy
    from mdm.energy.network import make_network_energy
    from mdm.objectives.nce import NAME as NCE_NAME, NCEObjective

    check_energy_source(kind, workdir)
    trained = load_trained(workdir, step, use_ema)
    config = trained.config
    objective = trained.experiment.objective
    want = "ar" if kind == "ar" else NCE_NAME
    if not (objective.decoding == "autoregressive" if kind == "ar" else isinstance(objective, NCEObjective)):
        raise ConfigError(
            f"--energy_workdir {workdir} is an objective={config.objective!r} run, not {want!r}; "
            + ("pass an AR run (configs/ar.py)" if kind == "ar" else "pass an NCE energy run (configs/edlm_nce.py)")
        )
    runs.check_compatible(
        denoiser_config,
        config,
        ("tokenizer", "length"),
        lambda key, mdm_value, energy_value: (
            f"the energy run {workdir} was trained with {key}={energy_value!r} but the MDM has {mdm_value!r}; "
            f"train the energy with --config.{key}={mdm_value!r}"
        ),
    )
    from mdm.data import make_tokenizer

    mdm_vocab = make_tokenizer(denoiser_config.data).vocab_size
    if objective.vocab_size != mdm_vocab:
        raise CheckpointError(
            f"the energy run {workdir} has vocabulary {objective.vocab_size} but the MDM has {mdm_vocab}; "
            "train it on the MDM's tokenizer"
        )
    model = objective.model
    if kind == "ar":
        energy = make_ar_energy(model, params=trained.params, carry_over=carry_over)
    else:
        energy = make_network_energy(model, trained.params)
        source = str(config.init.workdir)
        if denoiser_workdir is not None and source and pathlib.Path(source).resolve() != pathlib.Path(denoiser_workdir).resolve():
            log.warning("the NCE energy %s was trained against the MDM run %s, not %s", workdir, source, denoiser_workdir)
    record = {
        "energy": energy.kind,
        "energy_workdir": str(trained.workdir),
        "energy_step": trained.step,
        "energy_normalised": energy.normalised,
    }
    return energy, record
