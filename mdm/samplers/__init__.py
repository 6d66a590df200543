"""Samplers: pure, jit-compiled functions over a denoiser `f(tokens, t) -> logits`."""

from mdm.samplers.ancestral import ancestral_sample

__all__ = ["ancestral_sample"]
