"""The configuration of MD4's text8 benchmark model, for like-for-like speed comparisons.

4 layers, width 256 (4 heads of 64), GLU hidden 704, adaLN-zero time conditioning, sequence
256, batch 32 and a 27-token vocabulary (a 24-symbol synthetic language plus BOS/EOS/PAD).
"""

from mdm.config import base_config


def get_config():
    c = base_config()
    c.model.num_layers = 4
    c.model.d_model = 256
    c.model.num_heads = 4
    c.model.attention_chunk = 4  # CPU: keeps each chunk's attention scores in cache
    c.model.mlp_dim = 704
    c.model.time_conditioning = True
    c.data.source = "synthetic"
    c.data.synthetic_vocab = 24
    c.data.seq_len = 256
    c.train.batch_size = 32
    c.optim.lr = 3e-4
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.9999
    return c
