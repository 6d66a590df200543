"""From plain settings to a sampler: `SamplerSettings` (everything that decides a sample besides
the model, the canvas and the seed), its validation, and `make_sampler`, which turns it into a
function `(denoiser, keys_B, canvas_BxL) -> SampleOutput`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from mdm.samplers.ancestral import ancestral_sample
from mdm.samplers.autoregressive import autoregressive_sample
from mdm.samplers.base import TokenSampling
from mdm.categorical import METHODS
from mdm.samplers.confidence import ORDERS, confidence_sample
from mdm.samplers.first_hitting import first_hitting_sample
from mdm.samplers.importance import check_importance_settings, importance_sample
from mdm.schedules import Schedule
from mdm.time_grids import GRIDS

SAMPLERS = ("fhs", "ancestral", "confidence", "edlm", "autoregressive")
# EDLM importance-sampling presets (K candidates, window w): the paper's speed runs and its Table 3.
EDLM_PRESETS = {"speed": {"is_k": 2, "is_window": 0.2}, "quality": {"is_k": 2, "is_window": 1.0}}


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides a sample besides the model, the canvas and the seed.

    steps: ancestral/edlm grid steps / confidence calls (per block in block decoding); for 'fhs',
    None = exact (one token per call), or a call budget (k = ceil(n / steps_left) tokens per call). tokens_per_step: fixed k
    for fhs. is_k, is_window, is_temp: EDLM's candidates K per step, window w (importance
    sampling at t >= 1 - w; 0.2 is the speed preset, 1 the quality preset) and energy temperature.
    """

    sampler: str = "fhs"
    steps: int | None = None
    tokens_per_step: int = 1
    grid: str = "uniform"
    cache: bool = True
    order: str = "top_prob"
    block_length: int | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    categorical: str = "exact"
    greedy_last: bool = False  # ancestral: argmax at the last step (few-step distilled students)
    is_k: int = 2
    is_window: float = 0.2
    is_temp: float = 1.0
    cfg_scale: float = 0.0  # SMDM's unsupervised classifier-free guidance w (0: none)
    kv_cache: bool = True  # block decoding: the exact K/V cache of finished blocks (false: recompute every call)
    min_length: int = 0  # no EOS at canvas positions below this
    stop_at_eos: bool = False  # PAD after the first generated EOS; block decoding also stops the row there

    def validate(self, seq_len: int) -> None:
        """Raises ValueError naming the bad setting and its allowed values."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.sampler in ("ancestral", "confidence", "edlm") and (self.steps is None or self.steps < 1):
            raise ValueError(f"the {self.sampler} sampler needs steps >= 1 (e.g. --steps {seq_len})")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.tokens_per_step < 1:
            raise ValueError(f"tokens_per_step={self.tokens_per_step} must be >= 1")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose one of {', '.join(GRIDS)}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown confidence order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if self.block_length is not None and not 1 <= self.block_length <= seq_len:
            raise ValueError(f"block_length={self.block_length} must lie in [1, {seq_len}]")
        if self.sampler == "confidence" and self.steps is not None:
            blocks = -(-seq_len // (self.block_length or seq_len))
            if self.steps % blocks:
                raise ValueError(f"steps={self.steps} must be a multiple of the {blocks} blocks of length {self.block_length}")
        if self.categorical not in METHODS:
            raise ValueError(f"unknown categorical method {self.categorical!r}; choose one of {', '.join(METHODS)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"top_k={self.top_k} must be >= 0 and top_p={self.top_p} in (0, 1]")
        check_importance_settings(self.is_k, self.is_window, self.is_temp)
        if self.min_length < 0:
            raise ValueError(f"min_length={self.min_length} must be >= 0 (0: EOS allowed anywhere)")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 0 (0: no guidance; SMDM uses 0.5 to 2)")

    @property
    def stop_rule(self) -> str:
        """How a sample's length is decided, in words (recorded beside samples)."""
        rule = "first EOS (PAD after it)" if self.stop_at_eos else "fixed length"
        return rule + (f", no EOS before position {self.min_length}" if self.min_length else "")

    @property
    def token_draw(self) -> TokenSampling:
        return TokenSampling(self.temperature, self.top_k, self.top_p, self.categorical)


def make_sampler(
    settings: SamplerSettings,
    *,
    mask: int,
    schedule: Schedule | None,
    time_agnostic: bool = True,
    energy: Callable | None = None,
) -> Callable:
    """(denoiser, keys_B, canvas int[B, L]) -> SampleOutput for the chosen sampler.

    schedule: the masking schedule (None only for 'autoregressive', which needs none).
    energy: for 'edlm' only, (x0_NxL, xt_NxL, denoiser_logp_N) -> E_N (see `mdm.energy`).
    """
    draw = settings.token_draw
    if settings.sampler == "autoregressive":
        return functools.partial(autoregressive_sample, mask=mask, draw=draw)
    if settings.sampler == "edlm":
        if energy is None:
            raise ValueError("the edlm sampler needs an energy: pass --energy ar|nce --energy_workdir DIR")
        return functools.partial(
            importance_sample,
            energy=energy,
            mask=mask,
            schedule=schedule,
            steps=settings.steps,
            grid=settings.grid,
            window=settings.is_window,
            num_candidates=settings.is_k,
            temperature=settings.is_temp,
            cache=settings.cache and time_agnostic,
            draw=draw,
        )
    if settings.sampler == "fhs":
        return functools.partial(
            first_hitting_sample,
            mask=mask,
            schedule=schedule,
            tokens_per_step=settings.tokens_per_step,
            steps=settings.steps,
            draw=draw,
        )
    if settings.sampler == "ancestral":
        return functools.partial(
            ancestral_sample,
            mask=mask,
            schedule=schedule,
            steps=settings.steps,
            grid=settings.grid,
            cache=settings.cache and time_agnostic,
            draw=draw,
            greedy_last=settings.greedy_last,
        )
    return functools.partial(
        confidence_sample,
        mask=mask,
        schedule=schedule,
        steps=settings.steps,
        order=settings.order,
        block_length=settings.block_length,
        draw=draw,
    )
