"""Sampler throughput: FHS against ancestral sampling (T = 1000 and T = seq_len), same model.

    python benchmarks/sampler_speed.py --workdir runs/default [--evaluator runs/ar]
        [--num_samples 32] [--batch_size 16]

For each sampler: NFE per batch, wall time (compile excluded: every sampler is run once on
the same shapes first), generated tokens/s, the speed-up over 1000-step ancestral, sample
entropy, and with --evaluator (an AR run on the same tokenizer) the generative perplexity, so
speed is compared at matched sample quality. All samplers draw tokens with the exact
categorical sampler.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm import evaluation  # noqa: E402
from mdm.generation import generate, make_canvas  # noqa: E402
from mdm.trained import load_trained  # noqa: E402
from mdm.samplers import SamplerSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/default")
    parser.add_argument("--evaluator", default="")
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    trained = load_trained(args.workdir)
    judge = load_trained(args.evaluator) if args.evaluator else None
    exp, config = trained.experiment, trained.config
    length = config.data.seq_len
    canvas = make_canvas(exp.tokenizer, length)
    variants = {
        "ancestral T=1000 (cached)": SamplerSettings("ancestral", steps=1000),
        "ancestral T=1000 (no cache)": SamplerSettings("ancestral", steps=1000, cache=False),
        f"ancestral T={length} (cached)": SamplerSettings("ancestral", steps=length),
        "fhs (exact, 1 token/call)": SamplerSettings("fhs"),
        "fhs (k=4 tokens/call)": SamplerSettings("fhs", tokens_per_step=4),
    }
    tok = exp.tokenizer
    rows = []
    for name, settings in variants.items():

        def run(n: int, settings=settings) -> dict:
            return generate(
                exp.objective, trained.params, settings, canvas, n, seed=0, batch_size=args.batch_size, progress=False
            )

        run(args.batch_size)  # compile
        out = run(args.num_samples)
        row = {
            "sampler": name,
            "NFE/batch": out["nfe"] / -(-args.num_samples // args.batch_size),
            "seconds": out["seconds"],
            "tokens/s": out["tokens_per_s"],
            **evaluation.sample_entropy(out["tokens"], ignore=(tok.bos_id, tok.eos_id, tok.pad_id)),
        }
        if judge is not None:
            row["gen_ppl"] = evaluation.generative_perplexity(judge.experiment.objective, judge.params, out["tokens"])["gen_ppl"]
        rows.append(row)
        print(f"done {name}", file=sys.stderr)
    base = rows[0]["seconds"]
    print(f"model {args.workdir} (step {trained.step}), {args.num_samples} samples of {length} tokens, batch {args.batch_size}")
    for r in rows:
        r["speed-up vs T=1000"] = base / r["seconds"]
    print_table(rows)


if __name__ == "__main__":
    main()
