"""The data section of the real config schema, for data tests (seq_len 16 unless overridden)."""

import ml_collections

from mdm.config import base_config


def data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().data
    cfg.seq_len = 16
    for key, value in overrides.items():
        cfg[key] = value
    return cfg
