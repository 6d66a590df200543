"""A ~350M-parameter MDM (GPT-2-medium shape: 24 layers, width 1024) for accelerators."""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("gpt2_small.py"))
    c.model.num_layers = 24
    c.model.d_model = 1024
    c.model.num_heads = 16
    c.model.mlp_dim = 2816
    c.optim.lr = 2e-4
    return c
