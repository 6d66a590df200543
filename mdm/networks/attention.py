"""Scaled dot-product attention with one implementation per backend, behind one function.

`attend(q, k, v, kv_lengths_B, mask, implementation, chunk)` is what the backbone calls in training, evaluation and sampling:
- 'xla': `jax.nn.dot_product_attention(implementation='xla')`, f32 [B, N, L, L] scores; the reference for every other path.
- 'chunked': `lean_attention` (XLA ops; the backward recomputes the probabilities from the saved log-sum-exp) over
  `chunk` sequences at a time (faster on CPUs). Block diffusion's [x_t ; x_0] layout runs its own path under
  `jax.checkpoint` instead.
- 'cudnn': cuDNN flash attention (NVIDIA GPUs; bf16/fp16, head dim a multiple of 8 up to 256).
- 'splash': Pallas Splash attention (TPUs; sequence a multiple of 128), block-sparse: tiles the mask hides are skipped.
'auto' (`choose`) picks cuDNN on NVIDIA GPUs, Splash on TPUs, chunked or XLA on CPUs.
Padding is always a suffix of each row, given as per-row key lengths (int32[B]), never a dense mask: cuDNN gets
`key_value_seq_lengths`, Splash segment ids. Which query sees which key is a `MaskSpec`: bidirectional, causal,
block-causal (query block i sees key blocks <= i), or block diffusion's [x_t ; x_0] training layout.
`attend_cached` is block decoding's attention: one block of queries over a preallocated K/V cache of the finished
blocks plus the block itself. Shapes: B batch, L length, N heads, H head dim, C cache length, b block length.
Why lengths and index-computed masks: docs/accelerators.md.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from mdm.errors import ConfigError
from mdm.networks.lean_attention import lean_attention
from mdm.sharding import batch_shards, mesh_axes

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
_CUDNN_DTYPES = ("bfloat16",)  # of the backbone's compute dtypes, those cuDNN flash attention takes
_SPLASH_BLOCK = 128

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Which keys a query may see (before padding): all, the causal prefix, or whole blocks.

    `block_size` > 0 makes it block-causal: query q sees key k iff k // block_size <= q // block_size
    (block_size 1 is causal; block_size L is bidirectional).
    `half` > 0 (with `block_size`) is block diffusion's vectorised training layout over 2 * half
    positions: [x_t ; x_0], both copies at positions 0..half-1. A noisy query sees the noisy keys of
    its own block and the clean keys of earlier blocks; a clean query sees clean keys of its block
    and earlier ones (block-causal), never a noisy one.
    """

    causal: bool = False
    block_size: int = 0
    half: int = 0

    def __post_init__(self):
        if self.causal and self.block_size:
            raise ValueError("MaskSpec: choose causal or block_size, not both")
        if self.half and not self.block_size:
            raise ValueError("MaskSpec: half (the [x_t ; x_0] layout) needs a block_size")

    @property
    def bidirectional(self) -> bool:
        return not self.causal and self.block_size == 0

    def allowed(self, q_idx, k_idx):
        """Elementwise bool: may query q_idx see key k_idx (NumPy or JAX integer arrays)."""
        if self.causal:
            return k_idx <= q_idx
        if self.half:
            q_noisy, k_noisy = q_idx < self.half, k_idx < self.half
            q_block, k_block = (q_idx % self.half) // self.block_size, (k_idx % self.half) // self.block_size
            noisy_sees = (k_noisy & (k_block == q_block)) | (~k_noisy & (k_block < q_block))
            return (q_noisy & noisy_sees) | (~q_noisy & ~k_noisy & (k_block <= q_block))
        if self.block_size:
            return k_idx // self.block_size <= q_idx // self.block_size
        return (q_idx >= 0) & (k_idx >= 0)

    def dense(self, length: int) -> Array:
        """bool[L, L] of `allowed` (the XLA and cuDNN route for block-causal masks and traced ones)."""
        idx = jnp.arange(length)
        return self.allowed(idx[:, None], idx[None, :])


