"""Adapt the AR twin (configs/ar.py) into a masked diffusion model (DiffuLLaMA's recipe).

    python train.py --config configs/ar.py --workdir runs/ar
    python train.py --config configs/adapt.py --workdir runs/adapt

The MDM starts from the AR run's params with the shift (output i predicts token i from the
inputs shifted right, so the AR head serves as is) and anneals its training attention from
causal to bidirectional over `diffusion.anneal_steps` updates. Evaluation and samples always use
the bidirectional model. Any LLaMA-layout run imported with `python -m mdm.convert from-hf`
adapts the same way (set init.workdir and the model shapes it was imported with).
"""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("default.py"))
    c.objective = "mdm"
    c.init.workdir = "runs/ar"
    c.diffusion.shift = True
    c.diffusion.anneal_steps = 200
    return c
