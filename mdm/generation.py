"""Generation from a model: canvases from prompts/infill templates, batched sampling, decoding.

Row r of a request uses the key fold_in(PRNGKey(seed), r), so a sample depends on its seed and
row only, never on the batch size it was drawn with. The 'edlm' sampler also takes an energy
(`load_energy`: the carry-over AR energy of an AR run, or a trained NCE energy run).
"""

from __future__ import annotations

import logging
import pathlib
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mdm import process
from mdm.energy import EnergyModel
from mdm.errors import CheckpointError, ConfigError
from mdm.objectives import Objective
from mdm.samplers import EDLM_PRESETS, SampleOutput, SamplerSettings, make_sampler
from mdm.samplers.importance import check_importance_settings
from mdm.schedules import make_schedule
from mdm import precision

log = logging.getLogger("mdm")

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
    "greedy_last": False,  # ancestral: argmax at the last step (distilled students)
    "is_k": 2,  # edlm: importance candidates per step
    "is_window": 0.2,  # edlm: importance sampling at t >= 1 - w (0.2 speed preset, 1 quality preset)
    "is_temp": 1.0,  # edlm: resampling weights softmax(-E / is_temp)
    "is_preset": "",  # edlm: 'speed' or 'quality' sets is_k and is_window
}
# Flags that choose the energy of the 'edlm' sampler (sample.py).
ENERGY_FLAGS = {
    "energy": "",  # 'ar' (an AR run: carry-over AR energy) or 'nce' (a trained NCE energy run)
    "energy_workdir": "",
    "energy_step": -1,  # its checkpoint (-1: the latest)
    "ar_carry_over": True,  # --energy ar: coAR (normalised, the default) or the plain AR energy
}


def settings_from_flags(flags: dict[str, Any], seq_len: int) -> SamplerSettings:
    """SamplerSettings from parsed SAMPLER_FLAGS, with the 0 defaults resolved (`generate` validates)."""
    default_steps = None if flags["sampler"] == "fhs" else seq_len
    is_k, is_window = flags.get("is_k", 2), flags.get("is_window", 0.2)
    preset = flags.get("is_preset", "")
    if preset:
        if preset not in EDLM_PRESETS:
            raise ConfigError(f"--is_preset={preset}: choose one of {', '.join(EDLM_PRESETS)}")
        if (is_k, is_window) != (SAMPLER_FLAGS["is_k"], SAMPLER_FLAGS["is_window"]):
            raise ConfigError("give --is_preset or --is_k/--is_window, not both")
        is_k, is_window = EDLM_PRESETS[preset]["is_k"], EDLM_PRESETS[preset]["is_window"]
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
        greedy_last=flags.get("greedy_last", False),
        is_k=is_k,
        is_window=is_window,
        is_temp=flags.get("is_temp", 1.0),
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
    energy: EnergyModel | None = None,
) -> dict[str, Any]:
    """Draws `num_samples` completions of `canvas` int32[L]; returns tokens, NFE and timing.

    energy: the energy of the 'edlm' sampler (ignored by the others). 'nfe' counts denoiser
    calls and 'energy_nfe' energy passes, both per batch (an importance step adds K passes).
    """
    length = canvas.shape[0]
    try:
        settings.validate(length)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not getattr(objective, "generates_text", True):
        raise ConfigError(
            "this run trains an energy head, which cannot sample by itself; sample its MDM: "
            "python sample.py --workdir MDM_RUN --sampler edlm --energy nce --energy_workdir THIS_RUN"
        )
    mask = process.mask_id(objective.vocab_size)
    if config.objective == "ar":
        if settings.sampler == "edlm":
            raise ConfigError(
                "--sampler edlm corrects an MDM denoiser; pass an MDM run as --workdir (the AR run goes to --energy_workdir)"
            )
        if np.any(canvas[np.argmax(canvas == mask) :] != mask) and np.any(canvas == mask):
            raise ConfigError("an AR model can only continue a prompt; --infill needs an MDM checkpoint")
        ar = lambda p, ep, k, c: _ar_sampler(objective, length)(p, k, c, settings.token_draw)  # noqa: E731
        fn = jax.jit(precision.under("sampling", ar))
    else:
        if settings.sampler == "edlm" and energy is None:
            raise ConfigError("--sampler edlm needs an energy: pass --energy ar|nce --energy_workdir DIR")
        d = config.diffusion

        def sample(p, ep, k, c):
            sampler = make_sampler(
                settings,
                mask=mask,
                schedule=make_schedule(d.schedule, d.eps, d.power),
                time_agnostic=not config.model.time_conditioning,
                energy=energy.bind(ep) if settings.sampler == "edlm" else None,
            )
            return sampler(denoiser_fn(objective, p), k, c)

        fn = jax.jit(precision.under("sampling", sample))
    energy_params = energy.params if (energy is not None and settings.sampler == "edlm") else None
    base = jax.random.PRNGKey(seed)
    rows, nfe, energy_nfe, seconds = [], 0, 0, 0.0
    for start in tqdm.trange(0, num_samples, batch_size, disable=not progress, desc="sampling", unit="batch"):
        n = min(batch_size, num_samples - start)
        keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(start, start + n))
        canvas_b = jnp.broadcast_to(jnp.asarray(canvas), (n, length))
        t0 = time.perf_counter()
        out = fn(params, energy_params, keys, canvas_b)
        tokens = np.asarray(out.tokens)
        seconds += time.perf_counter() - t0
        rows.append(tokens)
        nfe += int(out.nfe)
        energy_nfe += int(getattr(out, "energy_nfe", 0))
    tokens = np.concatenate(rows) if rows else np.zeros((0, length), np.int32)
    generated = int((canvas == mask).sum()) * num_samples
    return {
        "tokens": tokens,
        "nfe": nfe,
        "energy_nfe": energy_nfe,
        "seconds": seconds,
        "tokens_per_s": generated / max(seconds, 1e-9),
    }


