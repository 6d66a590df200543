"""Evaluate a trained run: likelihood bound on validation data and the quality of its samples.

    python evaluate.py --workdir runs/default [--evaluator runs/ar] [--num_samples 32]
        [--sampler fhs|ancestral|confidence --steps N ...sampler flags of sample.py...]

Reports the validation NLL (bound, for an MDM) in nats/bits per token, bits/byte and
perplexity; for samples drawn with the given sampler: NFE, tokens/s and sample entropy; with
--evaluator (the workdir of an AR run on the same tokenizer) the generative perplexity; on the
synthetic source the exact log-likelihood of the samples under the true generator. The record,
with every setting, is appended to WORKDIR/eval.jsonl (or --output). --num_samples 0 reports
the likelihood only; --eval_batches 0 (the default) uses the run's train.eval_batches.
"""

from __future__ import annotations

import json
import pathlib
import sys

from mdm.cli import prepare_output, run_cli

RUN_FLAGS = {
    "workdir": "runs/default",
    "step": -1,
    "params": "ema",
    "evaluator": "",
    "num_samples": 32,
    "batch_size": 16,
    "seed": 0,
    "eval_batches": 0,  # 0: the run's train.eval_batches
    "output": "",
    "progress": True,
}


def check_flags(flags: dict) -> None:
    """Refuses flag values that cannot work, as one line, before the expensive work; makes the
    directory of an explicit --output."""
    from mdm.cli import check_workdir
    from mdm.errors import ConfigError

    check_workdir(flags["workdir"])
    if flags["params"] not in ("ema", "raw"):
        raise ConfigError(f"--params={flags['params']}: choose ema or raw")
    if flags["step"] < -1:
        raise ConfigError(f"--step={flags['step']} must be >= 0 (or -1: the latest checkpoint)")
    if flags["num_samples"] < 0:
        raise ConfigError(f"--num_samples={flags['num_samples']} must be >= 0 (0: likelihood only, no samples)")
    if flags["num_samples"] == 0 and flags["evaluator"]:
        raise ConfigError("--evaluator scores samples: give --num_samples >= 1 with it")
    if flags["batch_size"] < 1:
        raise ConfigError(f"--batch_size={flags['batch_size']} must be >= 1")
    if flags["eval_batches"] < 0:
        raise ConfigError(f"--eval_batches={flags['eval_batches']} must be >= 1 (or 0: the run's train.eval_batches)")
    if flags["output"]:
        prepare_output(flags["output"])


def _run(argv: list[str]) -> None:
    from mdm.cli import parse_flags, sampler_flags

    flags, _, _ = parse_flags(argv, {**RUN_FLAGS, **sampler_flags()})
    check_flags(flags)  # before any checkpoint is read or any batch evaluated

    import jax

    import mdm
    from mdm.loop import evaluate, load_eval_batches, make_eval_fn
    from mdm.trained import load_trained

    trained = load_trained(flags["workdir"], None if flags["step"] < 0 else flags["step"], flags["params"] == "ema")
    config, exp = trained.config, trained.experiment
    if flags["eval_batches"]:
        config.train.eval_batches = flags["eval_batches"]
    record: dict = {
        "workdir": str(trained.workdir),
        "checkpoint_step": trained.step,
        "params": flags["params"],
        "objective": config.objective,
        "likelihood": exp.objective.likelihood,
        "seed": flags["seed"],
        "mdm_version": mdm.__version__,
    }
    batches = load_eval_batches(config, exp.tokenizer)
    record.update(evaluate(make_eval_fn(exp.objective), trained.params, batches, jax.random.PRNGKey(flags["seed"]), "eval"))

    record.update(_sample_metrics(flags, config, trained, exp) if flags["num_samples"] else {"num_samples": 0})
    for key, value in record.items():
        if not isinstance(value, dict):
            print(f"{key:32s} {value:.5g}" if isinstance(value, float) else f"{key:32s} {value}")
    output = pathlib.Path(flags["output"] or pathlib.Path(flags["workdir"]) / "eval.jsonl")
    with open(output, "a") as f:
        f.write(json.dumps(record) + "\n")


def _sample_metrics(flags: dict, config, trained, exp) -> dict:
    """NFE, speed and entropy of `--num_samples` samples; gen. perplexity; synthetic fidelity."""
    from mdm import evaluation, runs
    from mdm.cli import settings_from_flags
    from mdm.data import MarkovLanguage
    from mdm.errors import CheckpointError
    from mdm.generation import generate, make_canvas
    from mdm.trained import load_trained

    record: dict = {}
    settings = settings_from_flags(flags, config.data.seq_len)
    out = generate(
        exp.objective,
        trained.params,
        settings,
        make_canvas(exp.tokenizer, config.data.seq_len),
        flags["num_samples"],
        seed=flags["seed"],
        batch_size=flags["batch_size"],
        progress=flags["progress"],
        eos_id=exp.tokenizer.eos_id,
    )
    tokens = out["tokens"]
    record.update(
        {
            "settings": vars(out["settings"]),
            "num_samples": len(tokens),
            "nfe_total": out["nfe"],
            "nfe_per_batch": out["nfe"] / -(-len(tokens) // flags["batch_size"]),
            "sample_tokens_per_s": out["tokens_per_s"],
            "rejected_samples": 0,
        }
    )
    tok = exp.tokenizer
    record.update(evaluation.sample_entropy(tokens, ignore=(tok.bos_id, tok.eos_id, tok.pad_id)))
    if flags["evaluator"]:
        judge = load_trained(flags["evaluator"])
        if judge.experiment.objective.decoding != "autoregressive":
            raise CheckpointError(f"--evaluator {flags['evaluator']} is a {judge.config.objective} run; give an AR run")
        if judge.experiment.tokenizer.vocab_size != tok.vocab_size:
            raise CheckpointError(
                f"--evaluator has vocabulary {judge.experiment.tokenizer.vocab_size} but the evaluated run has "
                f"{tok.vocab_size}; train it on the same data.tokenizer"
            )
        runs.check_compatible(
            config,
            judge.config,
            ("tokenizer",),
            lambda key, mine, theirs: f"--evaluator was trained with {key}={theirs!r} but the evaluated run has {mine!r}; "
            f"train it with --config.{key}={mine!r}",
        )
        record["evaluator"] = flags["evaluator"]
        record.update(evaluation.generative_perplexity(judge.experiment.objective, judge.params, tokens, flags["batch_size"]))
    if config.data.source == "synthetic":
        language = MarkovLanguage(config.data.synthetic_vocab, config.data.synthetic_seed)
        record.update(evaluation.markov_sample_fidelity(language, tokens))
    return record


def main(argv: list[str]) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
