"""Generation from a model: canvases from prompts/infill templates and batched sampling.

Everything a sampler needs comes from the objective (its denoiser, mask id, schedule and what it
can sample) and from plain `SamplerSettings`, never from a config. Row r of a request uses the
key fold_in(PRNGKey(seed), r), so a sample depends on its seed and row only, never on the batch
size it was drawn with. The 'edlm' sampler also takes an energy (`mdm.trained.load_energy`).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mdm import precision, process
from mdm.energy import EnergyModel
from mdm.errors import ConfigError
from mdm.objectives import Objective
from mdm.process import Denoiser
from mdm.samplers import SampleOutput, SamplerSettings, block_sample, make_sampler
from mdm.samplers.eos import sample_lengths, suppressing_eos, trim_after_eos
from mdm.samplers.guidance import guided_denoiser

# (params, energy params or None, keys uint32[B, 2], canvas int32[B, L]) -> SampleOutput
SampleFn = Callable[[Any, Any, jax.Array, jax.Array], SampleOutput]


_MASK_SPAN = re.compile(r"\[MASK(?:\*(\d+))?\]")
_MASK_START = re.compile(r"\[mask", re.IGNORECASE)  # anything that starts like a span must be one


def _check_mask_spans(infill: str) -> None:
    """A one-line ConfigError for a `[MASK`-like marker that is not `[MASK]` or `[MASK*n]` with n >= 1."""
    for start in _MASK_START.finditer(infill):
        span = _MASK_SPAN.match(infill, start.start())
        if span is not None and int(span.group(1) or 1) >= 1:
            continue
        end = infill.find("]", start.start(), start.start() + 24)
        marker = infill[start.start() : end + 1] if end >= 0 else infill[start.start() : start.start() + 12]
        raise ConfigError(
            f"--infill: {marker!r} is not a mask span; write [MASK] for one token to generate or [MASK*n] for n >= 1 "
            "of them (e.g. [MASK*8])"
        )


def make_canvas(tokenizer, seq_len: int, prompt: str = "", infill: str = "") -> np.ndarray:
    """int32[seq_len]: BOS, then the prompt or infill template, then masks to the end.

    In `infill`, `[MASK]` is one token to generate and `[MASK*n]` is n of them; the text around
    them is kept; any other `[MASK`-like marker (`[MASK*]`, `[mask]`, `[MASK*0]`) is a ConfigError.
    With neither, the canvas is all masks (unconditional).
    """
    mask = process.mask_id(tokenizer.vocab_size)
    if prompt and infill:
        raise ConfigError("give --prompt or --infill, not both (a prompt is an infill template without [MASK])")
    if not prompt and not infill:
        return np.full((seq_len,), mask, np.int32)
    pieces: list[np.ndarray] = [np.asarray([tokenizer.bos_id], np.int32)]
    text = prompt or infill
    _check_mask_spans(infill)
    pos = 0
    for m in _MASK_SPAN.finditer(infill):
        pieces.append(tokenizer.encode(infill[pos : m.start()]).astype(np.int32))
        pieces.append(np.full((int(m.group(1) or 1),), mask, np.int32))
        pos = m.end()
    pieces.append(tokenizer.encode(text[pos:]).astype(np.int32))
    fixed = np.concatenate(pieces)
    if len(fixed) > seq_len:
        what = "prompt" if prompt else "infill template"
        raise ConfigError(f"the {what} is {len(fixed)} tokens with BOS but the model's seq_len is {seq_len}; shorten it")
    return np.concatenate([fixed, np.full((seq_len - len(fixed),), mask, np.int32)])


def build_sampler(
    objective: Objective,
    settings: SamplerSettings,
    canvas: np.ndarray,
    *,
    energy: EnergyModel | None = None,
    wrap: Callable[[Denoiser], Denoiser] = lambda d: d,
    eos_id: int | None = None,
) -> tuple[SamplerSettings, SampleFn]:
    """(the settings the objective resolved, a pure sampling function) for `canvas` int32[L].

    wrap: applied to the objective's denoiser inside the function (e.g. a call recorder).
    eos_id: the tokenizer's EOS, which `min_length` and `stop_at_eos` need.
    Every problem is a one-line ConfigError.
    """
    settings = objective.sampling_settings(settings, canvas)
    try:
        settings.validate(objective.sampler_window(canvas.shape[0]))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if (settings.min_length > 0 or settings.stop_at_eos) and eos_id is None:
        raise ConfigError("--min_length and --stop_at_eos need the tokenizer's EOS id; this tokenizer has none (drop them)")
    if settings.min_length >= canvas.shape[0]:
        raise ConfigError(f"--min_length={settings.min_length} leaves no room for EOS in {canvas.shape[0]} positions; lower it")
    if objective.decoding == "block":
        return settings, _block_sampler(objective, settings, eos_id)
    use_energy = settings.sampler == "edlm"
    if use_energy and energy is None:
        raise ConfigError("--sampler edlm needs an energy: pass --energy ar|nce --energy_workdir DIR")
    time_agnostic = not objective.model.cfg.time_conditioning
    if settings.cfg_scale > 0 and objective.decoding != "diffusion":
        raise ConfigError("--cfg_scale guides a masked diffusion model; an AR model decodes without it (use --cfg_scale 0)")
    if settings.cfg_scale > 0 and not (np.asarray(canvas) != objective.mask_id).any():
        raise ConfigError("--cfg_scale guides towards a prompt or infill context; this canvas has none: give --prompt/--infill")

    def sample(params, energy_params, keys_B, canvas_BxL):
        denoiser = objective.denoiser(params)
        if settings.cfg_scale > 0:
            denoiser = guided_denoiser(denoiser, canvas_BxL != objective.mask_id, settings.cfg_scale, objective.mask_id)
        if settings.min_length > 0:
            denoiser = suppressing_eos(denoiser, jnp.arange(canvas_BxL.shape[1]), eos_id, settings.min_length)
        sampler = make_sampler(
            settings,
            mask=objective.mask_id,
            schedule=objective.sampler_schedule,
            time_agnostic=time_agnostic,
            energy=energy.bind(energy_params) if use_energy else None,
        )
        out = sampler(wrap(denoiser), keys_B, canvas_BxL)
        if settings.stop_at_eos:
            out = out._replace(tokens=trim_after_eos(out.tokens, canvas_BxL == objective.mask_id, eos_id, objective.pad_id))
        return out

    return settings, sample


def _block_sampler(objective: Objective, settings: SamplerSettings, eos_id: int | None) -> SampleFn:
    """Block decoding of a block diffusion objective: `settings.sampler` inside each block, the
    exact K/V cache unless `settings.kv_cache` is off."""
    inner = make_sampler(settings, mask=objective.mask_id, schedule=objective.sampler_schedule)

    def sample(params, energy_params, keys_B, canvas_BxL):
        del energy_params
        return block_sample(
            objective.block_denoiser(params, settings.kv_cache),
            keys_B,
            canvas_BxL,
            block_size=objective.block_size,
            mask=objective.mask_id,
            inner=inner,
            eos=eos_id,
            pad=objective.pad_id,
            stop_at_eos=settings.stop_at_eos,
            min_length=settings.min_length,
        )

    return sample


def row_keys(seed: int, start: int, num: int) -> jax.Array:
    """uint32[num, 2]: the keys of rows start .. start + num - 1, fold_in(PRNGKey(seed), r)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(start, start + num))


