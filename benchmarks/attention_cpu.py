"""One attention layer's forward + backward on the CPU paths, timed alternately in one process.

    python benchmarks/attention_cpu.py [--batch 32] [--seq_len 128] [--heads 4] [--head_dim 32] [--rounds 8]

Rows: 'xla' (autodiff of `jax.nn.dot_product_attention`), 'checkpointed chunks' (the same under
`jax.checkpoint`, 4 sequences a chunk: the CPU path before the lean attention) and 'lean'
(`mdm.networks.lean_attention`, what `model.attention=chunked` runs, 4 sequences a chunk, and
the whole batch at once). Each
variant is the gradient of <attention(q, k, v), g> with respect to q, k and v, jitted; the
variants take turns, `--rounds` rounds of 5 calls, and the table gives min and median ms and
the median relative to 'xla'. Also printed: the largest gradient difference from 'xla'.
The defaults are configs/default.py's layer shape.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.table import print_table  # noqa: E402
from mdm.networks import attention  # noqa: E402
from mdm.networks.attention import MaskSpec, attend  # noqa: E402


def variants(chunk: int) -> dict:
    """name -> attention(q, k, v) over [B, L, N, H]."""
    old = functools.partial(attention._jax_attention, mask=MaskSpec(), implementation="xla")
    return {
        "xla": lambda q, k, v: attend(q, k, v, None, MaskSpec(), "xla"),
        "checkpointed chunks": lambda q, k, v: attention._batch_chunked(old, (q, k, v, None), chunk, remat=True),
        "lean": lambda q, k, v: attend(q, k, v, None, MaskSpec(), "chunked", chunk),
        "lean, one chunk": lambda q, k, v: attend(q, k, v, None, MaskSpec(), "chunked", q.shape[0]),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=4, help="sequences per chunk")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    shape = (args.batch, args.seq_len, args.heads, args.head_dim)
    q, k, v, g = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.PRNGKey(0), 4))
    steps = {
        name: jax.jit(jax.grad(lambda q_, k_, v_, f=f: jnp.vdot(f(q_, k_, v_), g), argnums=(0, 1, 2)))
        for name, f in variants(args.chunk).items()
    }
    grads = {name: jax.block_until_ready(step(q, k, v)) for name, step in steps.items()}  # compiles
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(step(q, k, v))
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["xla"])
    print(f"backend: {jax.default_backend()}, jax {jax.__version__}; B x L x N x H = {' x '.join(map(str, shape))}, float32")
    print_table(
        [
            {
                "attention": name,
                "min ms": min(ts) * 1e3,
                "median ms": statistics.median(ts) * 1e3,
                "x xla": statistics.median(ts) / base,
                "max |grad - xla grad|": f"{max(float(jnp.abs(a - b).max()) for a, b in zip(grads[name], grads['xla'])):.1e}",
            }
            for name, ts in times.items()
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