def platform() -> str:
    """'gpu' for NVIDIA GPUs (where cuDNN exists), else JAX's backend name ('cpu', 'tpu', 'rocm')."""
    backend = jax.default_backend()
    if backend == "gpu" and "rocm" in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def choose(requested: str, platform: str, dtype: str, head_dim: int, chunk: int) -> tuple[str, str | None]:
    """(implementation to run, why 'auto' did not take the backend's fast path or None).

    An explicit request the platform or shapes cannot run raises a one-line ConfigError.
    """
    if requested not in IMPLEMENTATIONS:
        raise ConfigError(f"model.attention={requested!r}: choose one of {', '.join(IMPLEMENTATIONS)}")
    cudnn_problem = _cudnn_problem(platform, dtype, head_dim)
    if requested == "cudnn" and cudnn_problem:
        raise ConfigError(f"model.attention='cudnn': {cudnn_problem}; use model.attention=auto or xla")
    if requested == "splash" and platform != "tpu":
        raise ConfigError(f"model.attention='splash' runs on TPUs, this is {platform}; use model.attention=auto or xla")
    if requested == "chunked" and chunk <= 0:
        raise ConfigError("model.attention='chunked' needs model.attention_chunk > 0 (sequences per chunk, e.g. 4)")
    if requested != "auto":
        return requested, None
    if platform == "gpu":
        return ("xla", f"cuDNN flash attention unavailable ({cudnn_problem})") if cudnn_problem else ("cudnn", None)
    if platform == "tpu":
        return "splash", None
    return ("chunked" if chunk > 0 else "xla"), None


def _cudnn_problem(platform: str, dtype: str, head_dim: int) -> str | None:
    if platform != "gpu":
        return f"cuDNN runs on NVIDIA GPUs, this is {platform}"
    if dtype not in _CUDNN_DTYPES:
        return f"it needs model.dtype=bfloat16, not {dtype}"
    if head_dim % 8 or head_dim > 256:
        return f"head dim {head_dim} must be a multiple of 8 and at most 256 (change model.d_model/num_heads)"
    return None


@functools.cache
def _note(message: str) -> None:
    """Logs a fallback once per distinct message (tracing can repeat it)."""
    log.warning(message)


def attend(
    q: Array,
    k: Array,
    v: Array,
    kv_lengths_B: Array | None,
    mask: MaskSpec,
    implementation: str,
    chunk: int = 0,
    visible_LxL: Array | None = None,
) -> Array:
    """softmax(q k^T / sqrt(H) + mask) v over [B, L, N, H] inputs with `implementation`.

    `kv_lengths_B`: int32[B] real tokens per row (padding is a suffix), or None for none. Output
    rows at padding positions are unspecified (every implementation gives finite values).
    `visible_LxL`: a traced bool[L, L] (query, key) mask ANDed with `mask`, shared by rows and
    heads (attention-mask annealing); it goes in densely, so Splash falls back to XLA. Every
    query must see at least one key (its own position).
    """
    if implementation == "chunked" and not mask.half:

        def lean(q_, k_, v_, lengths_B):
            return lean_attention(q_, k_, v_, _visible(mask, q_.shape[1], lengths_B, visible_LxL))

        return _batch_chunked(lean, (q, k, v, kv_lengths_B), chunk, remat=False)
    if visible_LxL is not None:
        if implementation == "splash":
            _note("splash attention takes no traced mask (attention-mask annealing): using xla")
        fn = functools.partial(
            _jax_attention,
            mask=MaskSpec(),
            implementation="cudnn" if implementation == "cudnn" else "xla",
            dense_LxL=visible_LxL & mask.dense(q.shape[1]),
        )
        return _batch_chunked(fn, (q, k, v, kv_lengths_B), chunk if implementation == "chunked" else 0)
    if implementation == "splash" and q.shape[1] % _SPLASH_BLOCK:
        _note(f"splash attention needs a length divisible by {_SPLASH_BLOCK}, got {q.shape[1]}: using xla")
        implementation = "xla"
    if implementation == "cudnn" and mask.block_size and q.shape[1] % 2:
        _note(f"cuDNN with a block-causal mask needs an even length, got {q.shape[1]}: using xla")
        implementation = "xla"
    if mask.half and implementation in ("xla", "chunked") and kv_lengths_B is None:
        halves = functools.partial(vectorised_attention, mask=mask)
        return _batch_chunked(lambda q_, k_, v_: halves(q_, k_, v_), (q, k, v), chunk if implementation == "chunked" else 0)
    if implementation == "splash":
        return _per_shard(functools.partial(splash_attention, mask=mask), q, k, v, kv_lengths_B)
    if implementation == "chunked":  # [x_t ; x_0] with padding
        fn = functools.partial(_jax_attention, mask=mask, implementation="xla")
        return _batch_chunked(fn, (q, k, v, kv_lengths_B), chunk)
    return _jax_attention(q, k, v, kv_lengths_B, mask=mask, implementation=implementation)


