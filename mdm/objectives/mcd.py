"""Masked consistency distillation (MCD) and its SDTT-style stochastic baseline.

A trained MDM teacher is distilled, in rounds, into a student (initialised from it) that samples
in few steps; modelled on DUO's DCD (arXiv:2506.10892) as the best reading of "Latent Shadows"
(arXiv:2602.00792). Round r (teacher <- student at each boundary) uses the step gap
delta_r = 2^(r+1) / teacher_steps in grid coordinates: u_t ~ U, u_s = u_t - delta_r, times
t, s on the target sampler's grid, and a coupled pair (z_t, z_s) of x_0 (`mdm.duality`). Per
position masked in z_t the loss is -log p_student(x_0 | z_t) where z_s reveals it, else
D(p_student(. | z_t), p_teacher(. | z_s) at temperature tau) with D the reverse or forward KL
(target 'consistency'); target 'stochastic' (SDTT, arXiv:2410.21035) instead targets the
teacher's logits along `stochastic_steps` ancestral steps. With teacher = student, s = t and
tau = 1 the loss is exactly 0. After R rounds the student is made for an ancestral sampler of
teacher_steps / 2^R steps on `grid`; evaluation reports its masked-diffusion NELBO. The
defaults and their measurements: docs/mcd.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from jax import Array
from jax.sharding import PartitionSpec

from mdm import duality, process, runs
from mdm.errors import ConfigError
from mdm.objectives.base import shared_fields
from mdm.objectives.chunked_loss import chunked_token_values, head_logits, nll_from_logits, resolve_chunk
from mdm.objectives.mdm import MaskedDiffusionObjective
from mdm.categorical import sample_categorical
from mdm.schedules import make_schedule
from mdm.time_grids import GRIDS, grid_coordinate, grid_time

TARGETS = ("consistency", "stochastic")
DIVERGENCES = ("reverse_kl", "forward_kl")
TEACHER_SOURCES = ("student", "ema")
TRAIN_COUPLINGS = ("uniform", "gaussian")  # 'literal' is O(B L V): tests only


def config_section() -> ml_collections.ConfigDict:
    """Every `mcd.*` key with its default (DCD's recipe where MCD is silent; see docs/mcd.md)."""
    c = ml_collections.ConfigDict()
    c.target = "consistency"  # 'consistency' (MCD) or 'stochastic' (SDTT-style baseline)
    c.divergence = "reverse_kl"  # on positions masked in both z_t and z_s: 'reverse_kl' or 'forward_kl'
    c.coupling = "uniform"  # coupled (z_t, z_s): 'uniform' (one u per token) or 'gaussian' (Y = M - e_k)
    c.grid = "uniform"  # the target sampler's time grid: 'uniform' or 'cosine'
    c.teacher_steps = 1024  # grid steps of the original teacher; round r uses delta = 2^(r+1) / teacher_steps
    c.rounds = 5  # rounds; the student is made for teacher_steps / 2^rounds sampling steps
    c.round_steps = 10_000  # optimiser updates per round (train.num_steps must cover rounds * round_steps)
    c.teacher_source = "student"  # what becomes the teacher at a round boundary: 'student' or 'ema'
    c.teacher_ema_decay = 0.999  # decay of the EMA kept for teacher_source='ema'
    c.teacher_temperature = 0.96  # teacher logits / tau in round 0 ... (1.0: none)
    c.teacher_temperature_final = 0.75  # ... annealed linearly over rounds to this value in the last round
    c.stochastic_steps = 2  # target='stochastic': teacher ancestral steps per student step
    return c


def token_divergence(student_logits_BxLxV: Array, teacher_logits_BxLxV: Array, kind: str) -> Array:
    """float32[B, L]: reverse KL(p_S || p_T) or forward KL(p_T || p_S) per position (nats)."""
    log_s = jax.nn.log_softmax(student_logits_BxLxV.astype(jnp.float32), axis=-1)
    log_t = jax.nn.log_softmax(teacher_logits_BxLxV.astype(jnp.float32), axis=-1)
    if kind == "reverse_kl":
        return (jnp.exp(log_s) * (log_s - log_t)).sum(-1)
    if kind == "forward_kl":
        return (jnp.exp(log_t) * (log_t - log_s)).sum(-1)
    raise ConfigError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")


def consistency_token_losses(
    student_logits_BxLxV: Array,
    teacher_logits_BxLxV: Array,
    x0_BxL: Array,
    z_t_BxL: Array,
    z_s_BxL: Array,
    *,
    mask: int,
    real_BxL: Array,
    divergence: str,
) -> tuple[Array, Array, Array]:
    """(loss float32[B, L], revealed bool[B, L], both_masked bool[B, L]) of the MCD position groups.

    student logits at z_t, teacher logits at z_s (already divided by the teacher temperature).
    revealed: masked in z_t, visible in z_s -> CE to x_0. both_masked -> `divergence`. Every other
    position (visible in z_t, or padding) -> 0.
    """
    masked_t = (z_t_BxL == mask) & real_BxL
    masked_s = (z_s_BxL == mask) & real_BxL
    revealed = masked_t & ~masked_s
    both = masked_t & masked_s
    ce = nll_from_logits(student_logits_BxLxV, x0_BxL)
    div = token_divergence(student_logits_BxLxV, teacher_logits_BxLxV, divergence)
    return jnp.where(revealed, ce, jnp.where(both, div, 0.0)), revealed, both


def _mean(total: Array, count: Array) -> Array:
    return total / jnp.maximum(count, 1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyDistillationObjective(MaskedDiffusionObjective):
    """MCD (target='consistency') or the SDTT-style baseline (target='stochastic'); see the module docstring.

    frozen = {'teacher': params, 'round': int32 scalar} (+ 'ema': params for teacher_source='ema').
    """

    target: str = "consistency"
    divergence: str = "reverse_kl"
    coupling: str = "uniform"
    grid: str = "uniform"
    teacher_steps: int = 1024
    rounds: int = 5
    round_steps: int = 10_000
    teacher_source: str = "student"
    teacher_ema_decay: float = 0.999
    teacher_temperature: float = 0.96
    teacher_temperature_final: float = 0.75
    stochastic_steps: int = 2

    def __post_init__(self):
        choices = {
            "target": TARGETS,
            "divergence": DIVERGENCES,
            "coupling": duality.COUPLINGS,
            "grid": GRIDS,
            "teacher_source": TEACHER_SOURCES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"mcd.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.rounds < 1 or self.round_steps < 1:
            raise ConfigError(f"mcd.rounds={self.rounds} and mcd.round_steps={self.round_steps} must be >= 1")
        if self.teacher_steps < 2 or self.teacher_steps % (2**self.rounds):
            raise ConfigError(
                f"mcd.teacher_steps={self.teacher_steps} must be a multiple of 2^rounds={2**self.rounds} (each round halves "
                f"the student's steps); use a power of two such as 1024 or lower --config.mcd.rounds"
            )
        if self.teacher_temperature <= 0 or self.teacher_temperature_final <= 0:
            raise ConfigError("mcd.teacher_temperature and mcd.teacher_temperature_final must be > 0 (1.0: no temperature)")
        if not 0.0 <= self.teacher_ema_decay < 1.0:
            raise ConfigError(f"mcd.teacher_ema_decay={self.teacher_ema_decay} must lie in [0, 1)")
        if self.stochastic_steps < 2:
            raise ConfigError(f"mcd.stochastic_steps={self.stochastic_steps} must be >= 2 (SDTT uses 2)")

    # -- sampling and starting points ----------------------------------------------------------

    def sampling_settings(self, settings, canvas_L):
        """A student samples on the time grid it was distilled for (the ancestral and edlm samplers use one)."""
        settings = super().sampling_settings(settings, canvas_L)
        if settings.sampler in ("ancestral", "edlm") and settings.grid != self.grid:
            raise ConfigError(f"this student was distilled for the {self.grid!r} time grid; sample with --grid {self.grid}")
        return settings

    @property
    def preferred_sampler(self) -> dict:
        """The sampler the student was made for: ancestral, teacher_steps / 2^rounds steps on its grid."""
        return {"sampler": "ancestral", "steps": max(self.student_steps, 1), "grid": self.grid}

    def check_source(self, config, source_config) -> None:
        check_teacher_config(config, source_config)

    # -- schedule of rounds --------------------------------------------------------------------

    @property
    def student_steps(self) -> int:
        """Sampling steps the final student is distilled for: teacher_steps / 2^rounds."""
        return self.teacher_steps // 2**self.rounds

    def delta(self, round_: Array) -> Array:
        """float32 step gap in grid units in round `round_` (int32 scalar): 2^(round+1) / teacher_steps."""
        return jnp.exp2(jnp.asarray(round_, jnp.float32) + 1.0) / self.teacher_steps

    def temperature(self, round_: Array) -> Array:
        """float32 teacher temperature of round `round_`: linear from the first to the final value."""
        frac = jnp.asarray(round_, jnp.float32) / max(self.rounds - 1, 1)
        return self.teacher_temperature + (self.teacher_temperature_final - self.teacher_temperature) * frac

    def pair_times(self, key: Array, batch: int, delta: Array) -> tuple[Array, Array]:
        """(t_B, s_B) float32[B]: u_t = min(v + delta, 1), u_s = u_t - delta, v stratified on [t_min, 1]."""
        v = process.stratified_times(key, batch, self.t_min)
        u_t = jnp.minimum(v + delta, 1.0)
        u_s = jnp.maximum(u_t - delta, 0.0)
        return grid_time(u_t, self.grid), grid_time(u_s, self.grid)

    # -- the per-batch loss --------------------------------------------------------------------

    def _apply(self, params, z_BxL: Array, t_B: Array, tokens_BxL: Array, return_hidden: bool = False) -> Array:
        t_in = t_B if self.model.cfg.time_conditioning else None
        mask = self.attention_mask(tokens_BxL)
        return self.model.apply({"params": params}, z_BxL, t_in, attention_mask_BxL=mask, return_hidden=return_hidden)

    def _logits_fn(self, params, scale: Array | float = 1.0):
        """hidden [B, C, D] -> float32 logits [B, C, V] / scale under `params`' head."""
        head_DxV = self.model.output_head(params)
        return lambda h: head_logits(h, head_DxV) / scale

    def _chunked(self, fn, xs: tuple, needed_BxL: Array) -> Array:
        """`chunked_token_values` with the objective's chunk size (the head applied a chunk at a time)."""
        batch, length = needed_BxL.shape
        return chunked_token_values(fn, xs, resolve_chunk(self.loss_chunk, batch, length, self.vocab_size), needed_BxL)

    def stochastic_target(self, teacher, tokens_BxL: Array, z_t_BxL: Array, t_B: Array, s_B: Array, tau, key: Array) -> Array:
        """float32[B, L, V]: SDTT target logits from `stochastic_steps` teacher ancestral steps from t to s.

        The n steps split [s, t] evenly in grid coordinates. A position revealed at step k targets
        the (tempered) teacher logits of step k; one still masked after the last reveal targets
        the last call's logits. Row b draws from fold_in(key, b).
        """
        n = self.stochastic_steps
        batch, length = z_t_BxL.shape
        u_t, u_s = grid_coordinate(t_B, self.grid), grid_coordinate(s_B, self.grid)
        times = [grid_time(u_t + (k / n) * (u_s - u_t), self.grid) for k in range(n)]
        z, target = z_t_BxL, None
        for k in range(n):
            logits = jax.lax.stop_gradient(self._apply(teacher, z, times[k], tokens_BxL)) / tau
            # Positions revealed at an earlier step keep that step's logits.
            target = logits if target is None else jnp.where((z == self.mask_id)[..., None], logits, target)
            if k == n - 1:
                break
            m_k, m_next = self.schedule.mask_prob(times[k]), self.schedule.mask_prob(times[k + 1])
            p_reveal_B = jnp.where(m_k > 0, 1.0 - m_next / jnp.where(m_k > 0, m_k, 1.0), 1.0)
            step_key = jax.random.fold_in(key, k)
            keys = jax.vmap(lambda b: jax.random.fold_in(step_key, b))(jnp.arange(batch))
            u = jax.vmap(lambda kk: jax.random.uniform(jax.random.fold_in(kk, 0), (length,)))(keys)
            drawn = jax.vmap(lambda kk, lg: sample_categorical(jax.random.fold_in(kk, 1), lg))(keys, logits)
            reveal = (z == self.mask_id) & (u < p_reveal_B[:, None])
            z = jnp.where(reveal, drawn, z)
        return target

    def pair_loss(
        self, params, teacher, tokens_BxL: Array, t_B: Array, s_B: Array, key: Array, tau: Array | float = 1.0
    ) -> tuple[Array, dict[str, Array]]:
        """Loss (scalar, nats per real token) and metrics at given pair times t_B >= s_B, float32[B].

        `key` draws the coupled pair (and, for target='stochastic', the teacher's steps); `tau` is
        the teacher temperature. With teacher = params, s_B = t_B and tau = 1 the loss is exactly 0.
        """
        k_pair, k_target = jax.random.split(key)
        real = self.real_tokens(tokens_BxL)
        z_t, z_s = duality.coupled_pair(
            k_pair,
            tokens_BxL,
            self.schedule.mask_prob(t_B),
            self.schedule.mask_prob(s_B),
            mask=self.mask_id,
            pad=self.pad_id,
            method=self.coupling,
            vocab_size=self.vocab_size,
        )
        student_hidden = self._apply(params, z_t, t_B, tokens_BxL, return_hidden=True)
        student = self._logits_fn(params)
        masked_t = (z_t == self.mask_id) & real
        num_tokens = jnp.maximum(real.sum(), 1)
        if self.target == "consistency":
            teacher_hidden = jax.lax.stop_gradient(self._apply(teacher, z_s, s_B, tokens_BxL, return_hidden=True))
            teacher_logits = self._logits_fn(jax.lax.stop_gradient(teacher), tau)

            def chunk_losses(h_s, h_t, x0, zt, zs, re):
                return consistency_token_losses(
                    student(h_s), teacher_logits(h_t), x0, zt, zs, mask=self.mask_id, real_BxL=re, divergence=self.divergence
                )[0]

            per_pos = self._chunked(chunk_losses, (student_hidden, teacher_hidden, tokens_BxL, z_t, z_s, real), masked_t)
            masked_s = (z_s == self.mask_id) & real
            revealed, both = masked_t & ~masked_s, masked_t & masked_s
            metrics = {
                "ce": _mean(jnp.where(revealed, per_pos, 0.0).sum(), revealed.sum()),
                "divergence": _mean(jnp.where(both, per_pos, 0.0).sum(), both.sum()),
                "revealed_fraction": revealed.sum() / num_tokens,
                "both_masked_fraction": both.sum() / num_tokens,
            }
        else:
            target = self.stochastic_target(teacher, tokens_BxL, z_t, t_B, s_B, tau, k_target)
            div = lambda h, tg: token_divergence(student(h), tg, self.divergence)  # noqa: E731
            per_pos = self._chunked(div, (student_hidden, target), masked_t)
            metrics = {"divergence": _mean(per_pos.sum(), masked_t.sum())}
        loss = per_pos.sum() / num_tokens
        metrics.update(loss=loss, masked_fraction=masked_t.sum() / num_tokens)
        return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def loss(self, params, batch, rng, frozen=None):
        if frozen is None:
            raise ConfigError(
                "the mcd objective needs its frozen teacher tree (from init_from); start from --config.init.workdir"
            )
        tokens = batch["tokens"]
        k_t, k_pair = jax.random.split(rng)
        delta = self.delta(frozen["round"])
        tau = self.temperature(frozen["round"])
        t_B, s_B = self.pair_times(k_t, tokens.shape[0], delta)
        loss, metrics = self.pair_loss(params, frozen["teacher"], tokens, t_B, s_B, k_pair, tau)
        metrics.update(
            delta=jnp.asarray(delta, jnp.float32),
            round=jnp.asarray(frozen["round"], jnp.float32),
            teacher_temperature=jnp.asarray(tau, jnp.float32),
        )
        return loss, metrics

    # -- the frozen tree -------------------------------------------------------------------------

    def init_from(self, fresh, pretrained):
        """Student and teacher (and the EMA for teacher_source='ema') all start as the pretrained params."""
        if pretrained is None:
            raise ConfigError("the mcd objective distils a trained MDM: pass its run as --config.init.workdir=runs/<teacher>")
        check_same_shapes(fresh, pretrained)
        frozen = {"teacher": jax.tree.map(jnp.copy, pretrained), "round": jnp.zeros((), jnp.int32)}
        if self.teacher_source == "ema":
            frozen["ema"] = jax.tree.map(jnp.copy, pretrained)
        return jax.tree.map(jnp.copy, pretrained), frozen

    def update_frozen(self, step, params, frozen):
        """After update `step`: advance the EMA; at a round boundary copy the student (or EMA) into the teacher."""
        new = dict(frozen)
        source = params
        if self.teacher_source == "ema":
            d = self.teacher_ema_decay
            new["ema"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, frozen["ema"], params)
            source = new["ema"]
        round_ = jnp.minimum(jnp.asarray(step, jnp.int32) // self.round_steps, self.rounds - 1).astype(jnp.int32)
        advance = round_ > frozen["round"]
        new["teacher"] = jax.lax.cond(advance, lambda: source, lambda: frozen["teacher"])
        new["round"] = jnp.maximum(round_, frozen["round"])
        return new

    def frozen_partition_specs(self, param_specs):
        """Logical PartitionSpecs of the frozen tree: the teacher (and EMA) like the params, the round replicated."""
        specs = {"teacher": param_specs, "round": PartitionSpec()}
        if self.teacher_source == "ema":
            specs["ema"] = param_specs
        return specs


def check_same_shapes(fresh, pretrained) -> None:
    """Raises a one-line ConfigError naming the first parameter whose path or shape differs."""
    fresh_leaves = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    pre_leaves = dict(jax.tree_util.tree_flatten_with_path(pretrained)[0])
    for path, leaf in fresh_leaves.items():
        name = jax.tree_util.keystr(path)
        if path not in pre_leaves:
            raise ConfigError(
                f"the teacher run has no parameter {name}; give the mcd run the teacher's --config.model.* settings"
            )
        if tuple(pre_leaves[path].shape) != tuple(leaf.shape):
            raise ConfigError(
                f"teacher parameter {name} has shape {tuple(pre_leaves[path].shape)} but this config builds "
                f"{tuple(leaf.shape)}; give the mcd run the teacher's --config.model.* and tokenizer settings"
            )
    extra = sorted(jax.tree_util.keystr(p) for p in pre_leaves.keys() - fresh_leaves.keys())
    if extra:
        raise ConfigError(
            f"the teacher run has parameters this config lacks ({extra[0]}); use the teacher's --config.model.* settings"
        )


def check_teacher_config(config, teacher_config) -> None:
    """Raises a one-line ConfigError if the run in init.workdir cannot be this run's teacher.

    The teacher must be a masked diffusion model ('mdm', or an earlier 'mcd' student made for the
    same grid) with the same shapes, positions, tokenizer and masking schedule (compute-only keys
    such as dtype or remat may differ).
    """
    where = config.init.workdir
    if teacher_config.objective not in ("mdm", "mcd"):
        raise ConfigError(f"the run in {where} is a {teacher_config.objective!r} model; mcd needs a masked diffusion teacher")
    if teacher_config.diffusion.get("shift", False):
        raise ConfigError(f"the MDM in {where} is AR-adapted (diffusion.shift); mcd distils unshifted MDMs only")
    runs.check_compatible(
        config,
        teacher_config,
        ("shapes", "positions", "tokenizer", "schedule"),
        lambda key, mine, theirs: (
            f"the teacher in {where} has {key}={theirs!r} but this run sets {mine!r}; use --config.{key}={theirs!r}"
        ),
        ConfigError,
    )
    if teacher_config.objective == "mcd" and teacher_config.mcd.grid != config.mcd.grid:
        grid = teacher_config.mcd.grid
        raise ConfigError(f"the teacher in {where} was distilled for the {grid!r} time grid; use --config.mcd.grid={grid}")


def from_config(config, model, pad_id: int, token_bytes) -> ConsistencyDistillationObjective:
    """The objective of `config` (sections diffusion, mcd, init, train, data) for `model`."""
    if not config.init.workdir:
        raise ConfigError("objective 'mcd' distils a trained MDM: name its run with --config.init.workdir=runs/<teacher>")
    m, d = config.mcd, config.diffusion
    if m.coupling not in TRAIN_COUPLINGS:
        raise ConfigError(
            f"mcd.coupling={m.coupling!r}: choose one of {', '.join(TRAIN_COUPLINGS)} ('literal' is O(B L V), tests only)"
        )
    objective = ConsistencyDistillationObjective(
        model=model,
        **shared_fields(config, pad_id, token_bytes),
        schedule=make_schedule(d.schedule, d.eps, d.power),
        t_min=d.t_min,
        eval_t_samples=d.eval_t_samples,
        eval_estimator=d.eval_estimator,
        target=m.target,
        divergence=m.divergence,
        coupling=m.coupling,
        grid=m.grid,
        teacher_steps=m.teacher_steps,
        rounds=m.rounds,
        round_steps=m.round_steps,
        teacher_source=m.teacher_source,
        teacher_ema_decay=m.teacher_ema_decay,
        teacher_temperature=m.teacher_temperature,
        teacher_temperature_final=m.teacher_temperature_final,
        stochastic_steps=m.stochastic_steps,
    )
    needed = m.rounds * m.round_steps
    if config.train.num_steps < needed:
        raise ConfigError(
            f"train.num_steps={config.train.num_steps} ends before the last of mcd.rounds={m.rounds} rounds of "
            f"mcd.round_steps={m.round_steps}; set --config.train.num_steps={needed} or fewer/shorter rounds"
        )
    return objective
