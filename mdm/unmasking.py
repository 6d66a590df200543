"""The unmasking order of a sample: when each position was revealed, and the partial states.

`record_calls` runs any sampler with a denoiser wrapped so that every call also hands its input
x_t to the host (an ordered `jax.debug.callback`); nothing else changes, so the sample is the
sampler's own for the same keys. The inputs of the calls, followed by the final tokens, are the
trajectory: state j (j < nfe) is what call j saw and state nfe is the sample. A position's reveal
step is the call whose logits its token was drawn from: the last call before the first state in
which it is unmasked (with ancestral caching a step may reuse the logits of an earlier call; its
tokens count for that call). Positions the canvas fixes (a prompt, infill context) get -1.

`record` is `generation.generate` for one batch with the recorder on: the same keys
(row r uses fold_in(PRNGKey(seed), r)), samplers and settings, so its tokens equal generate's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mdm import precision
from mdm.errors import ConfigError
from mdm.generation import build_sampler, row_keys
from mdm.samplers import SamplerSettings
from mdm.samplers.base import Denoiser, SampleOutput

Sampler = Callable[[Denoiser, jax.Array, jax.Array], SampleOutput]


@dataclasses.dataclass(frozen=True)
class Unmasking:
    """A recorded sample. S = nfe + 1 states: the input of each denoiser call, then the sample.

    states_SxBxL: int32 token ids (the mask id where still masked); times_NxB: the t each call got
    (N = nfe); reveal_step_BxL: the call that revealed each position (-1: fixed by the canvas).
    """

    states_SxBxL: np.ndarray
    times_NxB: np.ndarray
    reveal_step_BxL: np.ndarray
    mask: int
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the sampler output's energy_nfe

    @property
    def tokens_BxL(self) -> np.ndarray:
        """The sample: int32[B, L], no mask left."""
        return self.states_SxBxL[-1]

    @property
    def nfe(self) -> int:
        """Denoiser calls for the batch."""
        return self.states_SxBxL.shape[0] - 1

    def revealed_fraction_SxB(self) -> np.ndarray:
        """float64[S, B]: fraction of each row's generated positions unmasked in each state."""
        generated = (self.reveal_step_BxL >= 0).sum(-1)
        revealed = ((self.states_SxBxL != self.mask) & (self.reveal_step_BxL >= 0)[None]).sum(-1)
        return revealed / np.maximum(generated, 1)

    def snapshot_states(self, row: int, fractions: Sequence[float]) -> list[int]:
        """For each fraction f, the first state index in which row `row` has >= f of its positions revealed."""
        frac = self.revealed_fraction_SxB()[:, row]
        return [int(np.argmax(frac >= min(f, 1.0) - 1e-12)) for f in fractions]


def reveal_steps(states_SxBxL: np.ndarray, mask: int) -> np.ndarray:
    """int32[B, L]: for each position, the last call before the first state where it is unmasked.

    states_SxBxL: call inputs then the final sample (S = calls + 1). -1 where state 0 already
    holds a token (the canvas fixed it).
    """
    unmasked = states_SxBxL != mask
    if not unmasked[-1].all():
        raise ValueError("the last state still holds masks; it must be the finished sample")
    first = np.argmax(unmasked, axis=0)  # first state index with a token, 0 = fixed by the canvas
    return (first - 1).astype(np.int32)


class CallRecorder:
    """Wraps denoisers so that each call hands its input x_t (and t) to the host, in call order.

    Use one recorder per sampler run: `wrap` the denoiser inside the jitted function, run it,
    then `finish(output, mask)`.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def _keep(self, x, t) -> None:
        self.calls.append((np.asarray(x), np.asarray(t)))

    def wrap(self, denoiser: Denoiser) -> Denoiser:
        """The same denoiser, recording every call (an ordered `jax.debug.callback`)."""

        def recorded(x, t):
            jax.debug.callback(self._keep, x, jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1]), ordered=True)
            return denoiser(x, t)

        return recorded

    def finish(self, out: SampleOutput, mask: int) -> Unmasking:
        """The trajectory of the run that returned `out` (a SampleOutput or one with more fields)."""
        tokens = np.asarray(out.tokens).astype(np.int32)
        jax.effects_barrier()  # every callback has run
        if len(self.calls) != int(out.nfe):
            raise RuntimeError(f"recorded {len(self.calls)} denoiser calls but the sampler reports NFE {int(out.nfe)}")
        states = np.stack([c[0] for c in self.calls] + [tokens]).astype(np.int32)
        batch = tokens.shape[0]
        times = np.stack([c[1] for c in self.calls]).astype(np.float32) if self.calls else np.zeros((0, batch), np.float32)
        extra = {k: int(v) for k, v in out._asdict().items() if k not in ("tokens", "nfe") and np.ndim(v) == 0}
        return Unmasking(states, times, reveal_steps(states, mask), mask, extra)


def record_calls(sampler: Sampler, denoiser: Denoiser, keys_B: jax.Array, canvas_BxL: jax.Array, *, mask: int) -> Unmasking:
    """Runs `sampler(denoiser, keys_B, canvas_BxL)` under jit and records its trajectory.

    sampler: any library sampler (e.g. from `make_sampler`); its output is the trajectory's last state.
    """
    recorder = CallRecorder()
    run = jax.jit(precision.under("sampling", lambda k, c: sampler(recorder.wrap(denoiser), k, c)))
    out = run(keys_B, jnp.asarray(canvas_BxL, jnp.int32))
    return recorder.finish(out, mask)


def record(
    objective,
    params,
    settings: SamplerSettings,
    canvas: np.ndarray,
    num_samples: int,
    *,
    seed: int = 0,
    energy=None,
) -> Unmasking:
    """`generate`'s sample of `num_samples` rows (one batch) with its unmasking trajectory.

    canvas: int32[L] from `generation.make_canvas`. energy: for the 'edlm' sampler, as in generate.
    """
    if objective.decoding != "diffusion":
        raise ConfigError("this run has no unmasking order; pass a masked diffusion run (objective mdm or mcd)")
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    recorder = CallRecorder()
    settings, sample = build_sampler(objective, settings, canvas, energy=energy, wrap=recorder.wrap)
    use_energy = settings.sampler == "edlm"
    canvas_b = jnp.broadcast_to(jnp.asarray(canvas, jnp.int32), (num_samples, canvas.shape[0]))
    run = jax.jit(precision.under("sampling", sample))
    out = run(params, energy.params if use_energy else None, row_keys(seed, 0, num_samples), canvas_b)
    return recorder.finish(out, objective.mask_id)


def render(tokenizer, row_L: np.ndarray, mask: int, mask_char: str = "_") -> str:
    """Text of one state: runs of tokens decoded together, each masked position shown as `mask_char`."""
    row = np.asarray(row_L)
    pieces, start = [], 0
    for i in range(len(row) + 1):
        if i == len(row) or row[i] == mask:
            if i > start:
                pieces.append(tokenizer.decode(row[start:i]))
            if i < len(row):
                pieces.append(mask_char)
            start = i + 1
    return "".join(pieces)
