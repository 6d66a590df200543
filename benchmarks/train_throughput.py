"""Train-step throughput, MFU, compile time and memory, for named configs.

    python benchmarks/train_throughput.py [--configs default,md4_text8,gpt2_small] [--steps 20]
        [--batch gpt2_small=4 | --batch 64] [--seq_len 1024] [--vocab 50257]
        [--attention auto[,xla,...]] [--loss_chunk 0] [--remat none[,full,...]]

One row per config x attention x remat. `--vocab N` swaps the config's tokenizer for a synthetic
vocabulary of N ids (specials included; pad = N - 1, one byte per token), so GPT-2's 50,257 needs
no tokenizer file; random batches use ids below N - 3. `--attention` and `--remat` take a list
(default: the config's); `--loss_chunk` sets model.loss_chunk (0: auto). The 'attention' column
is the implementation that ran: `model.attention` as resolved for this backend, marked '->xla'
when a cuDNN/Splash request fell back at trace time (e.g. an odd length) or its kernel is missing
from the lowered step.

MFU = achieved model FLOP/s (mdm.flops: 6N + 12 n_layers L d per token) / the FLOP/s of a jitted
matmul timed in the same run: bfloat16 8192^3 on GPUs and TPUs, 2048^3 in float32 on CPUs (where
every model runs in float32: CPUs emulate bf16 matmuls). The header line names it. Throughput
excludes compilation, which is reported on its own; times are min and median over the timed steps
(after two warm-up steps). Memory: 'XLA GiB' is the compiled step's arguments + outputs +
temporaries less the donated (aliased) bytes; 'device peak GiB' is the allocator's peak in this
process so far (`memory_stats()`, GPUs/TPUs; '-' on CPUs), so run one variant per process to
compare peaks. Per-config batch overrides keep big models short on a CPU: `--batch gpt2_small=4`.
Set XLA_FLAGS in the environment for A/B runs; the header prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
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
from mdm import precision  # noqa: E402
from mdm.config import validate  # noqa: E402
from mdm.cli import load_config  # noqa: E402
from mdm.experiment import build, model_config  # noqa: E402
from mdm.flops import matmul_params, train_flops_per_token  # noqa: E402
from mdm.networks import Transformer, attention  # noqa: E402
from mdm.objectives import make_objective  # noqa: E402
from mdm.objectives.chunked_loss import resolve_chunk  # noqa: E402
from mdm.state import init_state, make_train_step  # noqa: E402

CPU_BATCH = {"gpt2_small": 4, "medium_350m": 2}  # keeps the big configs to seconds per step on CPU
# The custom call each fused attention kernel lowers to (found in the lowered step when it ran).
KERNEL_MARKERS = {"cudnn": "cudnn$fmha", "splash": "tpu_custom_call"}


def matmul_size(backend: str) -> tuple[int, str]:
    """(n, dtype name) of the n^3 matmul MFU is measured against on `backend`."""
    return (2048, "float32") if backend == "cpu" else (8192, "bfloat16")


def matmul_peak(dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a jitted n^3 matmul: the best of `reps` timings of `calls` back-to-back calls
    (several for big matmuls, so dispatch gaps do not count)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(precision.under("training", lambda x, y: x @ y))
    f(a, b).block_until_ready()
    calls = 1 if n <= 2048 else 5
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / calls)
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


def build_experiment(config, vocab: int | None):
    """(experiment, vocab size): `build(config)`, with the model and objective rebuilt for a synthetic
    vocabulary of `vocab` ids when given (pad = vocab - 1, one byte per token; the experiment keeps
    the config's tokenizer, which nothing here uses)."""
    exp = build(config)
    if vocab is None:
        return exp, exp.tokenizer.vocab_size
    model = Transformer(model_config(config, vocab))
    objective = make_objective(config, model, vocab - 1, [1] * vocab)
    return dataclasses.replace(exp, objective=objective), vocab


class _Warnings(logging.Handler):
    """Collects the messages of WARNING records (attention's trace-time fallbacks)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _gib(n_bytes) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**30:.3g}"


def bench_config(
    name: str,
    steps: int,
    batch: int | None,
    *,
    seq_len: int | None = None,
    vocab: int | None = None,
    attention_impl: str | None = None,
    loss_chunk: int | None = None,
    remat: str | None = None,
    peak: float = float("nan"),
) -> dict:
    """One row: `name`'s config with the given overrides (None: the config's own)."""
    config = load_config(ROOT / "configs" / f"{name}.py")
    if batch is not None:
        config.train.batch_size = batch
    if seq_len is not None:
        config.data.seq_len = seq_len
    if attention_impl is not None:
        config.model.attention = attention_impl
    if loss_chunk is not None:
        config.model.loss_chunk = loss_chunk
    if remat is not None:
        config.model.remat = remat
    config.train.grad_accum = 1
    backend = jax.default_backend()
    if backend == "cpu":
        config.model.dtype = "float32"  # CPUs emulate bf16 matmuls; compare like with like
    validate(config)
    m = config.model
    chosen, why = attention.choose(m.attention, attention.platform(), m.dtype, m.d_model // m.num_heads, m.attention_chunk)
    if why:
        print(f"{name}: model.attention={m.attention} runs {chosen}: {why}", file=sys.stderr)
    exp, vocab_size = build_experiment(config, vocab)
    seq_len = config.data.seq_len
    b = config.train.batch_size
    state = jax.jit(lambda: init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), seq_len))()
    step_fn = jax.jit(
        precision.under("training", make_train_step(exp.objective, exp.optimizer, config.optim.ema_decay, 1)),
        donate_argnums=0,
    )
    batches = [{"tokens": jax.random.randint(jax.random.PRNGKey(i), (b, seq_len), 0, vocab_size - 3)} for i in range(2)]
    cfg = exp.objective.model.cfg

    # Trace-time fallbacks (cuDNN/Splash -> XLA) are logged once per message: clear that memory so
    # this variant logs its own, and collect them while lowering.
    getattr(getattr(attention, "_note", None), "cache_clear", lambda: None)()
    caught = _Warnings()
    attention_log = logging.getLogger(attention.__name__)
    attention_log.addHandler(caught)
    try:
        t0 = time.perf_counter()
        lowered = step_fn.lower(state, batches[0], jax.random.PRNGKey(0))
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
    finally:
        attention_log.removeHandler(caught)
    ran = cfg.attention
    marker = KERNEL_MARKERS.get(ran)
    if caught.messages or (marker and marker not in lowered.as_text()):
        ran = f"{ran}->xla"  # the warning itself went to stderr

    mem = compiled.memory_analysis()
    compiled_bytes = None
    if mem is not None:
        aliased = getattr(mem, "alias_size_in_bytes", 0)
        compiled_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes - aliased
    state, times = time_train_steps(step_fn, state, batches, steps)
    cache_size = step_fn._cache_size() if hasattr(step_fn, "_cache_size") else "-"
    flops_tok = train_flops_per_token(cfg, seq_len)
    med, best = statistics.median(times), min(times)
    flops_per_s = flops_tok * b * seq_len / med
    unit, scale = ("GFLOP/s", 1e9) if backend == "cpu" else ("TFLOP/s", 1e12)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "config": name,
        "batch x len": f"{b} x {seq_len}",
        "vocab": vocab_size,
        "dtype": cfg.dtype,
        "attention": ran,
        "remat": cfg.remat,
        "loss chunk": resolve_chunk(config.model.loss_chunk, b, seq_len, vocab_size),
        "params (N matmul)": f"{matmul_params(cfg) / 1e6:.2f}M",
        "MFLOP/token": flops_tok / 1e6,
        "step ms (min/med)": f"{best * 1e3:.0f}/{med * 1e3:.0f}",
        "tokens/s": b * seq_len / med,
        unit: flops_per_s / scale,
        "MFU %": 100 * flops_per_s / peak,
        "compile s": compile_s,
        "compiles": cache_size,
        "XLA GiB": _gib(compiled_bytes),
        "device peak GiB": _gib(stats.get("peak_bytes_in_use")),
        "RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _list(text: str | None) -> list:
    return [None] if text is None else text.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="default,md4_text8,gpt2_small")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--batch", action="append", default=[], help="NAME=BATCH for one config, or BATCH for all")
    parser.add_argument("--seq_len", type=int, default=None, help="data.seq_len for every config")
    parser.add_argument("--vocab", type=int, default=None, help="synthetic vocabulary size (e.g. 50257), no tokenizer")
    implementations = ", ".join(attention.IMPLEMENTATIONS)
    parser.add_argument("--attention", default=None, help=f"model.attention, or a comma list: {implementations}")
    parser.add_argument("--loss_chunk", type=int, default=None, help="model.loss_chunk (0: auto)")
    parser.add_argument("--remat", default=None, help="model.remat, or a comma list: none, full, save_dots")
    args = parser.parse_args()
    if args.vocab is not None and args.vocab < 4:
        parser.error("--vocab must be at least 4 (three specials and one token)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    backend = jax.default_backend()
    on_cpu = backend == "cpu"
    named, every = {}, None  # NAME=BATCH, then BATCH for all, then CPU_BATCH on a CPU
    for spec in args.batch:
        if "=" in spec:
            key, value = spec.split("=")
            named[key] = int(value)
        else:
            every = int(spec)
    batches = {**(CPU_BATCH if on_cpu and every is None else {}), **named}
    n, dtype = matmul_size(backend)
    peak = matmul_peak(jnp.dtype(dtype), n, reps=10 if on_cpu else 20)
    unit, scale = ("GFLOP/s", 1e9) if on_cpu else ("TFLOP/s", 1e12)
    print(
        f"backend: {backend} ({jax.devices()[0].device_kind}), jax {jax.__version__}; "
        f"MFU against a {dtype} {n}^3 matmul: {peak / scale:,.1f} {unit}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        flush=True,
    )
    rows, failed = [], []
    for name, impl, remat in itertools.product(args.configs.split(","), _list(args.attention), _list(args.remat)):
        batch = batches.get(name, every)
        steps = args.steps if name not in batches or not on_cpu else max(3, args.steps // 5)
        label = "/".join(str(x) for x in (name, impl, remat) if x is not None)
        try:
            rows.append(
                bench_config(
                    name,
                    steps,
                    batch,
                    seq_len=args.seq_len,
                    vocab=args.vocab,
                    attention_impl=impl,
                    loss_chunk=args.loss_chunk,
                    remat=remat,
                    peak=peak,
                )
            )
            print(f"done {label}", file=sys.stderr, flush=True)
        except Exception as e:  # one variant failing (out of memory, say) should not hide the others
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"FAILED {label}: {type(e).__name__}: {first[:500]}", file=sys.stderr, flush=True)
            failed.append(label)
    if rows:
        print_table(rows)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
