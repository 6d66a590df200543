"""EDLM-NCE: train an energy network by NCE against a frozen MDM (the default model's shapes).

    python train.py --config configs/edlm_nce.py --config.init.workdir runs/default --workdir runs/nce

`init.workdir` names the MDM run: its (EMA) params become the frozen denoiser that draws the
negatives, and its backbone initialises the energy network. The model.* and data.* settings
must be that run's (these are configs/default.py's; override them to match another run). The
optimiser follows the official code (AdamW, lr 3e-4, no weight decay) at the default batch.
Sample with: python sample.py --workdir runs/default --sampler edlm --energy nce --energy_workdir runs/nce
"""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("default.py"))
    c.objective = "edlm_nce"
    c.nce.num_negatives = 1
    c.optim.lr = 3e-4
    c.optim.weight_decay = 0.0
    c.optim.b2 = 0.999
    c.optim.warmup_steps = 50
    c.optim.min_lr_ratio = 1.0  # constant after warm-up, as the official code
    c.train.num_steps = 1000
    c.sample.num_samples = 0  # an energy cannot sample by itself (use sample.py --sampler edlm)
    return c
