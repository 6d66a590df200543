"""sample.py and evaluate.py end to end on tiny runs: outputs, records and one-line errors."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from mdm.data import MarkovLanguage
from mdm.evaluation import generative_perplexity, markov_sample_fidelity, sample_entropy
from mdm.loop import run
from mdm.trained import load_trained
from test_loop import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = {"data.source": "synthetic", "data.seq_len": 16, "train.num_steps": 4, "train.checkpoint_every": 4}
    run(tiny_config(**common), root / "mdm")
    run(tiny_config(objective="ar", **common), root / "ar")
    run(tiny_config(**{"train.num_steps": 4, "train.checkpoint_every": 4}), root / "bytes")
    return root


def test_sample_py_writes_samples_with_their_settings(runs, capsys):
    out = runs / "bytes" / "s.jsonl"
    rc = _script("sample")(
        [
            "--workdir",
            str(runs / "bytes"),
            "--num_samples",
            "3",
            "--batch_size",
            "2",
            "--prompt",
            "def f",
            "--sampler",
            "ancestral",
            "--steps",
            "8",
            "--top_p",
            "0.9",
            "--output",
            str(out),
            "--progress=false",
        ]
    )
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(r["text"].startswith("def f") for r in records)
    assert records[0]["settings"]["sampler"] == "ancestral" and records[0]["settings"]["top_p"] == 0.9
    assert records[0]["checkpoint_step"] == 4 and records[0]["params"] == "ema"
    tokens = np.asarray([r["tokens"] for r in records])
    assert np.all(tokens[:, 1:6] == np.frombuffer(b"def f", np.uint8))
    # Same seed, another batch size: the same samples.
    out2 = runs / "bytes" / "s2.jsonl"
    _script("sample")(
        [
            "--workdir",
            str(runs / "bytes"),
            "--num_samples",
            "3",
            "--batch_size",
            "3",
            "--prompt",
            "def f",
            "--sampler",
            "ancestral",
            "--steps",
            "8",
            "--top_p",
            "0.9",
            "--output",
            str(out2),
            "--progress=false",
        ]
    )
    assert [json.loads(x)["tokens"] for x in out2.read_text().splitlines()] == tokens.tolist()
    assert "--- sample 2 ---" in capsys.readouterr().out


def test_infill_keeps_the_context_and_fills_the_spans(runs):
    out = runs / "bytes" / "infill.jsonl"
    assert (
        _script("sample")(
            [
                "--workdir",
                str(runs / "bytes"),
                "--num_samples",
                "2",
                "--infill",
                "ab[MASK*3]cd[MASK]e",
                "--output",
                str(out),
                "--progress=false",
            ]
        )
        == 0
    )
    for line in out.read_text().splitlines():
        tokens = json.loads(line)["tokens"]
        assert bytes(tokens[1:3]) == b"ab" and bytes(tokens[6:8]) == b"cd" and tokens[9] == ord("e")
        assert all(t != 259 for t in tokens)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--workdir", "/nonexistent/run"], "no checkpoints under /nonexistent/run"),
        (["--sampler", "gibbs"], "unknown sampler 'gibbs'"),
        (["--prompt", "x" * 40], "prompt is 41 tokens with BOS but the model's seq_len is 32"),
        (["--top_p", "1.5"], "top_p=1.5"),
        (["--steps", "ten"], "expects int"),
        (["--step", "3"], "no checkpoint at step 3"),
        (["--temprature", "1"], "unknown flag --temprature"),
    ],
)
def test_sample_py_bad_input_is_one_line(runs, capsys, args, message):
    argv = ["--workdir", str(runs / "bytes")] + args + ["--progress=false"]
    assert _script("sample")(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]


def test_evaluate_py_reports_likelihood_and_sample_quality(runs):
    out = runs / "mdm" / "eval.jsonl"
    rc = _script("evaluate")(
        [
            "--workdir",
            str(runs / "mdm"),
            "--evaluator",
            str(runs / "ar"),
            "--num_samples",
            "8",
            "--output",
            str(out),
            "--progress=false",
        ]
    )
    assert rc == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["likelihood"] == "upper bound on -log p(x)"  # what the number is, recorded beside it
    for key in (
        "eval/nats_per_token",
        "eval/bits_per_token",
        "eval/perplexity",
        "nfe_total",
        "sample_tokens_per_s",
        "sample_entropy_nats",
        "gen_ppl",
        "true_loglik_per_token",
        "data_loglik_per_token",
        "settings",
    ):
        assert key in record, key
    assert record["nfe_total"] == 16  # exact FHS: one call per token, one batch of 8 rows
    assert _script("evaluate")(["--workdir", str(runs / "mdm"), "--evaluator", str(runs / "mdm"), "--progress=false"]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num_samples", "-1"], "--num_samples=-1 must be >= 0"),
        (["--eval_batches", "-1"], "--eval_batches=-1 must be >= 1 (or 0"),
        (["--batch_size", "0"], "--batch_size=0 must be >= 1"),
        (["--params", "best"], "--params=best: choose ema or raw"),
        (["--step", "-2"], "--step=-2 must be >= 0"),
        (["--num_samples", "0", "--evaluator", "runs/ar"], "--evaluator scores samples"),
    ],
)
def test_evaluate_py_refuses_bad_flags_before_reading_a_checkpoint(capsys, args, message):
    # the workdir does not exist: a flag error that came after loading would say "no checkpoints"
    assert _script("evaluate")(["--workdir", "/nonexistent/run"] + args + ["--progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]


@pytest.mark.parametrize("script", ["sample", "evaluate"])
def test_output_directory_is_made_or_refused_before_any_work(tmp_path, capsys, script):
    output = tmp_path / "not" / "yet" / "there.jsonl"
    assert _script(script)(["--workdir", "/nonexistent/run", "--output", str(output), "--progress=false"]) == 2
    assert "no checkpoints under /nonexistent/run" in capsys.readouterr().err  # the flags passed; loading failed
    assert output.parent.is_dir() and not output.exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert _script(script)(["--workdir", "/nonexistent/run", "--output", str(blocker / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --output {blocker / 'x.jsonl'}: cannot create the directory"), err[-1]
    assert _script(script)(["--workdir", "/nonexistent/run", "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_evaluate_py_with_no_samples_reports_the_likelihood_only(runs):
    out = runs / "mdm" / "new_dir" / "eval.jsonl"
    argv = ["--workdir", str(runs / "mdm"), "--num_samples", "0", "--eval_batches", "1", "--output", str(out)]
    assert _script("evaluate")(argv + ["--progress=false"]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["num_samples"] == 0 and np.isfinite(record["eval/nats_per_token"])
    assert "nfe_total" not in record and "sample_entropy_nats" not in record


def test_sample_py_output_in_a_missing_directory_is_written(runs):
    out = runs / "bytes" / "deeper" / "still" / "s.jsonl"
    argv = ["--workdir", str(runs / "bytes"), "--num_samples", "2", "--steps", "4", "--sampler", "ancestral"]
    assert _script("sample")(argv + ["--output", str(out), "--progress=false"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_sample_metrics_against_hand_computed_values(runs):
    # Entropy: 4 equiprobable tokens are exactly 2 bits; ignored ids are skipped.
    ent = sample_entropy(np.asarray([[0, 1, 2, 3, 9, 9]]), ignore=(9,))
    assert ent["sample_entropy_bits"] == pytest.approx(2.0, abs=1e-12)
    # Generative perplexity pools tokens: batch size does not change it.
    judge = load_trained(runs / "ar")
    tokens = np.random.default_rng(0).integers(0, 8, (7, 16))
    a = generative_perplexity(judge.experiment.objective, judge.params, tokens, batch_size=1)
    b = generative_perplexity(judge.experiment.objective, judge.params, tokens, batch_size=7)
    assert a["gen_ppl"] == pytest.approx(b["gen_ppl"], rel=1e-6)
    # Given a prompt, only the continuation is scored: prompt + continuation NLLs make the whole,
    # and the continuation's NLL is the chain rule's remainder (conditioning on the prompt).
    prompt = np.arange(16) < 5
    cont = generative_perplexity(judge.experiment.objective, judge.params, tokens, context_L=prompt)
    head = generative_perplexity(judge.experiment.objective, judge.params, tokens, context_L=~prompt)
    assert cont["gen_tokens"] == 7 * 11 and head["gen_tokens"] == 7 * 5
    total = cont["gen_nats_per_token"] * 77 + head["gen_nats_per_token"] * 35
    assert total == pytest.approx(a["gen_nats_per_token"] * a["gen_tokens"], rel=1e-5)
    # Exact sample fidelity: samples from the true chain score its entropy rate.
    lang = MarkovLanguage(6, seed=0)
    fid = markov_sample_fidelity(lang, lang.sample(5000, 20, seed=1))
    assert abs(fid["true_loglik_per_token"] - fid["data_loglik_per_token"]) < 4 * fid["true_loglik_per_token_stderr"]


def test_sample_py_decodes_an_ar_run_and_keeps_its_prompt(runs):
    out = runs / "ar" / "s.jsonl"
    assert (
        _script("sample")(
            ["--workdir", str(runs / "ar"), "--num_samples", "2", "--prompt", "ab", "--output", str(out), "--progress=false"]
        )
        == 0
    )
    for line in out.read_text().splitlines():
        tokens = json.loads(line)["tokens"]
        assert tokens[1:3] == [0, 1] and max(tokens) < 11  # 'a', 'b' of the symbol tokenizer; no mask left


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sampler", "confidence", "--block_length", "3"], "multiple of the 6 blocks"),
        (["--categorical", "f16"], "unknown categorical method 'f16'"),
    ],
)
def test_sampler_settings_that_cannot_work_are_one_line(runs, capsys, args, message):
    assert _script("sample")(["--workdir", str(runs / "mdm")] + args + ["--progress=false"]) == 2
    assert message in capsys.readouterr().err
