"""Ready-made configs that installed code (the notebooks) needs without the repository's configs/."""

from __future__ import annotations

import ml_collections

from mdm.config import base_config


def tiny_cpu_config() -> ml_collections.ConfigDict:
    """configs/default.py's model: a 4-layer MDM on the embedded corpus with the shipped 2,048-id
    BPE (`stdlib-bpe`), a few minutes on 2 CPU cores (kept here, in the package, so installed code
    such as the notebooks has it)."""
    c = base_config()
    c.objective = "mdm"
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.attention_chunk = 4  # CPU: keeps each chunk's attention scores in cache
    c.model.mlp_dim = 384
    c.data.source = "embedded"
    c.data.tokenizer = "stdlib-bpe"  # about 3 bytes a token: 2.6x the text of bytes per step (docs/quickstart.md)
    c.data.seq_len = 128
    c.train.batch_size = 32
    c.train.num_steps = 500
    c.train.eval_every = 125
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.diffusion.eval_t_samples = 4
    return c
