"""Block diffusion (BD3LM) on the default data: configs/default.py's model and recipe, autoregressive
over blocks of 16 tokens and masked diffusion within each (block.size = seq_len is the MDM, 1 the AR)."""

from mdm.presets import tiny_cpu_config


def get_config():
    c = tiny_cpu_config()
    c.objective = "bd3lm"
    c.block.size = 16
    return c
