"""Train-step throughput, MFU, compile time and memory, for named configs.

    python benchmarks/train_throughput.py [--configs default,md4_text8,gpt2_small] [--steps 20]

MFU = achieved model FLOP/s (mdm.flops: 6N + 12 n_layers L d per token) / the peak of a jitted
float32 (or bf16, matching the model) 2048^3 matmul timed in the same run. Throughput excludes
compilation, which is reported on its own; times are min and median over the timed steps.
Per-config batch overrides keep big models short on a CPU: `--batch gpt2_small=4`.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm.config import load_config, validate  # noqa: E402
from mdm.flops import matmul_params, train_flops_per_token  # noqa: E402
from mdm.experiment import build  # noqa: E402
from mdm.state import init_state, make_train_step  # noqa: E402

CPU_BATCH = {"gpt2_small": 4, "medium_350m": 2}  # keeps the big configs to seconds per step on CPU


def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a jitted n^3 matmul (best of `reps`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def time_train_steps(step_fn, state, batches: list, steps: int) -> tuple:
    """(state, seconds of each of `steps` timed steps) after two warm-up steps (the second would
    expose a recompile); the batches alternate."""
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batches[i % 2], jax.random.PRNGKey(i))
        metrics["loss"].block_until_ready()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return state, times


def bench_config(name: str, steps: int, batch: int | None) -> dict:
    config = load_config(ROOT / "configs" / f"{name}.py")
    if batch is not None:
        config.train.batch_size = batch
    config.train.grad_accum = 1
    if jax.default_backend() == "cpu":
        config.model.dtype = "float32"  # CPUs emulate bf16 matmuls; compare like with like
    validate(config)
    exp = build(config)
    seq_len = config.data.seq_len
    b = config.train.batch_size
    state = jax.jit(lambda: init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), seq_len))()
    step_fn = jax.jit(make_train_step(exp.objective, exp.optimizer, config.optim.ema_decay, 1), donate_argnums=0)
    vocab = exp.tokenizer.vocab_size
    batches = [{"tokens": jax.random.randint(jax.random.PRNGKey(i), (b, seq_len), 0, vocab - 3)} for i in range(2)]
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batches[0], jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    compiled_bytes = None
    if mem is not None:
        compiled_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    state, times = time_train_steps(step_fn, state, batches, steps)
    cache_size = step_fn._cache_size()
    cfg = exp.objective.model.cfg
    flops_tok = train_flops_per_token(cfg, seq_len)
    med, best = statistics.median(times), min(times)
    peak = matmul_peak(jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "config": name,
        "batch x len": f"{b} x {seq_len}",
        "dtype": cfg.dtype,
        "params (N matmul)": f"{matmul_params(cfg) / 1e6:.2f}M",
        "MFLOP/token": flops_tok / 1e6,
        "step ms (min/med)": f"{best * 1e3:.0f}/{med * 1e3:.0f}",
        "tokens/s": b * seq_len / med,
        "GFLOP/s": flops_tok * b * seq_len / med / 1e9,
        "peak GFLOP/s": peak / 1e9,
        "MFU %": 100 * flops_tok * b * seq_len / med / peak,
        "compile s": compile_s,
        "compiles": cache_size,
        "XLA bytes MiB": (compiled_bytes or 0) / 2**20,
        "device peak MiB": stats.get("peak_bytes_in_use", 0) / 2**20,
        "RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="default,md4_text8,gpt2_small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", action="append", default=[], help="NAME=BATCH override")
    args = parser.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    batches = dict(CPU_BATCH) if on_cpu else {}
    batches.update({k: int(v) for k, v in (s.split("=") for s in args.batch)})
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    rows = []
    for name in args.configs.split(","):
        steps = args.steps if name not in batches or not on_cpu else max(3, args.steps // 5)
        rows.append(bench_config(name, steps, batches.get(name)))
        print(f"done {name}", file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
