"""Meshes and shardings: equality with one device, real sharding, clear mesh errors, a rule for every logical axis.

The multi-device checks run `sharding_check.py` in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX starts).
"""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec

from mdm.config import base_config
from mdm.energy.network import EnergyNetwork
from mdm.errors import ConfigError
from mdm.networks import Transformer, TransformerConfig
from mdm.sharding import DEFAULT_RULES, make_mesh, mesh_shape, rules_from_config

HERE = pathlib.Path(__file__).resolve().parent


def _logical_names(model, time=False) -> set[str]:
    """Every logical axis name in the PartitionSpecs of `model`'s params (shapes only, no allocation)."""
    t = jnp.ones((1,)) if time else None
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), t))
    names = set()
    for spec in jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=lambda x: isinstance(x, PartitionSpec)):
        for entry in spec:
            names.update([entry] if isinstance(entry, str) else entry or ())
    return names


def _network_logical_names() -> dict[str, set[str]]:
    cfg = dict(vocab_size=11, num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
    return {
        "time-conditioned transformer, untied head": _logical_names(
            Transformer(TransformerConfig(**cfg, time_conditioning=True, tie_embeddings=False)), time=True
        ),
        "causal transformer": _logical_names(Transformer(TransformerConfig(**cfg, causal=True))),
        "energy network": _logical_names(EnergyNetwork(TransformerConfig(**cfg))),
    }


def test_every_logical_axis_of_every_network_has_a_rule():
    """DEFAULT_RULES (and config's mesh.rules, made from it) name every logical axis of every
    network's params; dropping any one of those rules is caught."""
    used = _network_logical_names()
    assert {"pair", "energy", "adaln", "time", "vocab"} <= set().union(*used.values())  # every network was seen
    config_rules = rules_from_config(base_config().mesh.rules)
    assert dict(config_rules) == dict(DEFAULT_RULES)
    for rules in (DEFAULT_RULES, config_rules):
        known = {name for name, _ in rules}
        for network, names in used.items():
            assert names <= known, f"{network}: no rule for {sorted(names - known)}"
    for dropped in set().union(*used.values()):  # the check above fails when a rule is removed
        known = {name for name, _ in DEFAULT_RULES if name != dropped}
        assert any(not names <= known for names in used.values())


def test_mesh_shape_fills_the_free_axis_and_rejects_mismatches():
    assert mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="has 4 devices but 8 are present"):
        mesh_shape((2, 2, 1), 8)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        mesh_shape((3, -1, 1), 8)
    with pytest.raises(ConfigError, match="at most one -1"):
        mesh_shape((-1, -1, 1), 8)
    assert dict(make_mesh((-1, 1, 1)).shape) == {"data": len(jax.devices()), "fsdp": 1, "tensor": 1}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mesh_runs")


@pytest.fixture(scope="module")
def eight_devices(runs_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharding_check.py"), str(runs_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=HERE,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", ["(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(1, 2, 4)", "(1, 8, 1)"])
def test_loss_and_gradients_equal_the_single_device_values(eight_devices, mesh):
    rec = eight_devices[mesh]
    assert rec["loss_rel_err"] < 1e-6
    assert rec["grad_max_abs_err"] < 1e-5


def test_params_and_optimizer_state_are_really_sharded(eight_devices):
    # embedding [V + 1 = 12, d = 64] has logical axes (vocab -> tensor, embed -> fsdp).
    expect = {"(8, 1, 1)": [12, 64], "(2, 4, 1)": [12, 16], "(2, 2, 2)": [6, 32], "(1, 2, 4)": [3, 32], "(1, 8, 1)": [12, 8]}
    for mesh, shard in expect.items():
        assert eight_devices[mesh]["emb_shard"] == shard, mesh
        assert eight_devices[mesh]["mu_shard"] == shard, mesh  # Adam moments follow their params
    assert eight_devices["(8, 1, 1)"]["param_bytes_ratio"] == pytest.approx(1.0)
    # FSDP over 8 devices: per-device parameter bytes shrink about 8-fold (norm scales stay whole).
    assert eight_devices["(1, 8, 1)"]["param_bytes_ratio"] > 7.5


def test_a_checkpoint_moves_between_meshes(eight_devices, runs_dir):
    """Saved on (8,1,1), resumed on (2,2,2) (in the subprocess) and on this one device (here):
    the resumed steps match a straight run on the new mesh."""
    from mdm.loop import run
    from sharding_check import resume_config, train_losses

    assert eight_devices["resume_rel_err"] < 1e-5
    run(resume_config((1, 1, 1)), runs_dir / "single")
    run(resume_config((1, 1, 1)), runs_dir / "single_straight")
    a, b = train_losses(runs_dir / "single"), train_losses(runs_dir / "single_straight")
    assert max(abs(a[s] - b[s]) / abs(b[s]) for s in range(4, 7)) < 1e-5
