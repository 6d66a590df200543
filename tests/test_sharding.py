"""Meshes and shardings: equality with one device, real sharding, clear mesh errors.

The multi-device checks run `sharding_check.py` in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX starts).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from mdm.errors import ConfigError
from mdm.sharding import make_mesh, mesh_shape

HERE = pathlib.Path(__file__).resolve().parent


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
