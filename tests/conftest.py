"""Suite-wide settings: implicit rank promotion is an error, so every broadcast in the library is explicit.

The environment variable carries the setting into the scripts tests run as subprocesses."""

import os

os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
