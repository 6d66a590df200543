"""The SDTT-style stochastic-target baseline with the recipe of configs/mcd.py (same rounds, steps and data).

python train.py --config configs/sdtt.py --workdir runs/sdtt --config.init.workdir=runs/default
"""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("mcd.py"))
    c.mcd.target = "stochastic"
    c.mcd.stochastic_steps = 2  # SDTT: two teacher ancestral steps per student step
    return c
