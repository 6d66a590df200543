"""Train-step throughput, per-device memory and collective counts for several mesh shapes.

    python benchmarks/mesh_scaling.py [--config default] [--meshes "8,1,1;2,4,1;2,2,2;1,2,4;1,8,1"] [--steps 5]

On a CPU the script simulates 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set before JAX starts), so every mesh shares the same cores: tokens/s then shows the cost of
the partitioning (collectives, resharding copies), not a speed-up. The collective counts are
read from the compiled, partitioned HLO of one train step (all-reduce, all-gather,
reduce-scatter, all-to-all, collective-permute), so a change that adds communication shows up
here. Per-device memory is `memory_stats()['peak_bytes_in_use']` where the backend reports it
(GPU, TPU), else the bytes of live buffers on device 0 after the timed steps (params, optimizer
state, EMA, batch) plus XLA's temp allocation for the step.
"""

from __future__ import annotations

import os

if (
    "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
    and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu"
):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from benchmarks.train_throughput import time_train_steps  # noqa: E402
from mdm.config import validate  # noqa: E402
from mdm.cli import load_config  # noqa: E402
from mdm.experiment import build, sharded_abstract_state  # noqa: E402
from mdm.flops import train_flops_per_token  # noqa: E402
from mdm.sharding import activation_sharding, batch_sharding, make_mesh, rules_from_config  # noqa: E402
from mdm.state import init_state, make_train_step  # noqa: E402

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def collective_counts(hlo_text: str) -> dict[str, int]:
    """How many times each collective op appears in a compiled HLO module's text (async pairs
    such as all-gather-start/-done count once)."""
    counts = {}
    for op in COLLECTIVES:
        counts[op] = len(re.findall(rf"= [^=\n]*\b{op}(?:-start)?\(", hlo_text))
    return counts


def _device0_live_bytes() -> int:
    dev = jax.devices()[0]
    total = 0
    for arr in jax.live_arrays():
        for shard in arr.addressable_shards:
            if shard.device == dev:
                total += shard.data.nbytes
    return total


def bench_mesh(config, shape: tuple[int, int, int], steps: int) -> dict:
    config.mesh.shape = shape
    validate(config)
    exp = build(config)
    rules = rules_from_config(config.mesh.rules)
    mesh = make_mesh(shape)
    seq_len, b = config.data.seq_len, config.train.batch_size
    rng = jax.random.PRNGKey(0)
    with activation_sharding(mesh, rules):
        shardings, _ = sharded_abstract_state(exp, rng, seq_len, mesh, rules)
        state = jax.jit(lambda: init_state(exp.objective, exp.optimizer, rng, seq_len), out_shardings=shardings)()
        replicated = NamedSharding(mesh, PartitionSpec())
        step_fn = jax.jit(
            make_train_step(exp.objective, exp.optimizer, config.optim.ema_decay, 1),
            in_shardings=(shardings, batch_sharding(mesh), replicated),
            out_shardings=(shardings, replicated),
            donate_argnums=0,
        )
        vocab = exp.tokenizer.vocab_size
        batches = [
            {
                "tokens": jax.device_put(
                    np.random.default_rng(i).integers(0, vocab - 3, (b, seq_len), np.int32), batch_sharding(mesh)
                )
            }
            for i in range(2)
        ]
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batches[0], rng).compile()
        compile_s = time.perf_counter() - t0
        counts = collective_counts(compiled.as_text())
        mem = compiled.memory_analysis()
        state, times = time_train_steps(step_fn, state, batches, steps)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        per_device, how = stats["peak_bytes_in_use"], "peak"
    else:
        per_device, how = _device0_live_bytes() + (mem.temp_size_in_bytes if mem else 0), "live+temp"
    med = statistics.median(times)
    flops = train_flops_per_token(exp.objective.model.cfg, seq_len) * b * seq_len
    row = {
        "mesh (data,fsdp,tensor)": str(shape),
        "step ms": med * 1e3,
        "tokens/s": b * seq_len / med,
        "GFLOP/s (all devices)": flops / med / 1e9,
        f"MiB/device ({how})": per_device / 2**20,
        "compile s": compile_s,
    }
    row.update({op: n for op, n in counts.items()})
    del state
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--meshes", default="8,1,1;2,4,1;2,2,2;1,2,4;1,8,1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    args = parser.parse_args()
    config = load_config(ROOT / "configs" / f"{args.config}.py")
    if args.batch:
        config.train.batch_size = args.batch
    config.train.grad_accum = 1
    print(
        f"backend: {jax.default_backend()}, {jax.device_count()} devices ({jax.devices()[0].device_kind}), jax {jax.__version__}"
    )
    print(f"config {args.config}: batch {config.train.batch_size} x {config.data.seq_len}, dtype {config.model.dtype}")
    rows = []
    for text in args.meshes.split(";"):
        shape = tuple(int(x) for x in text.split(","))
        rows.append(bench_mesh(config, shape, args.steps))
        print(f"done {shape}", file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
