"""The training loop: learning, exact resume, gradient accumulation, clear failures."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm.config import base_config, validate
from mdm.errors import CheckpointError, ConfigError, DataError, TrainingError
from mdm.experiment import build
from mdm.loop import run
from mdm.metrics import read_metrics
from mdm.state import init_state, make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    c = base_config()
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.mlp_dim = 2, 32, 2, 64
    c.data.seq_len = 32
    c.train.batch_size = 8
    c.train.num_steps = 8
    c.train.log_every = 1
    c.train.eval_every = 4
    c.train.checkpoint_every = 4
    c.train.eval_batches = 2
    c.train.eval_batch_size = 8
    c.train.progress_bar = False
    c.optim.warmup_steps = 2
    c.diffusion.eval_t_samples = 2
    c.sample.num_samples = 0
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    validate(c)
    return c


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in records]


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_killed_run_resumes_exactly(tmp_path, objective):
    config = tiny_config(objective=objective)
    run(config, tmp_path / "straight")
    # Killed at step 6: metrics of steps 5-6 were written, the last checkpoint is step 4.
    run(config, tmp_path / "killed", stop_at_step=6)
    assert max(r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")) == 6
    run(config, tmp_path / "killed")
    straight = _without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = _without_timing(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert resumed == straight
    assert sum("eval/nats_per_token" in r for r in straight) == 2


def test_gradient_accumulation_matches_one_big_batch():
    config = tiny_config(objective="ar")
    exp = build(config)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 32), 0, 256)
    results = []
    for accum in (1, 4):
        state = init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), 32)
        step = jax.jit(make_train_step(exp.objective, exp.optimizer, 0.9, accum))
        state, metrics = step(state, {"tokens": tokens}, jax.random.PRNGKey(1))
        results.append((state, metrics))
    (s1, m1), (s4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradient_accumulation_weights_micro_batches_by_their_real_tokens():
    config = tiny_config(objective="ar")
    exp = build(config)
    pad = exp.tokenizer.pad_id
    tokens = np.array(jax.random.randint(jax.random.PRNGKey(0), (4, 32), 0, 256))
    tokens[2:, 3:] = pad  # the second micro-batch is mostly padding
    grads = []
    for accum in (1, 2):
        state = init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), 32)
        _, metrics = jax.jit(make_train_step(exp.objective, exp.optimizer, 0.9, accum))(
            state, {"tokens": jnp.asarray(tokens)}, jax.random.PRNGKey(1)
        )
        grads.append(metrics)
    np.testing.assert_allclose(grads[0]["loss"], grads[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(grads[0]["grad_norm"], grads[1]["grad_norm"], rtol=1e-4)


def _tiny_corpus(tmp_path: pathlib.Path) -> str:
    # Each document is 30 bytes; with BOS/EOS it fills exactly one 32-token window.
    docs = [
        "the cat sat on the mat today..",
        "a dog ran in the park at noon.",
        "my bird sang a song at dawn...",
        "our fish swam in a bowl all da",
        "two cows ate the green grass..",
        "one frog sat on a big lily pad",
    ]
    assert all(len(d) == 30 for d in docs)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": docs[i % len(docs)]}) for i in range(600)))
    return str(path)


@pytest.mark.parametrize("objective,threshold,steps", [("ar", 0.15, 150), ("mdm", 1.0, 300)])
def test_tiny_models_overfit_a_tiny_corpus(tmp_path, objective, threshold, steps):
    config = tiny_config(
        objective=objective,
        **{
            "data.source": "text",
            "data.path": _tiny_corpus(tmp_path),
            "data.val_percent": 50,
            "train.num_steps": steps,
            "train.eval_every": steps,
            "train.checkpoint_every": steps,
            "train.batch_size": 32,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 10,
            "model.num_layers": 3,
            "model.d_model": 96,
            "model.num_heads": 4,
            "model.mlp_dim": 192,
        },
    )
    run(config, tmp_path / "run")
    train_losses = [r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    # A few memorised sentences: the AR model becomes near-certain, the MDM's ELBO (which must
    # also guess which sentence from the unmasked context) falls far below the byte entropy.
    assert np.mean(train_losses[-10:]) < threshold, np.mean(train_losses[-10:])
    assert np.mean(train_losses[:5]) > 3.0


def test_default_config_short_run_lowers_validation_loss(tmp_path):
    from mdm.cli import load_config

    config = load_config(ROOT / "configs" / "default.py")
    config.train.num_steps = 40
    config.optim.warmup_steps = 10
    config.train.eval_every = 20
    config.train.eval_batches = 4
    config.train.progress_bar = False
    config.sample.num_samples = 0
    run(config, tmp_path)
    evals = [r["eval/bits_per_byte"] for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/bits_per_byte" in r]
    assert len(evals) == 2
    assert evals[1] < evals[0] < np.log2(256)


def test_checkpoint_that_disagrees_with_the_config_is_a_clear_error(tmp_path):
    run(tiny_config(**{"train.num_steps": 8}), tmp_path, stop_at_step=5)  # killed after its step-4 checkpoint
    with pytest.raises(CheckpointError, match="model.d_model=32 .* model.d_model=64"):
        run(tiny_config(**{"train.num_steps": 8, "model.d_model": 64}), tmp_path)
    with pytest.raises(CheckpointError, match="data.source"):
        run(tiny_config(**{"train.num_steps": 8, "data.source": "synthetic"}), tmp_path)
    # Nothing was lost: the original run still resumes.
    run(tiny_config(**{"train.num_steps": 8}), tmp_path)
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 8


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    config = tiny_config(
        **{"optim.lr": 1e30, "optim.grad_clip": 0.0, "optim.warmup_steps": 0, "train.num_steps": 20, "train.checkpoint_every": 1}
    )
    with pytest.raises(TrainingError, match="non-finite .* at step") as err:
        run(config, tmp_path)
    # The updated params are checked before a save, so a diverged state is never checkpointed
    # and the message names the last good step (the first update already overflows here).
    ckpts = tmp_path / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []
    failed_at = int(str(err.value).split(" at step ")[1].split()[0])
    assert all(s < failed_at for s in steps)
    assert (f"last good checkpoint is step {max(steps)}" if steps else "no checkpoint was written") in str(err.value)


def test_resuming_with_another_num_steps_is_refused_as_the_learning_rate_would_jump(tmp_path):
    """The cosine schedule is laid over train.num_steps: a finished 4-step run resumed to 8 steps
    would go from the final lr back up to mid-schedule. Refused, naming both fixes; nothing is written."""
    run(tiny_config(**{"train.num_steps": 4}), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    for steps in (8, 2):
        with pytest.raises(CheckpointError) as err:
            run(tiny_config(**{"train.num_steps": steps}), tmp_path)
        assert str(err.value) == (
            f"{tmp_path} was trained with train.num_steps=4 but the config has {steps}: resuming would make the cosine "
            "learning rate jump to another schedule; keep --config.train.num_steps=4, or continue training from it "
            f"in a new run: --workdir NEW_DIR --config.init.workdir={tmp_path}"
        )
    assert (tmp_path / "metrics.jsonl").read_text() == before
    run(tiny_config(**{"train.num_steps": 4}), tmp_path)  # the same length still resumes (and is done)


def test_the_non_finite_message_shows_the_values_as_they_are_and_fits_the_dtype():
    from mdm.loop import _check_finite

    metrics = {"loss": float("nan"), "grad_norm": float("inf"), "params_norm": 12.345678}
    _check_finite(3, {"loss": 2.0, "grad_norm": 1.0, "params_norm": 5.0}, None)  # finite: nothing
    with pytest.raises(TrainingError) as err:
        _check_finite(7, metrics, 4, "float32")
    assert str(err.value) == (
        "non-finite loss and grad_norm at step 7 (loss nan, grad_norm inf, params_norm 12.3457); the last good "
        "checkpoint is step 4. To fix: lower --config.optim.lr or raise --config.optim.warmup_steps"
    )
    with pytest.raises(TrainingError) as err:
        _check_finite(7, {**metrics, "loss": float("-inf")}, None, "bfloat16")
    assert "(loss -inf, grad_norm inf," in str(err.value) and "no checkpoint was written" in str(err.value)
    assert str(err.value).endswith(", or compute in float32 (--config.model.dtype=float32 instead of bfloat16)")


def test_missing_and_empty_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="nothing/here"):
        run(tiny_config(**{"data.source": "text", "data.path": str(tmp_path / "nothing/here/*.txt")}), tmp_path / "a")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError):
        run(tiny_config(**{"data.source": "text", "data.path": str(tmp_path / "empty.txt")}), tmp_path / "b")


def test_a_run_starts_from_another_runs_params(tmp_path):
    """init.workdir: step 0 holds the source run's EMA params (first eval equals the source's
    last EMA eval on the same batches), and a model that does not fit is a one-line error."""
    source = tiny_config()
    run(source, tmp_path / "source")
    last = [r for r in read_metrics(tmp_path / "source" / "metrics.jsonl") if "eval_ema/nats_per_token" in r][-1]
    tuned = tiny_config(
        **{"init.workdir": str(tmp_path / "source"), "train.num_steps": 1, "optim.lr": 1e-9, "optim.warmup_steps": 0}
    )
    first = run(tuned, tmp_path / "tuned")
    # One step at lr 1e-9 moves nothing measurable; eval noise is the same fold_in(seed) keys.
    assert first["eval/nats_per_token"] == pytest.approx(last["eval_ema/nats_per_token"], rel=1e-5)
    wider = tiny_config(**{"init.workdir": str(tmp_path / "source"), "model.d_model": 64})
    with pytest.raises(ConfigError, match="cannot start from"):
        run(wider, tmp_path / "wider")
    causal = tiny_config(**{"init.workdir": str(tmp_path / "source"), "objective": "ar"})  # same shapes, other kind
    with pytest.raises(ConfigError, match="is a bidirectional objective='mdm' run but this objective='ar' run is causal"):
        run(causal, tmp_path / "causal")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run(tiny_config(**{"init.workdir": str(tmp_path / "nowhere")}), tmp_path / "x")


def test_a_second_run_on_a_busy_workdir_is_one_line(tmp_path):
    """While a run holds the workdir, another stops at once with one line (no duplicate records)."""
    from mdm.checkpoint import workdir_lock

    with workdir_lock(tmp_path):
        with pytest.raises(CheckpointError, match="in use by another training run .*pid") as err:
            run(tiny_config(), tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_damaged_latest_checkpoint_falls_back_to_the_intact_one(tmp_path, caplog):
    """Garbage in the newest step's arrays: the resume warns once, continues from the step
    before, sets the damaged step aside and ends where an undamaged run ends."""
    run(tiny_config(**{"train.num_steps": 12, "train.checkpoint_every": 4}), tmp_path, stop_at_step=9)  # saves 4 and 8
    ckpts = tmp_path / "checkpoints"
    assert {p.name for p in ckpts.iterdir() if p.name.isdigit()} == {"4", "8"}
    for f in (ckpts / "8" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 8)
    with caplog.at_level("WARNING"):
        final = run(tiny_config(**{"train.num_steps": 12, "train.checkpoint_every": 4}), tmp_path)
    assert any("resuming from step 4 instead" in r.getMessage() for r in caplog.records)
    assert (ckpts / "damaged-8").is_dir() and {p.name for p in ckpts.iterdir() if p.name.isdigit()} >= {"12"}
    assert np.isfinite(final["eval/nats_per_token"])
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 12


def test_each_evaluation_prints_a_sample_so_a_user_watches_it_learn(tmp_path, capsys):
    run(tiny_config(**{"sample.num_samples": 1, "train.num_steps": 8, "train.eval_every": 4}), tmp_path)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "step 4 sample (EMA, FHS): '" in printed  # the mid-run evaluation's sample
    assert "--- sample 0 ---" in printed  # and the final one, as before
