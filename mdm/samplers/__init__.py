"""Samplers: pure, jit-compiled functions over a denoiser `f(tokens, t) -> logits`.

`make_sampler(settings)` (in `settings.py`) turns plain `SamplerSettings` into a function
`(denoiser, keys_B, canvas_BxL) -> SampleOutput`, so scripts and the training loop pick a
sampler by name. One module per sampler: `first_hitting` (exact FHS), `ancestral`,
`confidence`, `importance` (EDLM, needs an energy) and `autoregressive` (the AR twin). `block`
runs one of them inside each block of a block diffusion model; `eos` holds the variable-length rules.
"""

from __future__ import annotations

from mdm.categorical import filter_logits, sample_categorical
from mdm.samplers.ancestral import ancestral_sample
from mdm.samplers.autoregressive import autoregressive_sample
from mdm.samplers.block import BlockSampleOutput, block_sample
from mdm.samplers.base import Denoiser, SampleOutput, TokenDraw, TokenSampling
from mdm.samplers.confidence import confidence_sample
from mdm.samplers.first_hitting import first_hitting_sample
from mdm.samplers.importance import ImportanceSampleOutput, importance_sample
from mdm.samplers.settings import EDLM_PRESETS, SAMPLERS, SamplerSettings, make_sampler
from mdm.time_grids import time_grid

__all__ = [
    "BlockSampleOutput",
    "block_sample",
    "Denoiser",
    "EDLM_PRESETS",
    "ImportanceSampleOutput",
    "SampleOutput",
    "SamplerSettings",
    "TokenDraw",
    "TokenSampling",
    "SAMPLERS",
    "ancestral_sample",
    "autoregressive_sample",
    "confidence_sample",
    "filter_logits",
    "first_hitting_sample",
    "importance_sample",
    "make_sampler",
    "sample_categorical",
    "time_grid",
]
