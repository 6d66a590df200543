"""FLOP and parameter accounting: the one formula the benchmarks and scaling-law tools use.

Training FLOPs per token (forward + backward): F_tok = 6 N_mm + 12 n_layers L d_model.
N_mm (`matmul_params`) counts the weights every token multiplies (per layer q, k, v, o: 4 d^2;
SwiGLU: 3 d f; the output head d V, tied or not); the embedding lookup, norms, RoPE and the
once-per-sequence adaLN are not counted. 12 n_layers L d is attention's QK^T and AV, the same for
the bidirectional MDM and the causal AR model (the attention computes the full L x L scores and
masks them); `causal_skip=True` halves it, the count for a kernel that skips masked blocks.
This is the Kaplan/Chinchilla convention with attention and head terms (as in MD4 and von Ruette
et al.'s 6P + 12 L D N); SMDM's budgets use 6 N_nonemb (`smdm_flops_per_token`, convention "6n").
Model FLOPs only: recomputation (remat, chunked attention) is not counted.

Parameter counts: `nonembedding_params` is SMDM's N (all but the input embedding and an untied
head); `total_params` is what the initialised model holds. The formula equals the dot FLOPs of
the compiled train step exactly (tests/test_flops.py; measurements in docs/flops.md).
"""

from __future__ import annotations

from mdm.errors import ConfigError
from mdm.networks import TransformerConfig

FLOP_CONVENTIONS = ("full", "6n")  # F_tok above, or SMDM's 6 N_nonemb
TIME_EMBED_DIM = 256  # width of the sinusoidal t embedding fed to the time MLP (networks.transformer)


def matmul_params(cfg: TransformerConfig) -> int:
    """N_mm: weights in per-token matmuls (attention, MLP, output head; no norms, no embedding lookup,
    no adaLN, which acts once per sequence)."""
    d, f = cfg.d_model, cfg.mlp_dim
    kv = 2 * d * cfg.kv_heads * cfg.head_dim  # K and V projections (grouped-query attention shrinks them)
    per_layer = 2 * d * d + kv + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def nonembedding_params(cfg: TransformerConfig) -> int:
    """SMDM's N: n_layers (4 d^2 + 3 d f + 2 d) + d, plus the adaLN and time-MLP parameters of a
    time-conditioned model; everything but the (V+1) x d input embedding and an untied head."""
    d, f = cfg.d_model, cfg.mlp_dim
    n = cfg.num_layers * (4 * d * d + 3 * d * f + 2 * d) + d
    if cfg.time_conditioning:
        n += cfg.num_layers * (d * 6 * d + 6 * d)  # per-block adaLN: shift/scale/gate x 2
        n += d * 2 * d + 2 * d  # final adaLN: shift/scale
        n += (TIME_EMBED_DIM * d + d) + (d * d + d)  # time MLP: two dense layers with biases
    return n


def embedding_params(cfg: TransformerConfig) -> int:
    """The input embedding, (V + 1) x d (the mask id has a row), plus V x d for an untied head."""
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    return (cfg.vocab_size + 1) * cfg.d_model + head


def total_params(cfg: TransformerConfig) -> int:
    """Every parameter of the initialised model."""
    return nonembedding_params(cfg) + embedding_params(cfg)


def attention_flops_per_token(cfg: TransformerConfig, seq_len: int, causal_skip: bool = False) -> float:
    """12 n_layers L d (forward + backward QK^T and AV); halved for a causal model when
    `causal_skip` (a kernel that skips masked blocks; this library's does not)."""
    flops = 12.0 * cfg.num_layers * seq_len * cfg.d_model
    return flops / 2.0 if (causal_skip and cfg.causal) else flops


def train_flops_per_token(cfg: TransformerConfig, seq_len: int, causal_skip: bool = False) -> float:
    """F_tok = 6 N_mm + 12 n_layers L d (forward + backward)."""
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, causal_skip)


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int, causal_skip: bool = False) -> float:
    """One forward pass: a third of the training FLOPs."""
    return train_flops_per_token(cfg, seq_len, causal_skip) / 3.0


def smdm_flops_per_token(cfg: TransformerConfig) -> float:
    """SMDM's convention C = 6 N D: 6 x non-embedding params, no attention or head term."""
    return 6.0 * nonembedding_params(cfg)


def flops_per_token(cfg: TransformerConfig, seq_len: int, convention: str = "full") -> float:
    """Training FLOPs per token under `convention`: 'full' (F_tok) or '6n' (SMDM)."""
    if convention == "full":
        return train_flops_per_token(cfg, seq_len)
    if convention == "6n":
        return smdm_flops_per_token(cfg)
    raise ConfigError(f"FLOP convention {convention!r}: choose one of {', '.join(FLOP_CONVENTIONS)}")