def _energy_how(kind: str, workdir: str) -> str:
    """The command that trains the energy run of `kind`."""
    if kind == "ar":
        return f"python train.py --config configs/ar.py --workdir {workdir or 'runs/ar'}"
    return f"python train.py --config configs/edlm_nce.py --config.init.workdir MDM_RUN --workdir {workdir or 'runs/nce'}"


def _check_energy_source(kind: str, workdir: str) -> None:
    """One-line errors for an unknown energy kind, no --energy_workdir or one without checkpoints."""
    if kind not in ("ar", "nce"):
        raise ConfigError(
            f"--energy={kind!r}: choose ar (the carry-over AR energy of an AR run) or nce (a trained NCE energy run)"
        )
    if not workdir:
        raise ConfigError(
            f"--energy {kind} needs --energy_workdir DIR (the run to read the energy from; train one: {_energy_how(kind, '')})"
        )
    if not (pathlib.Path(workdir) / "checkpoints").is_dir():
        raise CheckpointError(
            f"--energy_workdir {workdir} holds no checkpoint; train the {kind.upper()} energy first: {_energy_how(kind, workdir)}"
        )


def check_energy_flags(flags: dict[str, Any]) -> None:
    """Checks the edlm flags of sample.py before anything is loaded (one-line ConfigErrors)."""
    if flags["sampler"] == "edlm" and not flags["energy"]:
        raise ConfigError("--sampler edlm needs an energy: pass --energy ar|nce --energy_workdir DIR")
    if flags["energy"] and flags["sampler"] != "edlm":
        raise ConfigError(f"--energy is used by --sampler edlm only (got --sampler {flags['sampler']})")
    try:
        check_importance_settings(flags["is_k"], flags["is_window"], flags["is_temp"])
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if flags["is_preset"] and flags["is_preset"] not in EDLM_PRESETS:
        raise ConfigError(f"--is_preset={flags['is_preset']}: choose one of {', '.join(EDLM_PRESETS)}")
    if flags["energy"]:
        _check_energy_source(flags["energy"], flags["energy_workdir"])


def _tokenizer_identity(config) -> str:
    """What fixes the meaning of token ids: the synthetic alphabet or the tokenizer."""
    d = config.data
    return f"synthetic:{d.synthetic_vocab}" if d.source == "synthetic" else f"tokenizer:{d.tokenizer}"


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
    """The energy for `--sampler edlm` and a record of where it came from.

    kind 'ar': the AR run in `workdir` gives the carry-over AR energy (or the plain AR energy
    with carry_over=False); kind 'nce': a trained NCE energy run. The energy run must share the
    denoiser run's tokenizer, vocabulary and sequence length (`denoiser_config`); every
    mismatch is a one-line error naming the fix. An NCE energy is trained against one MDM (its
    `init.workdir`); a warning is logged when `denoiser_workdir` is another run.
    """
    from mdm.data import make_tokenizer
    from mdm.energy.autoregressive import make_ar_energy
    from mdm.energy.network import make_network_energy
    from mdm.objectives.nce import NAME as NCE_NAME
    from mdm.pretrained import load_trained  # imports the loop, which imports this module

    _check_energy_source(kind, workdir)
    trained = load_trained(workdir, step, use_ema)
    config = trained.config
    want = "ar" if kind == "ar" else NCE_NAME
    if config.objective != want:
        raise ConfigError(
            f"--energy_workdir {workdir} is an objective={config.objective!r} run, not {want!r}; "
            + ("pass an AR run (configs/ar.py)" if kind == "ar" else "pass an NCE energy run (configs/edlm_nce.py)")
        )
    mine, theirs = _tokenizer_identity(denoiser_config), _tokenizer_identity(config)
    if mine != theirs:
        raise CheckpointError(
            f"the energy run {workdir} uses {theirs} but the MDM uses {mine}; train the energy on the MDM's data.tokenizer/source"
        )
    vocab = trained.experiment.objective.vocab_size
    mdm_vocab = make_tokenizer(denoiser_config.data).vocab_size
    if vocab != mdm_vocab:
        raise CheckpointError(
            f"the energy run {workdir} has vocabulary {vocab} but the MDM has {mdm_vocab}; train it on the MDM's tokenizer"
        )
    seq_len = denoiser_config.data.seq_len
    if config.data.seq_len != seq_len:
        raise CheckpointError(
            f"the energy run {workdir} was trained with seq_len {config.data.seq_len} but the MDM samples {seq_len}; "
            f"train it with --config.data.seq_len={seq_len}"
        )
    model = trained.experiment.objective.model
    if kind == "ar":
        energy = make_ar_energy(model, params=trained.params, carry_over=carry_over)
    else:
        energy = make_network_energy(model, trained.params)
        source = str(config.init.workdir) if "init" in config else ""
        if denoiser_workdir is not None and source and pathlib.Path(source).resolve() != pathlib.Path(denoiser_workdir).resolve():
            log.warning("the NCE energy %s was trained against the MDM run %s, not %s", workdir, source, denoiser_workdir)
    record = {
        "energy": energy.kind,
        "energy_workdir": str(trained.workdir),
        "energy_step": trained.step,
        "energy_normalised": energy.normalised,
    }
    return energy, record
