"""Prompt-conditioned generation under SMDM's unsupervised classifier-free guidance.

    python benchmarks/guidance.py --workdir runs/default --evaluator runs/ar
        [--scales 0,0.5,1,2] [--sampler fhs] [--prompts 16] [--per_prompt 4] [--prompt_len 32]

Prompts are the first `prompt_len` tokens of held-out sequences of the run's own data (BOS
first). For each guidance scale w: the generative perplexity of the continuation given the
prompt under the AR evaluator (prompt positions conditioned on, not scored), the sample
entropy of the continuations, NFE per batch (a guided call runs 2B rows) and generated tokens/s.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_table  # noqa: E402
from mdm import evaluation  # noqa: E402
from mdm.cli import parse_flags, run_cli  # noqa: E402
from mdm.errors import ConfigError  # noqa: E402
from mdm.generation import generate  # noqa: E402
from mdm.loop import load_eval_batches  # noqa: E402
from mdm.samplers import SamplerSettings  # noqa: E402
from mdm.trained import load_trained  # noqa: E402

FLAGS = {
    "workdir": "runs/default",
    "evaluator": "runs/ar",
    "scales": "0,0.5,1,2",
    "sampler": "fhs",
    "prompts": 16,
    "per_prompt": 4,
    "prompt_len": 32,
    "seed": 0,
}


def prompts(trained, num: int, prompt_len: int) -> np.ndarray:
    """int32[num, L] canvases: BOS and the first prompt_len - 1 tokens of held-out rows, then masks."""
    config, tokenizer = trained.config, trained.experiment.tokenizer
    rows = np.concatenate([np.asarray(b["tokens"]) for b in load_eval_batches(config, tokenizer)])
    if len(rows) < num:
        raise ConfigError(f"--prompts {num}: the validation split has only {len(rows)} sequences")
    canvases = np.full((num, config.data.seq_len), trained.experiment.objective.mask_id, np.int32)
    canvases[:, 0] = tokenizer.bos_id
    canvases[:, 1:prompt_len] = rows[:num, : prompt_len - 1]
    return canvases


def _body(argv: list[str]) -> None:
    flags, _, _ = parse_flags(argv, FLAGS)
    trained, judge = load_trained(flags["workdir"]), load_trained(flags["evaluator"])
    canvases = prompts(trained, flags["prompts"], flags["prompt_len"])
    context = canvases[0] != trained.experiment.objective.mask_id
    tok = trained.experiment.tokenizer
    rows = []
    for scale in (float(s) for s in flags["scales"].split(",")):
        settings = SamplerSettings(flags["sampler"], steps=None if flags["sampler"] == "fhs" else len(context), cfg_scale=scale)
        generate(trained.experiment.objective, trained.params, settings, canvases[0], 1, progress=False)  # compile
        draw = lambda i, c: generate(  # noqa: E731
            trained.experiment.objective, trained.params, settings, c, flags["per_prompt"], seed=flags["seed"] + i, progress=False
        )
        outs = [draw(i, c) for i, c in enumerate(canvases)]
        tokens = np.concatenate([o["tokens"] for o in outs])
        seconds = sum(o["seconds"] for o in outs)
        ppl = evaluation.generative_perplexity(judge.experiment.objective, judge.params, tokens, 16, context_L=context)
        entropy = evaluation.sample_entropy(tokens[:, ~context], ignore=(tok.bos_id, tok.eos_id, tok.pad_id))
        rows.append(
            {
                "w": scale,
                "gen ppl | prompt": ppl["gen_ppl"],
                "entropy bits": entropy["sample_entropy_bits"],
                "NFE/batch": float(np.mean([o["nfe"] for o in outs])),
                "tokens/s": int((~context).sum()) * len(tokens) / seconds,
            }
        )
        print(f"done w={scale}", file=sys.stderr)
    print(
        f"model {flags['workdir']} (step {trained.step}), evaluator {flags['evaluator']} (step {judge.step}); "
        f"{flags['prompts']} prompts of {flags['prompt_len']} tokens x {flags['per_prompt']} samples, sampler {flags['sampler']}"
    )
    print_table(rows)


if __name__ == "__main__":
    sys.exit(run_cli(_body, sys.argv[1:]))
