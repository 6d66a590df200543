"""Block decoding with the exact K/V cache against full-sequence sampling of an MDM.

    python benchmarks/block_decoding.py --blocks runs/bd4,runs/bd16,runs/bd64 --mdm runs/mdm --evaluator runs/ar
        [--num_samples 8] [--ancestral_steps 256] [--recompute runs/bd16] [--seed 0]

Every run must share the tokenizer and seq_len (the benchmark uses L = 1024; docs/block_diffusion.md has
the training commands). Rows: each bd3lm run decoded block by block with exact FHS inside each block and
the exact K/V cache; the `--recompute` run also without the cache (the full [x_t ; x_0] pass at every
call: same samples, the cost the cache saves); the MDM with full-sequence exact FHS (one token per call)
and ancestral sampling on `ancestral_steps` steps. Columns: generated tokens/s (one batch of
`num_samples` rows, compiled ahead of the timed run), model calls per sample (NFE), the
speed-up over full-sequence exact FHS, the generative perplexity under the AR evaluator and the sample
entropy. All unconditional, all rows in one sitting.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm import evaluation, precision  # noqa: E402
from mdm.cli import parse_flags, run_cli  # noqa: E402
from mdm.errors import ConfigError  # noqa: E402
from mdm.generation import build_sampler, make_canvas, row_keys  # noqa: E402
from mdm.samplers import SamplerSettings  # noqa: E402
from mdm.trained import load_trained  # noqa: E402

FLAGS = {
    "blocks": "runs/bd4,runs/bd16,runs/bd64",
    "mdm": "runs/mdm",
    "evaluator": "runs/ar",
    "recompute": "",
    "num_samples": 8,
    "ancestral_steps": 256,
    "seed": 0,
}


def timed_samples(trained, settings: SamplerSettings, num: int, seed: int) -> tuple[np.ndarray, float, float]:
    """(tokens int32[num, L], seconds of the timed run, NFE per sample) for an unconditional canvas."""
    exp = trained.experiment
    canvas = make_canvas(exp.tokenizer, trained.config.data.seq_len)
    _, sample = build_sampler(exp.objective, settings, canvas)
    batch = jnp.broadcast_to(jnp.asarray(canvas), (num, len(canvas)))
    keys = row_keys(seed, 0, num)
    fn = jax.jit(precision.under("sampling", sample)).lower(trained.params, None, keys, batch).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(fn(trained.params, None, keys, batch))
    seconds = time.perf_counter() - start
    per_sample = np.asarray(getattr(out, "row_nfe", out.nfe)).mean()
    return np.asarray(out.tokens), seconds, float(per_sample)


def _body(argv: list[str]) -> None:
    flags, _, _ = parse_flags(argv, FLAGS)
    judge, mdm = load_trained(flags["evaluator"]), load_trained(flags["mdm"])
    length = mdm.config.data.seq_len
    variants = []
    for workdir in [w for w in flags["blocks"].split(",") if w]:
        run = load_trained(workdir)
        if run.config.objective != "bd3lm" or run.config.data.seq_len != length:
            raise ConfigError(f"--blocks: {workdir} is not a bd3lm run with seq_len {length}")
        variants.append((f"bd3lm block {run.config.block.size}, cache", run, SamplerSettings("fhs")))
        if workdir == flags["recompute"]:
            variants.append((f"bd3lm block {run.config.block.size}, no cache", run, SamplerSettings("fhs", kv_cache=False)))
    variants.append(("MDM full-sequence exact FHS", mdm, SamplerSettings("fhs")))
    steps = flags["ancestral_steps"]
    variants.append((f"MDM ancestral, {steps} steps", mdm, SamplerSettings("ancestral", steps=steps)))
    tok = judge.experiment.tokenizer
    rows, fhs_speed = [], None
    for name, run, settings in variants:
        tokens, seconds, nfe = timed_samples(run, settings, flags["num_samples"], flags["seed"])
        speed = tokens.size / seconds
        if name.startswith("MDM full"):
            fhs_speed = speed
        ppl = evaluation.generative_perplexity(judge.experiment.objective, judge.params, tokens, flags["num_samples"])
        entropy = evaluation.sample_entropy(tokens, ignore=(tok.bos_id, tok.eos_id, tok.pad_id))
        rows.append(
            {
                "decoding": name,
                "tokens/s": speed,
                "NFE/sample": nfe,
                "seconds": seconds,
                "gen ppl": ppl["gen_ppl"],
                "entropy bits": entropy["sample_entropy_bits"],
            }
        )
        print(f"done {name}", file=sys.stderr)
    for row in rows:
        row["x FHS"] = row["tokens/s"] / fhs_speed
    print(
        f"L = {length}, {flags['num_samples']} unconditional samples per row on {jax.devices()[0].device_kind}; "
        f"evaluator {flags['evaluator']} (step {judge.step}), MDM {flags['mdm']} (step {mdm.step})"
    )
    print_table(rows)


if __name__ == "__main__":
    sys.exit(run_cli(_body, sys.argv[1:]))
