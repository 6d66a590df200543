"""The one training loop: any objective, checkpointed, resumable exactly.

`run(config, workdir)` builds the tokenizer, data iterators, model and objective from the
config, restores the latest checkpoint in `workdir` if there is one (state, data-iterator
position; metrics logged after it are dropped), and trains to `train.num_steps`. The RNG of step
k is fold_in(PRNGKey(seed), k), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time

import jax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from mdm import data as mdm_data
from mdm.checkpoint import Checkpointer, workdir_lock
from mdm.config import validate
from mdm.errors import CheckpointError, ConfigError, DataError, TrainingError
from mdm.metrics import MetricsWriter, summarize_eval
from mdm.experiment import Experiment, build, sharded_abstract_state
from mdm.objectives import EVAL_SUM_KEYS, Objective
from mdm.optim import learning_rate_schedule
from mdm.generation import generate, make_canvas
from mdm.samplers import SamplerSettings
from mdm.sharding import activation_sharding, batch_sharding, check_batch, global_batch, make_mesh, rules_from_config
from mdm.state import init_state, make_train_step
from mdm.trained import init_params
from mdm import precision

log = logging.getLogger("mdm")


def make_eval_fn(objective: Objective):
    """jit-compiled (params, batch, rng, frozen) -> pooled sums."""
    return jax.jit(precision.under("evaluation", objective.eval_sums))


def evaluate(eval_fn, params, batches: list[dict], rng: jax.Array, prefix: str, frozen=None) -> dict[str, float]:
    """Pooled NLL over `batches`; batch i uses fold_in(rng, i) (the same every evaluation)."""
    totals = {k: 0.0 for k in EVAL_SUM_KEYS}
    for i, batch in enumerate(batches):
        sums = eval_fn(params, batch, jax.random.fold_in(rng, i), frozen)
        for k in EVAL_SUM_KEYS:
            totals[k] += float(sums[k])
    return summarize_eval(totals, prefix)


def load_eval_batches(config, tokenizer) -> list[dict]:
    """The fixed validation batches every evaluation uses (the first `train.eval_batches`)."""
    t = config.train
    it = mdm_data.make_iterator(
        config.data,
        "validation",
        tokenizer,
        t.eval_batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle=False,
        num_epochs=1,
    )
    batches = []
    for batch in it:
        batches.append(dict(batch))  # tokens, and the segments of prompt/response pairs
        if len(batches) == t.eval_batches:
            break
    if not batches:
        raise DataError(
            f"the validation split holds fewer than {t.eval_batch_size} windows of {config.data.seq_len} tokens; "
            "lower --config.train.eval_batch_size or --config.data.seq_len, or raise --config.data.val_percent"
        )
    return batches


def draw_samples(exp: Experiment, params, num: int, seed: int) -> list[str]:
    """Unconditional samples (FHS for an MDM, left-to-right decoding for AR), decoded to text."""
    canvas = make_canvas(exp.tokenizer, exp.config.data.seq_len)
    out = generate(exp.objective, params, SamplerSettings("fhs"), canvas, num, seed=seed, progress=False)
    return [exp.tokenizer.decode(row) for row in out["tokens"]]


def _train_iterator(config, tokenizer):
    return mdm_data.make_iterator(
        config.data,
        "train",
        tokenizer,
        config.train.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _check_finite(step: int, metrics: dict, last_checkpoint: int | None, dtype: str = "float32") -> None:
    """A one-line TrainingError when the loss, gradient norm or params norm of `step` is NaN or
    Inf: all three values as they are, and fixes that fit the run (float32 only for a bfloat16 run)."""
    values = {k: float(metrics[k]) for k in ("loss", "grad_norm", "params_norm")}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        kept = "no checkpoint was written" if last_checkpoint is None else f"the last good checkpoint is step {last_checkpoint}"
        shown = ", ".join(f"{k} {v!r}" if not math.isfinite(v) else f"{k} {v:.6g}" for k, v in values.items())
        fix = "lower --config.optim.lr or raise --config.optim.warmup_steps"
        if dtype != "float32":
            fix += f", or compute in float32 (--config.model.dtype=float32 instead of {dtype})"
        raise TrainingError(f"non-finite {' and '.join(bad)} at step {step} ({shown}); {kept}. To fix: {fix}")


def run(config, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict[str, float]:
    """Trains (or resumes) in `workdir`; returns the final evaluation metrics.

    `stop_at_step` ends the run early without a final checkpoint, as a killed job would (tests).
    """
    validate(config, jax.process_count())
    workdir = pathlib.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise ConfigError(f"cannot create the workdir {workdir} ({e.strerror or e}); give a writable directory") from None
    with workdir_lock(workdir):
        return _run_locked(config, workdir, stop_at_step)


def _run_locked(config, workdir: pathlib.Path, stop_at_step: int | None) -> dict[str, float]:
    exp = build(config)
    t = config.train
    writer = MetricsWriter(workdir / "metrics.jsonl", is_writer=jax.process_index() == 0)
    checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)

    train_it = _train_iterator(config, exp.tokenizer)
    eval_batches = load_eval_batches(config, exp.tokenizer)

    rules = rules_from_config(config.mesh.rules)
    mesh = make_mesh(config.mesh.shape)
    check_batch(t.batch_size // t.grad_accum, mesh, "train.batch_size / train.grad_accum")
    check_batch(t.eval_batch_size, mesh, "train.eval_batch_size")
    with activation_sharding(mesh, rules):
        return _train(exp, workdir, writer, checkpointer, train_it, eval_batches, mesh, rules, stop_at_step)


def _check_same_length(saved: dict, config, workdir) -> None:
    """Refuses to resume with another train.num_steps: the cosine learning rate is laid over
    num_steps, so a longer run would jump back up (a shorter one down) at the resumed step."""
    old = (saved.get("train") or {}).get("num_steps")
    new = config.train.num_steps
    if old is not None and old != new:
        raise CheckpointError(
            f"{workdir} was trained with train.num_steps={old} but the config has {new}: resuming would make the "
            f"cosine learning rate jump to another schedule; keep --config.train.num_steps={old}, or continue "
            f"training from it in a new run: --workdir NEW_DIR --config.init.workdir={workdir}"
        )


def _start_state(exp: Experiment, workdir, writer, checkpointer, train_it, sharded, init_rng, mesh, rules):
    """(train state, latest checkpoint step or None): resumed from `workdir`'s newest readable
    checkpoint (data position included), else created sharded, from `init.workdir` if set."""
    config = exp.config
    shardings, abstract = sharded
    restored = checkpointer.restore_latest(abstract, config)
    if restored is not None:
        latest, state, data_state = restored
        _check_same_length(checkpointer.restore_config(latest), config, workdir)
        train_it.set_state(data_state)
        writer.truncate_after(latest)
        log.info("resumed from step %d in %s", latest, workdir)
        return state, latest
    pretrained = init_params(exp, config.init, mesh, rules) if config.init.workdir else None
    seq_len = config.data.seq_len
    init = jax.jit(lambda p: init_state(exp.objective, exp.optimizer, init_rng, seq_len, p), out_shardings=shardings)
    state = init(pretrained)
    writer.truncate_after(-1)  # records of a run killed before its first checkpoint
    writer.write(0, {"params": sum(x.size for x in jax.tree.leaves(state.params))})
    return state, None


def _evaluate_and_show(exp: Experiment, state, step: int, eval_fn, eval_batches, eval_rng, writer, bar) -> dict[str, float]:
    """Evaluates the params and the EMA, writes and prints the result, and shows one sample
    before the last step; returns the metrics."""
    config = exp.config
    final = evaluate(eval_fn, state.params, eval_batches, eval_rng, "eval", state.frozen)
    final.update(evaluate(eval_fn, state.ema_params, eval_batches, eval_rng, "eval_ema", state.frozen))
    writer.write(step, final)
    bar.write(
        f"step {step}: eval {final['eval/nats_per_token']:.4f} nats/token, "
        + (f"{final['eval/bits_per_byte']:.4f} bits/byte" if "eval/bits_per_byte" in final else "")
        + f" (EMA {final['eval_ema/nats_per_token']:.4f} nats/token) [{exp.objective.likelihood}]"
    )
    if config.sample.num_samples > 0 and exp.objective.decoding and step < config.train.num_steps:
        text = draw_samples(exp, state.ema_params, 1, config.sample.seed)[0]  # every process draws
        if jax.process_index() == 0:
            bar.write(f"step {step} sample (EMA, FHS): {text[:240]!r}")
    return final


def _train(exp: Experiment, workdir, writer, checkpointer, train_it, eval_batches, mesh, rules, stop_at_step):
    config, t = exp.config, exp.config.train
    init_rng, step_rng, eval_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    shardings, abstract = sharded_abstract_state(exp, init_rng, config.data.seq_len, mesh, rules)
    state, latest = _start_state(exp, workdir, writer, checkpointer, train_it, (shardings, abstract), init_rng, mesh, rules)
    start_step = int(state.step)

    replicated = NamedSharding(mesh, PartitionSpec())
    train_step = jax.jit(
        precision.under("training", make_train_step(exp.objective, exp.optimizer, config.optim.ema_decay, t.grad_accum)),
        in_shardings=(shardings, batch_sharding(mesh), replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_batches = [global_batch(b, mesh) for b in eval_batches]
    eval_fn = make_eval_fn(exp.objective)
    tokens_per_step = t.batch_size * config.data.seq_len
    lr_fn = learning_rate_schedule(config.optim, t.num_steps)
    last_ckpt = latest
    bar = tqdm.tqdm(
        total=t.num_steps,
        initial=start_step,
        disable=not t.progress_bar or jax.process_index() != 0,
        unit="step",
        dynamic_ncols=True,
    )
    pending: tuple[int, dict] | None = None  # metrics of the previous step, read one step late
    interval_start, interval_steps = time.perf_counter(), 0
    final: dict[str, float] = {}
    for step in range(start_step + 1, t.num_steps + 1):
        batch = global_batch(next(train_it), mesh)
        state, metrics = train_step(state, batch, jax.random.fold_in(step_rng, step))
        interval_steps += 1
        if pending is not None:
            _check_finite(*pending, last_ckpt, config.model.dtype)
        pending = (step, metrics)
        if step % t.log_every == 0 or step == t.num_steps:
            _check_finite(step, metrics, last_ckpt, config.model.dtype)
            elapsed = time.perf_counter() - interval_start
            tok_s = interval_steps * tokens_per_step / elapsed
            interval_start, interval_steps = time.perf_counter(), 0
            record = {f"train/{k}": float(v) for k, v in metrics.items()}
            record["train/lr"] = float(lr_fn(step - 1))
            record["train/tokens_per_s"] = tok_s
            writer.write(step, record)
            bar.set_postfix(loss=f"{record['train/loss']:.4f}", tok_s=f"{tok_s:,.0f}")
        if step % t.eval_every == 0 or step == t.num_steps:
            final = _evaluate_and_show(exp, state, step, eval_fn, eval_batches, eval_rng, writer, bar)
            interval_start, interval_steps = time.perf_counter(), 0  # keep eval and sampling time out of tokens/s
        if stop_at_step is not None and step >= stop_at_step:
            bar.close()
            return final
        if step % t.checkpoint_every == 0 or step == t.num_steps:
            _check_finite(step, metrics, last_ckpt, config.model.dtype)
            checkpointer.save(step, state, train_it.get_state(), config)
            last_ckpt = step
        bar.update(1)
    bar.close()
    if config.sample.num_samples > 0 and exp.objective.decoding:
        for i, text in enumerate(draw_samples(exp, state.ema_params, config.sample.num_samples, config.sample.seed)):
            print(f"--- sample {i} ---\n{text}")
    return final
