"""The default tiny CPU config: a 4-layer masked diffusion model on the embedded byte corpus.

Trains on 2 CPU cores in a few minutes and clearly learns (validation bits/byte far below the
corpus' unigram entropy).
"""

from mdm.config import base_config


def get_config():
    c = base_config()
    c.objective = "mdm"
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.attention_chunk = 4  # CPU: keeps each chunk's attention scores in cache
    c.model.mlp_dim = 384
    c.data.source = "embedded"
    c.data.seq_len = 128
    c.train.batch_size = 32
    c.train.num_steps = 1000
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.diffusion.eval_t_samples = 4
    return c
