"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_sharding.py).

Prints one JSON line with the measured deviations and shard facts.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdm.experiment import build, sharded_abstract_state
from mdm.sharding import activation_sharding, batch_sharding, make_mesh
from mdm.state import init_state, make_train_step
from test_loop import tiny_config

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4), (1, 8, 1)]


def check_mesh(exp, mesh, tokens, rng):
    """One train step and the gradients on `mesh`: (record, loss, grads on the host)."""
    shardings, _ = sharded_abstract_state(exp, jax.random.PRNGKey(0), 32, mesh)
    state = jax.jit(lambda: init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), 32), out_shardings=shardings)()
    rep = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(
        make_train_step(exp.objective, exp.optimizer, 0.99, 1),
        in_shardings=(shardings, batch_sharding(mesh), rep),
        out_shardings=(shardings, rep),
    )
    grad = jax.jit(
        jax.grad(lambda p, b, k: exp.objective.loss(p, b, k)[0]),
        in_shardings=(shardings.params, batch_sharding(mesh), rep),
        out_shardings=shardings.params,
    )
    batch = {"tokens": jax.device_put(tokens, batch_sharding(mesh))}
    g = jax.device_get(grad(state.params, batch, rng))
    new_state, metrics = step(state, batch, rng)
    loss = float(metrics["loss"])
    emb = new_state.params["embedding"]
    per_device = sum(s.data.nbytes for leaf in jax.tree.leaves(new_state.params) for s in leaf.addressable_shards[:1])
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(new_state.params))
    mu = new_state.opt_state[1][0].mu["embedding"]
    rec = {
        "loss": loss,
        "emb_shard": list(emb.addressable_shards[0].data.shape),
        "mu_shard": list(mu.addressable_shards[0].data.shape),
        "param_bytes_ratio": total / per_device,
    }
    return rec, loss, g


def main() -> None:
    # attention_chunk=2 exercises the per-device strided chunking (local batches 16, 8, 4, 2).
    config = tiny_config(
        **{
            "data.source": "synthetic",
            "model.num_heads": 4,
            "model.d_model": 64,
            "model.mlp_dim": 128,
            "model.attention_chunk": 2,
        }
    )
    exp = build(config)
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (16, 32), 0, 8), np.int32)
    rng = jax.random.PRNGKey(1)
    out = {}
    ref = None
    for shape in MESHES:
        mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        with activation_sharding(mesh):  # the network's activation constraints become real
            rec, loss, g = check_mesh(exp, mesh, tokens, rng)
        if ref is None:
            ref = (loss, g)
        else:
            rec["loss_rel_err"] = abs(loss - ref[0]) / abs(ref[0])
            rec["grad_max_abs_err"] = max(
                float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref[1]))
            )
        out[str(shape)] = rec
    out["resume_rel_err"] = resume_across_meshes(sys.argv[1])
    print(json.dumps(out))


def resume_config(shape):
    """A short run checkpointed every 3 steps, on the mesh `shape`."""
    c = tiny_config(
        **{
            "data.source": "synthetic",
            "model.num_heads": 4,
            "model.d_model": 64,
            "model.mlp_dim": 128,
            "train.num_steps": 6,
            "train.checkpoint_every": 3,
            "train.eval_every": 3,
        }
    )
    c.mesh.shape = shape
    return c


def train_losses(workdir) -> dict[int, float]:
    from mdm.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(f"{workdir}/metrics.jsonl") if "train/loss" in r}


def resume_across_meshes(root: str) -> float:
    """Killed at step 4 on (8,1,1) (checkpoint at 3), resumed on (2,2,2): the largest relative
    loss difference from a straight (2,2,2) run over the resumed steps. Also leaves a run killed
    on (8,1,1) in ROOT/single for the one-device resume test."""
    from mdm.loop import run

    run(resume_config((8, 1, 1)), f"{root}/single", stop_at_step=4)
    run(resume_config((8, 1, 1)), f"{root}/mesh", stop_at_step=4)
    run(resume_config((2, 2, 2)), f"{root}/mesh")
    run(resume_config((2, 2, 2)), f"{root}/straight")
    a, b = train_losses(f"{root}/mesh"), train_losses(f"{root}/straight")
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in range(4, 7))


if __name__ == "__main__":
    sys.exit(main())
