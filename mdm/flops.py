"""FLOP accounting: the one formula the benchmarks and scaling-law tools use.

Training FLOPs per token = 6 * N + 12 * n_layers * L * d_model, where N counts the weights
every token multiplies (all non-embedding matrices plus the output head, tied or not; the input
embedding lookup is not a matmul) and the second term is the attention scores and weighted sum
(QK^T and AV: 2 matmuls of L x d per token per layer, x2 for multiply-add, x3 for fwd + bwd).
This is the Kaplan/Chinchilla convention with the attention term (as in MD4 and SMDM).
"""

from __future__ import annotations

from mdm.networks import TransformerConfig


def matmul_params(cfg: TransformerConfig) -> int:
    """N: weights in per-token matmuls (attention, MLP, output head; no norms, no embedding lookup,
    no adaLN, which acts once per sequence)."""
    d, f = cfg.d_model, cfg.mlp_dim
    per_layer = 4 * d * d + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def train_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """6 N + 12 n_layers L d (forward + backward)."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * seq_len * cfg.d_model


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """One forward pass: a third of the training FLOPs."""
    return train_flops_per_token(cfg, seq_len) / 3.0