def generate(
    objective: Objective,
    params,
    settings: SamplerSettings,
    canvas: np.ndarray,
    num_samples: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    energy: EnergyModel | None = None,
    eos_id: int | None = None,
) -> dict[str, Any]:
    """Draws `num_samples` completions of `canvas` int32[L]; returns tokens, NFE and timing.

    energy: the energy of the 'edlm' sampler (ignored by the others). eos_id: the tokenizer's
    EOS (the length rules need it; with it, 'lengths' holds each sample's length). 'nfe' counts
    denoiser calls and 'energy_nfe' energy passes, both per batch (an importance step adds K
    passes); block decoding also gives 'row_nfe', the calls each sample needed.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1 (the samples drawn per call)")
    if num_samples < 0:
        raise ConfigError(f"num_samples={num_samples} must be >= 0")
    length = canvas.shape[0]
    settings, sample = build_sampler(objective, settings, canvas, energy=energy, eos_id=eos_id)
    fn = jax.jit(precision.under("sampling", sample))
    energy_params = energy.params if (energy is not None and settings.sampler == "edlm") else None
    rows, row_nfe, nfe, energy_nfe, seconds = [], [], 0, 0, 0.0
    for start in tqdm.trange(0, num_samples, batch_size, disable=not progress, desc="sampling", unit="batch"):
        n = min(batch_size, num_samples - start)
        canvas_b = jnp.broadcast_to(jnp.asarray(canvas), (n, length))
        t0 = time.perf_counter()
        out = fn(params, energy_params, row_keys(seed, start, n), canvas_b)
        tokens = np.asarray(out.tokens)
        seconds += time.perf_counter() - t0
        rows.append(tokens)
        row_nfe.append(np.asarray(getattr(out, "row_nfe", np.full((n,), int(out.nfe)))))
        nfe += int(out.nfe)
        energy_nfe += int(getattr(out, "energy_nfe", 0))
    tokens = np.concatenate(rows) if rows else np.zeros((0, length), np.int32)
    generated_L = canvas == objective.mask_id
    lengths = (
        np.asarray(sample_lengths(tokens, np.broadcast_to(generated_L, tokens.shape), eos_id))
        if eos_id is not None
        else np.full((len(tokens),), length)
    )
    return {
        "settings": settings,
        "tokens": tokens,
        "lengths": lengths,
        "row_nfe": np.concatenate(row_nfe) if row_nfe else np.zeros((0,), np.int32),
        "nfe": nfe,
        "energy_nfe": energy_nfe,
        "seconds": seconds,
        "tokens_per_s": int(generated_L.sum()) * num_samples / max(seconds, 1e-9),
    }
