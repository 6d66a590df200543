"""Where a planned sweep run stands ('new', 'partial', 'done') and its results.csv row once done."""

from __future__ import annotations

import pathlib

from mdm import runs
from mdm.metrics import read_metrics
from scaling_laws import results
from scaling_laws.planner import RunSpec

RESULT_COLUMNS = results.RESULT_COLUMNS + (
    # beyond the contract: the size, both FLOP conventions, the loss's standard error and EMA value
    "size",
    "convention",
    "flops_full",
    "flops_6n",
    "loss_stderr",
    "loss_ema",
    "bits_per_byte",
    "lr",
    "warmup_steps",
    "seed",
)


def final_eval(spec: RunSpec, workdir: pathlib.Path) -> dict | None:
    """The evaluation record at the run's last step, or None while the run is unfinished."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    for record in reversed(read_metrics(path)):
        if record["step"] == spec.steps and "eval/nats_per_token" in record:
            return record
    return None


def run_status(spec: RunSpec, workdir: pathlib.Path) -> str:
    """'done' (final evaluation written), 'partial' (started: checkpoints or metrics) or 'new'."""
    if final_eval(spec, workdir) is not None:
        return "done"
    if (workdir / runs.METRICS).exists() or runs.has_checkpoints(workdir):
        return "partial"
    return "new"


def result_row(spec: RunSpec, workdir: pathlib.Path, record: dict) -> dict:
    """One results.csv row of a finished run."""
    return {
        "objective": spec.objective,
        "run": spec.name,
        "budget": spec.budget,
        "params": spec.params,
        "params_total": spec.params_total,
        "tokens": spec.tokens,
        "flops": spec.flops_per_token * spec.tokens,
        "loss": record["eval/nats_per_token"],
        "steps": spec.steps,
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "workdir": str(workdir),
        "size": spec.size,
        "convention": spec.convention,
        "flops_full": spec.flops_per_token_full * spec.tokens,
        "flops_6n": spec.flops_per_token_6n * spec.tokens,
        "loss_stderr": record.get("eval/nats_per_token_stderr", ""),
        "loss_ema": record.get("eval_ema/nats_per_token", ""),
        "bits_per_byte": record.get("eval/bits_per_byte", ""),
        "lr": spec.lr,
        "warmup_steps": spec.warmup_steps,
        "seed": spec.seed,
    }
