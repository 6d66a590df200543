"""The default tiny CPU config: a 4-layer masked diffusion model on the embedded corpus (the
Python standard library's sources) with the shipped 2,048-id BPE tokenizer.

Trains on 2 CPU cores in under 5 minutes and clearly learns; docs/quickstart.md has the
measurements behind the choices. `--config.data.tokenizer=bytes` gives the byte-level model.
"""

from mdm.presets import tiny_cpu_config


def get_config():
    return tiny_cpu_config()
