"""A GPT-2-small-shaped (~125M parameters) MDM for accelerators: 12 layers, width 768, GPT-2 BPE.

Set --config.data.tokenizer=/path/to/gpt2/tokenizer.json (50,257 tokens + specials) and a real
corpus, e.g. --config.data.source=tfds --config.data.tfds_name=lm1b. Batch 256 x 1024 tokens.
"""

from mdm.config import base_config


def get_config():
    c = base_config()
    c.objective = "mdm"
    c.model.num_layers = 12
    c.model.d_model = 768
    c.model.num_heads = 12
    c.model.mlp_dim = 2048  # SwiGLU: 3 * 768 * 2048 ~ the 2 * 768 * 3072 of a GELU MLP
    c.model.dtype = "bfloat16"
    c.data.seq_len = 1024
    c.train.batch_size = 256
    c.train.num_steps = 100_000
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.eval_batches = 16
    c.train.checkpoint_every = 5_000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2_500
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.1
    c.optim.ema_decay = 0.9999
    return c
