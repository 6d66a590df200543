"""Sample quality against sampling steps and wall-clock time, for several models or samplers.

    python benchmarks/quality_vs_steps.py --evaluator runs/ar --steps 8,16,32,64,128,256,512,1024 \\
        --model teacher=runs/default --model mcd=runs/mcd --model sdtt=runs/sdtt \\
        --match teacher@128 --match teacher@1024

    python benchmarks/quality_vs_steps.py --evaluator runs/ar --steps 16,32,64,128 \\
        --model mdm=runs/default --model edlm-ar=runs/default:edlm:ar:runs/ar \\
        --model edlm-nce=runs/default:edlm:nce:runs/nce --match mdm@128

Each `--model LABEL=WORKDIR[:SAMPLER[:ENERGY:ENERGY_WORKDIR]]` samples unconditionally with the
ancestral sampler (exact factorised step, uniform grid) or, with `edlm`, with importance
sampling under the carry-over AR energy of an AR run (`ar`) or a trained NCE energy (`nce`),
at K = 2 candidates over the whole reverse process (the quality preset; `--is_window 0.2` for
the speed preset). For every model and step count the table gives NFE (denoiser, energy),
seconds (compile excluded: each shape runs once first), generated tokens/s, the unigram entropy
of the samples and, with `--evaluator` (an AR run on the same tokenizer), their generative
perplexity. On a run trained on the synthetic Markov language (data.source=synthetic), the
exact log-likelihood per token of the samples under the true chain is added (the data's own
value is printed with it), which is exact where generative perplexity is only a proxy.

`--match REF@STEPS` reports, for every other model, the fewest steps at which its generative
perplexity (or exact log-likelihood on synthetic data) is at least as good as REF's at STEPS
while its sample entropy stays within `--entropy_tol` nats of REF's (low generative perplexity
alone also rewards collapsed, repetitive samples), and the wall-clock speed-up that gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm import evaluation  # noqa: E402
from mdm.data import MarkovLanguage  # noqa: E402
from mdm.generation import generate, make_canvas  # noqa: E402
from mdm.trained import load_energy  # noqa: E402
from mdm.trained import load_trained  # noqa: E402
from mdm.samplers import SamplerSettings  # noqa: E402


@dataclasses.dataclass
class ModelSpec:
    label: str
    workdir: str
    sampler: str = "ancestral"
    energy: str = ""
    energy_workdir: str = ""


def parse_model(text: str) -> ModelSpec:
    """LABEL=WORKDIR[:SAMPLER[:ENERGY:ENERGY_WORKDIR]]."""
    label, _, rest = text.partition("=")
    parts = rest.split(":")
    if not label or not parts[0] or len(parts) not in (1, 2, 4) or (len(parts) > 1 and parts[1] not in ("ancestral", "edlm")):
        raise SystemExit(
            f"error: --model {text!r}: use LABEL=WORKDIR, LABEL=WORKDIR:ancestral or LABEL=WORKDIR:edlm:ar|nce:ENERGY_DIR"
        )
    if len(parts) == 2 and parts[1] == "edlm":
        raise SystemExit(f"error: --model {text!r}: edlm needs :ar:AR_RUN or :nce:NCE_RUN")
    return ModelSpec(label, *parts)


def quality_key(row: dict) -> float:
    """Higher is better: exact log-likelihood on synthetic data, else minus generative perplexity."""
    if "true_loglik/token" in row:
        return row["true_loglik/token"]
    return -row.get("gen_ppl", float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, type=parse_model)
    parser.add_argument("--steps", default="8,16,32,64,128,256,512,1024")
    parser.add_argument("--evaluator", default="", help="an AR run for generative perplexity")
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--is_k", type=int, default=2)
    parser.add_argument("--is_window", type=float, default=1.0)
    parser.add_argument("--match", action="append", default=[], help="REF@STEPS")
    parser.add_argument("--entropy_tol", type=float, default=0.1, help="nats of entropy a match may lose")
    parser.add_argument("--greedy_last", action="store_true", help="argmax at the last step (distilled students)")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    judge = load_trained(args.evaluator) if args.evaluator else None
    rows = []
    for spec in args.model:
        trained = load_trained(spec.workdir)
        exp, config = trained.experiment, trained.config
        tok = exp.tokenizer
        canvas = make_canvas(tok, config.data.seq_len)
        energy = None
        if spec.sampler == "edlm":
            energy, _ = load_energy(spec.energy, spec.energy_workdir, config, denoiser_workdir=spec.workdir)
        language = None
        if config.data.source == "synthetic":
            language = MarkovLanguage(config.data.synthetic_vocab, config.data.synthetic_seed)
        for steps in steps_list:
            extra = {"is_k": args.is_k, "is_window": args.is_window} if spec.sampler == "edlm" else {}
            if args.greedy_last:
                extra["greedy_last"] = True
            settings = SamplerSettings(spec.sampler, steps=steps, **extra)

            def draw(n: int, settings=settings, trained=trained, energy=energy) -> dict:
                return generate(
                    exp.objective,
                    trained.params,
                    settings,
                    canvas,
                    n,
                    seed=0,
                    batch_size=args.batch_size,
                    progress=False,
                    energy=energy,
                )

            draw(args.batch_size)  # compile
            out = draw(args.num_samples)
            batches = -(-args.num_samples // args.batch_size)
            row = {
                "model": spec.label,
                "steps": steps,
                "NFE/batch": out["nfe"] / batches,
                "energy NFE/batch": out.get("energy_nfe", 0) / batches,
                "seconds": out["seconds"],
                "tokens/s": out["tokens_per_s"],
                **evaluation.sample_entropy(out["tokens"], ignore=(tok.bos_id, tok.eos_id, tok.pad_id)),
            }
            if judge is not None and language is None:
                row["gen_ppl"] = evaluation.generative_perplexity(judge.experiment.objective, judge.params, out["tokens"])[
                    "gen_ppl"
                ]
            if language is not None:
                body = out["tokens"][:, 1:]  # drop BOS: the chain's symbols follow it
                fid = evaluation.markov_sample_fidelity(language, body)
                row["true_loglik/token"] = fid["true_loglik_per_token"]
                row["data loglik/token"] = fid["data_loglik_per_token"]
            rows.append(row)
            print(f"done {spec.label} @ {steps}", file=sys.stderr)
    print(f"{args.num_samples} samples per point, batch {args.batch_size}")
    print_table(rows)
    for match in args.match:
        ref, _, at = match.partition("@")
        target = next((r for r in rows if r["model"] == ref and r["steps"] == int(at)), None)
        if target is None:
            raise SystemExit(f"error: --match {match}: no row for model {ref!r} at {at} steps")
        summary = []
        for label in dict.fromkeys(r["model"] for r in rows if r["model"] != ref):
            ok = [
                r
                for r in rows
                if r["model"] == label
                and quality_key(r) >= quality_key(target)
                and r["sample_entropy_nats"] >= target["sample_entropy_nats"] - args.entropy_tol
            ]
            best = min(ok, key=lambda r: r["steps"]) if ok else None
            summary.append(
                {
                    "model": label,
                    f"steps to match {ref}@{at}": best["steps"] if best else f"> {max(steps_list)}",
                    "step reduction": int(at) / best["steps"] if best else float("nan"),
                    "wall-clock speed-up": target["seconds"] / best["seconds"] if best else float("nan"),
                }
            )
        print(f"\nmatching {ref} at {at} steps (quality {quality_key(target):.4f}):")
        print_table(summary)


if __name__ == "__main__":
    main()