def attend_cached(q: Array, k: Array, v: Array, k_cache: Array, v_cache: Array, cache_len: Array) -> Array:
    """Attention of one block's queries [B, b, N, H] over the first `cache_len` (int32 scalar)
    cached keys [B, C, N, H] and all b keys of the block itself (bidirectional within the block).

    Exact: the same keys and values as the full-sequence pass, in another order (XLA path).
    """
    keys, values = jnp.concatenate([k_cache, k], axis=1), jnp.concatenate([v_cache, v], axis=1)
    idx = jnp.arange(keys.shape[1])
    visible = (idx < cache_len) | (idx >= k_cache.shape[1])
    mask = jnp.broadcast_to(visible[None, None, None, :], (1, 1, q.shape[1], keys.shape[1]))
    return jax.nn.dot_product_attention(q, keys, values, mask=mask, implementation="xla")


def vectorised_attention(q: Array, k: Array, v: Array, mask: MaskSpec) -> Array:
    """Block diffusion's [x_t ; x_0] attention (`mask.half` = L) without the [2L, 2L] scores.

    The clean half is block-causal attention over the clean keys; a noisy query's scores are the
    clean keys of earlier blocks (an [L, L] product) and the b noisy keys of its own block
    ([K, b, b] products), joined in one softmax. About 2 L^2 instead of 4 L^2 score entries.
    """
    length, size = mask.half, mask.block_size
    batch, _, heads, head_dim = q.shape
    blocks = length // size
    (qn, qc), (kn, kc), (vn, vc) = ((x[:, :length], x[:, length:]) for x in (q, k, v))
    clean = _jax_attention(qc, kc, vc, None, mask=MaskSpec(block_size=size), implementation="xla")
    scale = 1.0 / math.sqrt(head_dim)
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    idx = jnp.arange(length) // size
    earlier_LxL = idx[None, :] < idx[:, None]
    s_clean = jnp.where(earlier_LxL[None, None], f32("bqnh,bknh->bnqk", qn, kc) * scale, -jnp.inf)  # [B, N, L, L]
    by_block = lambda x: x.reshape(batch, blocks, size, heads, head_dim)  # noqa: E731
    s_own = f32("bjqnh,bjknh->bnjqk", by_block(qn), by_block(kn)) * scale  # [B, N, K, b, b]
    top = jnp.maximum(s_clean.max(-1), s_own.max(-1).reshape(batch, heads, length))  # finite: a block sees itself
    p_clean = jnp.exp(s_clean - top[..., None])
    p_own = jnp.exp(s_own - top.reshape(batch, heads, blocks, size)[..., None])
    total = p_clean.sum(-1) + p_own.sum(-1).reshape(batch, heads, length)  # [B, N, L]
    out = f32("bnqk,bknh->bqnh", p_clean.astype(v.dtype), vc)
    out = out + f32("bnjqk,bjknh->bjqnh", p_own.astype(v.dtype), by_block(vn)).reshape(batch, length, heads, head_dim)
    noisy = (out / total.transpose(0, 2, 1)[..., None]).astype(q.dtype)
    return jnp.concatenate([noisy, clean], axis=1)


def _jax_attention(
    q: Array,
    k: Array,
    v: Array,
    kv_lengths_B: Array | None,
    *,
    mask: MaskSpec,
    implementation: str,
    dense_LxL: Array | None = None,
) -> Array:
    """`jax.nn.dot_product_attention` ('xla' or 'cudnn'); a block-causal mask or `dense_LxL` goes in
    densely (cuDNN turns it into a bias and cannot skip tiles)."""
    dense = mask.dense(q.shape[1])[None, None] if mask.block_size else None
    if dense_LxL is not None:
        dense = dense_LxL[None, None] if dense is None else dense & dense_LxL[None, None]
    lengths = None if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q, k, v, mask=dense, is_causal=mask.causal, key_value_seq_lengths=lengths, implementation=implementation
    )


