"""FLOP and parameter accounting: the one formula the benchmarks and scaling-law tools use.

Training FLOPs per token (forward + backward), for either objective:

    F_tok = 6 N_mm + 12 n_layers L d_model

- N_mm (`matmul_params`) counts the weights every token multiplies: per layer the q, k, v, o
  projections (4 d^2) and the SwiGLU matrices (3 d f), plus the output head (d V, tied or not).
  The input embedding is a lookup, not a matmul; norms, RoPE and the adaLN of time conditioning
  (once per sequence) are not counted. 2 FLOPs per multiply-add, x3 for forward + backward.
- 12 n_layers L d is attention's QK^T and AV: two L x d matmuls per token per layer (2 d L each,
  forward), x3 for training. It is the same for the bidirectional MDM and the causal AR model:
  this library's attention (`jax.nn.dot_product_attention`, XLA implementation) computes the full
  L x L score matrix and masks it, so the causal model does the masked-out half of the work too.
  `causal_skip=True` gives the count for a kernel that skips masked blocks (attention term / 2).

This is the Kaplan/Chinchilla convention with the attention and head terms (as in MD4, and von
Ruette et al.'s 6P + 12 L D N). SMDM's budgets use `6 N_nonemb` per token instead
(`smdm_flops_per_token`): no attention, no head.

Checked against XLA (tests/test_flops.py): the dot FLOPs of the compiled train step equal
F_tok x tokens exactly; XLA's total (`cost_analysis()["flops"]`) is higher by the non-matmul work
(softmax over the L scores and the V logits, norms, SiLU, RoPE, the optimizer update), which is
1.5-2 % of F_tok at d_model=128 and 5-9 % at d_model=16-32. The formula counts model FLOPs:
recomputation (`model.remat`, and the checkpointed chunks of `model.attention_chunk` > 0, which
redo the forward scores) adds hardware FLOPs it leaves out. With `attention_chunk` > 0, XLA's cost
analysis is no check either: it counts the body of the chunks' `lax.map` loop once.

Parameter counts: `nonembedding_params` is SMDM's N (every parameter except the input embedding
and an untied output head: matrices and norm gains, adaLN and the time MLP when time-conditioned);
`total_params` is what the initialised model holds.
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
    per_layer = 4 * d * d + 3 * d * f
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
