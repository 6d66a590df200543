"""Two processes on this machine (CPU, localhost coordinator) train one model through train.py.

Each process owns 2 simulated CPU devices and loads only its shard of the data; the global
batch is assembled from both. The first step's loss must equal the loss of one process
computing the same step on the concatenation of the two shards' batches.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm import data as mdm_data
from mdm.cli import apply_override, load_config
from mdm.experiment import build
from mdm.metrics import read_metrics
from mdm.state import init_state, make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {
    "model.num_layers": "2",
    "model.d_model": "32",
    "model.num_heads": "2",
    "model.mlp_dim": "64",
    "model.attention_chunk": "0",
    "data.seq_len": "32",
    "train.batch_size": "8",
    "train.num_steps": "4",
    "train.log_every": "1",
    "train.eval_every": "4",
    "train.checkpoint_every": "2",
    "train.eval_batches": "1",
    "train.eval_batch_size": "8",
    "train.progress_bar": "false",
    "optim.warmup_steps": "1",
    "diffusion.eval_t_samples": "2",
    "sample.num_samples": "0",
    "mesh.shape": "(2,2,1)",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: pathlib.Path, processes: int = 2) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    args = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir)]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    procs = []
    for pid in range(processes):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            MDM_NUM_PROCESSES=str(processes),
            MDM_PROCESS_ID=str(pid),
            MDM_COORDINATOR=f"localhost:{port}",
        )
        procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _config():
    config = load_config(ROOT / "configs" / "default.py")
    for key, value in OVERRIDES.items():
        apply_override(config, key, value)
    return config


def _single_process_first_loss(config) -> float:
    """Step 1 on one device, on the two processes' shards concatenated (process 0's rows first)."""
    exp = build(config)
    half = config.train.batch_size // 2
    rows = []
    for pid in range(2):
        it = mdm_data.make_iterator(
            config.data, "train", exp.tokenizer, half, seed=config.seed, process_index=pid, process_count=2
        )
        rows.append(next(it)["tokens"])
    batch = {"tokens": jnp.asarray(np.concatenate(rows))}
    init_rng, step_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    state = init_state(exp.objective, exp.optimizer, init_rng, config.data.seq_len)
    step = jax.jit(make_train_step(exp.objective, exp.optimizer, config.optim.ema_decay, config.train.grad_accum))
    _, metrics = step(state, batch, jax.random.fold_in(step_rng, 1))
    return float(metrics["loss"])


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multiprocess") / "run"
    results = _launch(workdir)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    return workdir, results


def test_two_processes_train_one_model(two_process_run):
    workdir, results = two_process_run
    records = read_metrics(workdir / "metrics.jsonl")
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == [1, 2, 3, 4]  # written once (by process 0), not once per process
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    assert "training mdm" in results[0].stdout and "training mdm" not in results[1].stdout
    # Both processes' data-iterator positions are in the checkpoint (gathered to process 0).
    states = json.loads((workdir / "checkpoints" / "4" / "data" / "metadata").read_text())["processes"]
    assert len(states) == 2


def test_the_global_batch_is_assembled_from_both_shards(two_process_run):
    workdir, _ = two_process_run
    first = next(r for r in read_metrics(workdir / "metrics.jsonl") if r.get("step") == 1 and "train/loss" in r)
    expect = _single_process_first_loss(_config())
    assert abs(first["train/loss"] - expect) / expect < 1e-5


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(two_process_run, tmp_path):
    """Resume from the step-2 checkpoint with 2 processes: steps 3-4 repeat the straight run."""
    import shutil

    workdir, _ = two_process_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    for r in _launch(resumed):
        assert r.returncode == 0, r.stderr[-3000:]
    straight = {r["step"]: r["train/loss"] for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r}
    again = {r["step"]: r["train/loss"] for r in read_metrics(resumed / "metrics.jsonl") if "train/loss" in r}
    assert again == straight