def _visible(mask: MaskSpec, length: int, kv_lengths_B: Array | None, visible_LxL: Array | None = None) -> Array | None:
    """bool [B or 1, 1, L, L] of the keys each query sees (mask, padding and a traced [L, L]
    pattern), or None for all."""
    visible = None if mask.bidirectional else mask.dense(length)[None, None]
    if visible_LxL is not None:
        visible = visible_LxL[None, None] if visible is None else visible & visible_LxL[None, None]
    if kv_lengths_B is not None:
        keys = jnp.arange(length)[None, None, None, :] < kv_lengths_B[:, None, None, None]
        visible = keys if visible is None else visible & keys
    return visible


def _per_shard(fn, q: Array, k: Array, v: Array, kv_lengths_B: Array | None) -> Array:
    """`fn(q, k, v, lengths)` on each device's [B/shards, L, N/shards, H] block under the ambient
    mesh (a Pallas kernel cannot be partitioned by XLA), or directly when there is no mesh.
    Batch rows split like the 'batch' axis and heads like 'heads'; attention never mixes either."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, kv_lengths_B)
    batch_axes, head_axes = mesh_axes("batch"), mesh_axes("heads")
    spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)
    lengths = jnp.full(q.shape[:1], q.shape[1], jnp.int32) if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32)
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(batch_axes)), out_specs=spec, check_vma=False
    )(q, k, v, lengths)


def _batch_chunked(fn, args: tuple, chunk: int, remat: bool = True) -> Array:
    """`fn(*args)` over batch chunks of about `chunk` rows, each under `jax.checkpoint` if `remat`.

    Each device processes its rows `chunk` at a time (the largest divisor of its local batch not
    above it). Chunk i holds rows i, i + m, i + 2m, ... (m chunks), so every chunk spans all batch
    shards equally and the loop over chunks needs no communication.
    """
    q = args[0]
    batch = q.shape[0]
    shards = batch_shards()
    local = batch // shards if batch % shards == 0 else batch
    if chunk <= 0 or chunk >= local:
        return fn(*args)
    size = max(d for d in range(1, chunk + 1) if local % d == 0)
    m = local // size  # chunks; divides the local batch, so row i + j m lives on shard j m // local
    split = lambda x: None if x is None else x.reshape(batch // m, m, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
    body = lambda a: fn(*a)  # noqa: E731
    out = jax.lax.map(jax.checkpoint(body) if remat else body, tuple(split(x) for x in args))
    return out.swapaxes(0, 1).reshape(q.shape)


def splash_attention(q: Array, k: Array, v: Array, kv_lengths_B: Array | None, mask: MaskSpec, interpret: bool = False) -> Array:
    """Pallas Splash attention over [B, L, N, H] (L a multiple of 128); `interpret=True` runs the
    kernel on any backend (slowly), which is how CPU tests check it. Padding becomes segment ids
    (real tokens 1, the padding suffix 0): padded queries see only padding, real ones never do."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    batch, length, heads, head_dim = q.shape
    kernel = _splash_kernel(length, heads, mask, interpret)
    q = q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype)  # the kernel does not scale the logits
    q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))  # [B, N, L, H]
    if kv_lengths_B is None:
        out = jax.vmap(kernel)(q, k, v)
    else:
        ids_BxL = (jnp.arange(length)[None, :] < kv_lengths_B[:, None]).astype(jnp.int32)
        out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=sk.SegmentIds(q=s_, kv=s_)))(q, k, v, ids_BxL)
    return out.swapaxes(1, 2)


@functools.cache
def _splash_kernel(length: int, heads: int, mask: MaskSpec, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    class SpecMask(sm.Mask):
        """`mask.allowed` as a lazy Splash mask: tiles are computed when the kernel is built, and
        tiles it hides entirely are skipped."""

        @property
        def shape(self):
            return (length, length)

        def __getitem__(self, idx):
            rows, cols = (sm._fill_slice(i, length) for i in idx)
            return np.asarray(mask.allowed(np.arange(rows.start, rows.stop)[:, None], np.arange(cols.start, cols.stop)[None, :]))

        def __eq__(self, other):
            return isinstance(other, SpecMask) and other.shape == self.shape

        def __hash__(self):
            return hash((length, mask))

    one = sm.FullMask((length, length)) if mask.bidirectional else SpecMask()
    block = max(b for b in (512, 256, 128) if length % b == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():  # built while tracing: keep its mask arrays concrete
        return sk.make_splash_mha_single_device(sm.MultiHeadMask([one] * heads), block_sizes=sizes, interpret=interpret)
