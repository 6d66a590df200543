"""The AR twin of configs/default.py: same backbone (causal), data, optimiser and units."""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("default.py"))
    c.objective = "ar"
    return c
