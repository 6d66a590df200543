"""sample.py and evaluate.py end to end on tiny runs: outputs, records and one-line errors."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from mdm.data import MarkovLanguage
from mdm.data.tokenizers import ByteTokenizer
from mdm.errors import ConfigError
from mdm.evaluation import generative_perplexity, markov_sample_fidelity, sample_entropy
from mdm.generation import make_canvas
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


@pytest.mark.parametrize("marker", ["[MASK*]", "[MASK*x]", "[MASK", "[mask]", "[MASK*0]", "[Mask*3]", "[MASK *2]"])
def test_a_malformed_mask_marker_in_an_infill_template_is_one_line(marker):
    tokenizer = ByteTokenizer()
    with pytest.raises(ConfigError) as err:
        make_canvas(tokenizer, 32, infill=f"ab{marker}cd")
    text = str(err.value)
    assert "\n" not in text and "is not a mask span; write [MASK] for one token" in text and "[MASK*n] for n >= 1" in text
    assert repr(marker) in text or repr(marker + "cd") in text, text
    # the accepted forms, and text that merely contains brackets, still work
    canvas = make_canvas(tokenizer, 32, infill="a[b][MASK]c[MASK*2][MASK*10]")
    assert (canvas == 259).sum() == 32 - 1 - 5 and bytes(canvas[1:5].tolist()) == b"a[b]"


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
        (["--infill", "ab[MASK*]cd"], "--infill: '[MASK*]' is not a mask span"),
        (["--infill", "ab[MASK*0]cd"], "--infill: '[MASK*0]' is not a mask span"),
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


@pytest.mark.parametrize("script", ["train", "sample", "evaluate"])
def test_an_empty_workdir_or_one_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch, script):
    monkeypatch.chdir(tmp_path)  # an empty workdir would have meant this directory
    assert _script(script)(["--workdir="]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --workdir is empty: give the run's directory, e.g. --workdir runs/default"], err
    assert list(tmp_path.iterdir()) == []
    taken = tmp_path / "a_file"
    taken.write_text("")
    assert _script(script)(["--workdir", str(taken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --workdir {taken} is a file, not a run directory: give a directory (a new one for a new run)"]


def test_a_workdir_below_a_file_is_one_line(tmp_path):
    from mdm.errors import ConfigError

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"^cannot create the workdir .*a_file/run \(.*\); give a writable directory$"):
        run(tiny_config(), tmp_path / "a_file" / "run")


@pytest.mark.parametrize("script", ["train", "sample", "evaluate", "mdm.plot"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_script_prints_its_help_and_exits_0(capsys, script, flag):
    if script == "mdm.plot":
        from mdm import plot

        main, doc, flag_name = plot.main, plot.__doc__, "--workdirs="
    else:
        main = _script(script)
        doc, flag_name = (ROOT / f"{script}.py").read_text().split('"""')[1], "--workdir=runs/default"
    assert main(["--workdir", "x", flag] if script != "mdm.plot" else [flag]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(doc.strip()[:60]) and "flags (default):" in out.out and flag_name in out.out
    assert ("--config PATH" in out.out) == (script == "train") and out.err == ""


def test_a_script_after_its_command_word_also_gives_help(capsys):
    from scaling_laws import sweep

    assert sweep.main(["--help"]) == 0 and sweep.__doc__.strip()[:40] in capsys.readouterr().out


@pytest.mark.parametrize(
    "script,target,message",
    [
        ("train", "mdm.loop.run", "interrupted: the last checkpoint is kept; run the same command to resume"),
        ("sample", "mdm.trained.load_trained", "interrupted"),
        ("evaluate", "mdm.trained.load_trained", "interrupted"),
    ],
)
def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, capsys, monkeypatch, script, target, message):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    try:
        rc = _script(script)(["--workdir", str(tmp_path / "run")])
    except KeyboardInterrupt:  # escaping would stop pytest itself
        pytest.fail("Ctrl-C escaped run_cli as a traceback")
    assert rc == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_reading_a_live_run_falls_back_when_its_latest_step_vanishes(runs, tmp_path, monkeypatch, caplog):
    """A training run may rotate away (or still be writing) the step sample.py/evaluate.py just
    listed as the latest: load_trained lists again and reads the newest other step, once."""
    import shutil

    from mdm.checkpoint import Checkpointer, UnreadableCheckpoint

    live = tmp_path / "live"
    shutil.copytree(runs / "mdm", live)
    shutil.copytree(live / "checkpoints" / "4", live / "checkpoints" / "2")  # an older finished step
    original = Checkpointer.restore_config

    def rotated_away(self, step):
        if step == 4 and (live / "checkpoints" / "4").exists():
            shutil.rmtree(live / "checkpoints" / "4")  # between listing and reading
        return original(self, step)

    monkeypatch.setattr(Checkpointer, "restore_config", rotated_away)
    with caplog.at_level("WARNING", logger="mdm"):
        trained = load_trained(live)
    assert trained.step == 2
    assert any("step 4 of" in r.getMessage() and "loading step 2, the latest now" in r.getMessage() for r in caplog.records)
    # An explicit step is not replaced
    shutil.copytree(live / "checkpoints" / "2", live / "checkpoints" / "4")
    with pytest.raises(UnreadableCheckpoint):
        load_trained(live, 4)
    # No other step left: the error stands
    shutil.copytree(live / "checkpoints" / "2", live / "checkpoints" / "4")
    shutil.rmtree(live / "checkpoints" / "2")
    with pytest.raises(UnreadableCheckpoint):
        load_trained(live)
