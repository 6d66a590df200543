"""Masked consistency distillation of the default tiny model (configs/default.py) into a few-step student.

    python train.py --config configs/mcd.py --workdir runs/mcd --config.init.workdir=runs/default

The teacher run is required (the run stops with one line naming --config.init.workdir otherwise);
the student starts from its EMA params and keeps its model, data and schedule settings. Four
rounds halve the sampling steps from the teacher's 128 (= seq_len, its ancestral default) to a
student made for `sample.py --sampler ancestral --steps 8`.
"""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("default.py"))
    c.objective = "mcd"
    c.init.workdir = ""  # the teacher run: give it on the command line
    c.mcd.target = "consistency"
    c.mcd.teacher_steps = 128
    c.mcd.rounds = 4  # 128 -> 8 steps
    c.mcd.round_steps = 250
    c.train.num_steps = 1000  # = rounds * round_steps
    # DCD's recipe scaled to this model: constant learning rate after a short warm-up (no decay).
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 50
    c.optim.min_lr_ratio = 1.0
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.999
    return c
