"""Block decoding: a block diffusion model generates block by block, any sampler inside each block.

Blocks of b tokens are generated left to right. Inside block j, a full-sequence sampler (exact FHS by default,
ancestral or confidence) fills that block's masked positions with the logits the model gives for it given the
finished blocks (`BlockDenoiser.logits`); the finished block is then committed with one call (`commit`: with the
exact K/V cache, one pass over its b tokens). The leading blocks with nothing to generate (a prompt) go in at the
start with one pass. Row r's block j uses fold_in(key_r, j), so a row is the same alone or in any batch.
Variable length: with `stop_at_eos`, a row whose finished block holds a generated EOS stops. Its later blocks
become PAD without any call and its NFE (`row_nfe`) stops growing; the loop ends once every row has stopped or
the last block is done (one jitted while loop, static shapes). Stopped rows still ride along in the batched
calls of the others. Rows are trimmed after their first EOS (`mdm.samplers.eos`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from mdm.process import BlockDenoiser
from mdm.samplers.base import SampleOutput
from mdm.samplers.eos import suppressing_eos, trim_after_eos

# (denoiser, keys uint32[B, 2], block int[B, b]) -> SampleOutput: a full-sequence sampler run on one block
InnerSampler = Callable[..., SampleOutput]


class BlockSampleOutput(NamedTuple):
    tokens: Array  # int32[B, L], no mask left (PAD after a stopped row's EOS)
    nfe: Array  # int32 scalar: model calls for the whole batch (start, within-block calls, commits)
    row_nfe: Array  # int32[B]: the calls each row needed (it stops counting once the row has stopped)


def first_open_block(tokens_BxL: Array, mask: int, block_size: int) -> Array:
    """int32 scalar: the first block with a masked position in any row (K when none has one)."""
    batch, length = tokens_BxL.shape
    open_K = (tokens_BxL == mask).reshape(batch, length // block_size, block_size).any(-1).any(0)
    return jnp.where(open_K.any(), jnp.argmax(open_K), open_K.shape[0]).astype(jnp.int32)


def block_sample(
    model: BlockDenoiser,
    keys_B: Array,
    tokens_BxL: Array,
    *,
    block_size: int,
    mask: int,
    inner: InnerSampler,
    eos: int | None = None,
    pad: int = 0,
    stop_at_eos: bool = False,
    min_length: int = 0,
) -> BlockSampleOutput:
    """Fills every `mask` position of `tokens_BxL` block by block (L a multiple of block_size)."""
    batch, length = tokens_BxL.shape
    if length % block_size:
        raise ValueError(f"the canvas length {length} is not a multiple of the block size {block_size}")
    if (stop_at_eos or min_length > 0) and eos is None:
        raise ValueError("stop_at_eos and min_length need the EOS id")
    generated_BxL = tokens_BxL == mask
    first_block = first_open_block(tokens_BxL, mask, block_size)
    context = model.start(tokens_BxL, first_block * block_size)
    offsets_b = jnp.arange(block_size)

    def cond(carry):
        j, _, _, active, _, _ = carry
        return (j < length // block_size) & active.any()

    def body(carry):
        j, x, context, active, nfe, row_nfe = carry
        first = j * block_size
        block = jax.lax.dynamic_slice_in_dim(x, first, block_size, axis=1)
        block = jnp.where(active[:, None], block, pad)  # a stopped row has nothing left to generate

        def denoiser(block_Bxb, t_B):
            del t_B  # the network is time-agnostic
            return model.logits(block_Bxb, first, context)

        if eos is not None:
            denoiser = suppressing_eos(denoiser, first + offsets_b, eos, min_length)
        out = inner(denoiser, jax.vmap(lambda k: jax.random.fold_in(k, j))(keys_B), block)
        context = model.commit(out.tokens, first, context)
        calls = out.nfe + 1
        row_nfe = row_nfe + jnp.where(active, calls, 0)
        if stop_at_eos:
            new_eos = (out.tokens == eos) & jax.lax.dynamic_slice_in_dim(generated_BxL, first, block_size, axis=1)
            active = active & ~new_eos.any(-1)
        x = jax.lax.dynamic_update_slice_in_dim(x, out.tokens.astype(x.dtype), first, axis=1)
        return j + 1, x, context, active, nfe + calls, row_nfe

    carry = (first_block, tokens_BxL, context, jnp.ones((batch,), bool), jnp.int32(1), jnp.ones((batch,), jnp.int32))
    _, x, _, _, nfe, row_nfe = jax.lax.while_loop(cond, body, carry)
    x = jnp.where(x == mask, pad, x)  # blocks no row reached: every row had stopped
    if stop_at_eos:
        x = trim_after_eos(x, generated_BxL, eos, pad)
    return BlockSampleOutput(x, nfe, row_nfe)
