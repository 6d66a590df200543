"""Generation from a model: canvases from prompts/infill templates, batched sampling, decoding.

Row r of a request uses the key fold_in(PRNGKey(seed), r), so a sample depends on its seed and
row only, never on the batch size it was drawn with.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mdm import process
from mdm.errors import ConfigError
from mdm.objectives import Objective
from mdm.samplers import SampleOutput, SamplerSettings, make_sampler
from mdm.schedules import make_schedule

# Command-line flags shared by sample.py and evaluate.py (defaults fix the types).
SAMPLER_FLAGS = {
    "sampler": "fhs",
    "steps": 0,  # 0: exact FHS, or seq_len steps for ancestral/confidence
    "tokens_per_step": 1,
    "grid": "uniform",
    "cache": True,
    "order": "top_prob",
    "block_length": 0,  # 0: one block
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "categorical": "exact",
}


def settings_from_flags(flags: dict[str, Any], seq_len: int) -> SamplerSettings:
    """SamplerSettings from parsed SAMPLER_FLAGS, with the 0 defaults resolved (`generate` validates)."""
    default_steps = None if flags["sampler"] == "fhs" else seq_len
    return SamplerSettings(
        sampler=flags["sampler"],
        steps=flags["steps"] or default_steps,
        tokens_per_step=flags["tokens_per_step"],
        grid=flags["grid"],
        cache=flags["cache"],
        order=flags["order"],
        block_length=flags["block_length"] or None,
        temperature=flags["temperature"],
        top_k=flags["top_k"],
        top_p=flags["top_p"],
        categorical=flags["categorical"],
    )


_MASK_SPAN = re.compile(r"\[MASK(?:\*(\d+))?\]")


def denoiser_fn(objective: Objective, params):
    """The sampler-facing denoiser (tokens, t) -> logits for fixed params."""
    time_cond = objective.model.cfg.time_conditioning

    def denoise(tokens, t):
        return objective.model.apply({"params": params}, tokens, t if time_cond else None)

    return denoise


def make_canvas(tokenizer, seq_len: int, prompt: str = "", infill: str = "") -> np.ndarray:
    """int32[seq_len]: BOS, then the prompt or infill template, then masks to the end.

    In `infill`, `[MASK]` is one token to generate and `[MASK*n]` is n of them; the text around
    them is kept. With neither, the canvas is all masks (unconditional).
    """
    mask = process.mask_id(tokenizer.vocab_size)
    if prompt and infill:
        raise ConfigError("give --prompt or --infill, not both (a prompt is an infill template without [MASK])")
    if not prompt and not infill:
        return np.full((seq_len,), mask, np.int32)
    pieces: list[np.ndarray] = [np.asarray([tokenizer.bos_id], np.int32)]
    text = prompt or infill
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


def _ar_sampler(objective: Objective, length: int):
    """Autoregressive decoding of the masked canvas positions, left to right (no KV cache)."""
    start = process.mask_id(objective.vocab_size)

    def sample(params, keys_B, canvas_BxL, draw):
        batch = canvas_BxL.shape[0]

        def step(i, x):
            inputs = jnp.concatenate([jnp.full((batch, 1), start, jnp.int32), x[:, :-1]], axis=1)
            logits = jax.lax.dynamic_slice_in_dim(objective.model.apply({"params": params}, inputs), i, 1, axis=1)
            keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_B)
            tok = draw(keys, logits, jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1))[:, 0]
            return x.at[:, i].set(jnp.where(x[:, i] == start, tok, x[:, i]))

        return SampleOutput(jax.lax.fori_loop(0, length, step, canvas_BxL), jnp.int32(length))

    return sample


def generate(
    objective: Objective,
    config: Any,
    params,
    settings: SamplerSettings,
    canvas: np.ndarray,
    num_samples: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Draws `num_samples` completions of `canvas` int32[L]; returns tokens, NFE and timing."""
    length = canvas.shape[0]
    try:
        settings.validate(length)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    mask = process.mask_id(objective.vocab_size)
    if config.objective == "ar":
        if np.any(canvas[np.argmax(canvas == mask) :] != mask) and np.any(canvas == mask):
            raise ConfigError("an AR model can only continue a prompt; --infill needs an MDM checkpoint")
        fn = jax.jit(lambda p, k, c: _ar_sampler(objective, length)(p, k, c, settings.token_draw))
    else:
        d = config.diffusion
        sampler = make_sampler(
            settings,
            mask=mask,
            schedule=make_schedule(d.schedule, d.eps, d.power),
            time_agnostic=not config.model.time_conditioning,
        )
        fn = jax.jit(lambda p, k, c: sampler(denoiser_fn(objective, p), k, c))
    base = jax.random.PRNGKey(seed)
    rows, nfe, seconds = [], 0, 0.0
    for start in tqdm.trange(0, num_samples, batch_size, disable=not progress, desc="sampling", unit="batch"):
        n = min(batch_size, num_samples - start)
        keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(start, start + n))
        canvas_b = jnp.broadcast_to(jnp.asarray(canvas), (n, length))
        t0 = time.perf_counter()
        out = fn(params, keys, canvas_b)
        tokens = np.asarray(out.tokens)
        seconds += time.perf_counter() - t0
        rows.append(tokens)
        nfe += int(out.nfe)
    tokens = np.concatenate(rows) if rows else np.zeros((0, length), np.int32)
    generated = int((canvas == mask).sum()) * num_samples
    return {"tokens": tokens, "nfe": nfe, "seconds": seconds, "tokens_per_s": generated / max(seconds, 1e-9)}
