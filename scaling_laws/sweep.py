"""Run an IsoFLOP sweep: plan it, train every run with train.py, collect the losses.

    python -m scaling_laws.sweep plan    --preset smoke --sweep_dir DIR   # print the grid, write DIR/plan.json
    python -m scaling_laws.sweep run     --preset smoke --sweep_dir DIR   # train the runs here, one after another
    python -m scaling_laws.sweep script  --preset smoke --sweep_dir DIR   # DIR/commands.sh + DIR/runs.json
    python -m scaling_laws.sweep collect --sweep_dir DIR                  # DIR/results.csv
    (then: python -m scaling_laws.report --sweep_dir DIR)

Flags: --objectives mdm,ar (default both), --budgets 1e11,3e11 and --sizes 19k,33k (replace the
preset's grid), --seeds 0,1 (replace the preset's seeds), --convention full|6n, and any
--config.KEY=VALUE for every run (e.g. --config.data.source=text --config.data.path='corpus/*.txt')
except the keys the planner sets (shape, batch, steps, lr, warm-up, length, seed).

Each run is a plain `train.py` run in DIR/runs/<name> (log: train.log there). A run is finished
when its metrics.jsonl holds the evaluation at its last step; `run` skips finished runs and
relaunches the others, which resume from their latest checkpoint (train.py does that).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Sequence, TextIO

from mdm.config import validate
from mdm.cli import apply_override, load_config, parse_flags
from mdm.data import make_tokenizer
from mdm.errors import ConfigError, MdmError
from scaling_laws.planner import OBJECTIVES, RunSpec, format_value, plan_sweep
from scaling_laws.presets import get_preset
from scaling_laws.run_status import RESULT_COLUMNS, final_eval, result_row, run_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("plan", "run", "script", "collect")
PLANNED_KEYS = (
    "objective",
    "model.num_layers",
    "model.d_model",
    "model.num_heads",
    "model.mlp_dim",
    "data.seq_len",
    "train.batch_size",
    "train.num_steps",
    "optim.lr",
    "optim.warmup_steps",
    "train.eval_every",
    "seed",
)


# ----------------------------------------------------------------------------------------------
# Configs and plans


def run_config(spec: RunSpec, extra: Sequence[tuple[str, str]] = ()):
    """The validated config train.py will build for `spec` (+ `extra` user overrides)."""
    config = load_config(ROOT / spec.base_config)
    for key, value in (*spec.overrides, *extra):
        apply_override(config, key, value)
    validate(config)
    return config


def train_argv(spec: RunSpec, workdir: str, extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    """train.py's arguments for `spec` (paths as given: `workdir`, the config relative to the repository)."""
    args = ["--workdir", workdir, "--config", spec.base_config]
    return args + [f"--config.{k}={v}" for k, v in (*spec.overrides, *extra)]


def plan(
    preset_name: str,
    objectives: Sequence[str] = OBJECTIVES,
    budgets: Sequence[float] = (),
    sizes: Sequence[str] = (),
    convention: str = "",
    extra: Sequence[tuple[str, str]] = (),
    seeds: Sequence[int] = (),
) -> list[RunSpec]:
    """The sweep's run specs; each run's full config is built and validated before anything runs."""
    preset = get_preset(preset_name)
    for key, _ in extra:
        if key in PLANNED_KEYS:
            raise ConfigError(
                f"--config.{key} is set by the sweep planner per run; change the preset or --budgets/--sizes/--seeds instead"
            )
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ConfigError(f"--objectives: unknown objective {bad[0]!r}; choose from {', '.join(OBJECTIVES)}")
    # The model context (vocabulary, tied head, time conditioning) of the configs the runs will use.
    probe = load_config(ROOT / preset.base_config(objectives[0] if objectives else "mdm"))
    for key, value in (*preset.overrides, *extra):
        apply_override(probe, key, format_value(value))
    vocab_size = make_tokenizer(probe.data).vocab_size
    specs = plan_sweep(
        preset,
        vocab_size,
        tuple(objectives),
        budgets=tuple(budgets) or None,
        sizes=tuple(sizes) or None,
        tie_embeddings=probe.model.tie_embeddings,
        time_conditioning=probe.model.time_conditioning,
        convention=convention or None,
        seeds=tuple(seeds) or None,
    )
    for spec in specs:
        run_config(spec, extra)
    return specs


def save_plan(sweep_dir: pathlib.Path, preset: str, specs: Sequence[RunSpec], extra: Sequence[tuple[str, str]]) -> list[RunSpec]:
    """Merges `specs` into SWEEP_DIR/plan.json (runs planned earlier stay); returns all its runs.

    Another preset, other --config overrides, or a run name planned before with a different spec
    is refused: it would mix two protocols in one results table.
    """
    path = sweep_dir / "plan.json"
    saved: dict = {"preset": preset, "extra": [list(kv) for kv in extra], "runs": []}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["preset"] != preset:
            raise ConfigError(f"{path} holds a sweep of preset {saved['preset']!r}, not {preset!r}; use a fresh --sweep_dir")
        if [tuple(kv) for kv in saved["extra"]] != list(extra):
            raise ConfigError(
                f"{path} was planned with other --config overrides ({saved['extra']}); use a fresh --sweep_dir or the same flags"
            )
    runs = {r["name"]: r for r in saved["runs"]}
    for spec in specs:
        if spec.name in runs and runs[spec.name] != json.loads(json.dumps(spec.to_dict())):
            raise ConfigError(
                f"{path} already plans run {spec.name!r} differently (preset {saved['preset']!r}); "
                "use a fresh --sweep_dir or delete plan.json"
            )
        runs[spec.name] = spec.to_dict()
    saved["runs"] = list(runs.values())
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved, indent=1) + "\n")
    os.replace(tmp, path)
    return [RunSpec.from_dict(r) for r in saved["runs"]]


def load_plan(sweep_dir: pathlib.Path) -> tuple[list[RunSpec], list[tuple[str, str]]]:
    """The runs and --config overrides in SWEEP_DIR/plan.json."""
    path = sweep_dir / "plan.json"
    if not path.exists():
        raise ConfigError(f"no plan at {path}; run `python -m scaling_laws.sweep plan|run --preset NAME --sweep_dir {sweep_dir}`")
    saved = json.loads(path.read_text())
    return [RunSpec.from_dict(r) for r in saved["runs"]], [tuple(kv) for kv in saved["extra"]]


def format_plan(specs: Sequence[RunSpec]) -> str:
    """A table of the runs: size, N, budget, steps, batch, tokens, D/N, lr, warm-up, spent/C."""
    head = ("run", "N", "budget", "steps", "batch", "tokens", "D/N", "lr", "warmup", "spent/C")
    widths = (-24, 10, 8, 6, 5, 10, 7, 8, 6, 8)
    lines = [" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths))]
    for s in specs:
        lines.append(
            f"{s.name:<24} {s.params:>10,} {s.budget:>8.2g} {s.steps:>6} {s.batch_size:>5} {s.tokens:>10,} "
            f"{s.tokens / s.params:>7.1f} {s.lr:>8.2e} {s.warmup_steps:>6} {s.flops / s.budget:>8.4f}"
        )
    total = sum(s.flops_per_token_full * s.tokens for s in specs)
    lines.append(f"{len(specs)} runs, {total:.3g} FLOPs in all (6 N_mm + attention), convention {specs[0].convention!r}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Results


def collect(sweep_dir: pathlib.Path, out: TextIO | None = None) -> list[dict]:
    """Writes SWEEP_DIR/results.csv: one row per finished run with a finite loss; returns the rows."""
    out = out or sys.stdout
    specs, _ = load_plan(sweep_dir)
    rows, missing = [], []
    for spec in specs:
        workdir = sweep_dir / "runs" / spec.name
        record = final_eval(spec, workdir)
        if record is None or not math.isfinite(record["eval/nats_per_token"]):
            missing.append(spec.name)
            continue
        rows.append(result_row(spec, workdir.resolve(), record))
    path = sweep_dir / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    print(f"collected {len(rows)} of {len(specs)} runs into {path}", file=out)
    if missing:
        print(f"not finished: {', '.join(missing)}", file=out)
    return rows


# ----------------------------------------------------------------------------------------------
# Running


def _last_error(log_path: pathlib.Path) -> str:
    """The `error: ...` line of a failed train.py log, else its last non-empty line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(empty log)"])[-1]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_sweep(
    sweep_dir: pathlib.Path,
    specs: Sequence[RunSpec],
    extra: Sequence[tuple[str, str]] = (),
    python: str = sys.executable,
    out: TextIO | None = None,
) -> dict[str, str]:
    """Trains the unfinished runs of `specs` one after another, each as a train.py subprocess.

    Prints one line per run; returns {run name: 'skipped' | 'done' | 'failed'}. A failed run does
    not stop the sweep; its last error line and log path are printed.
    """
    out = out or sys.stdout
    outcome: dict[str, str] = {}
    todo_flops = sum(s.flops_per_token_full * s.tokens for s in specs)
    done_flops, busy = 0.0, 0.0
    for i, spec in enumerate(specs, 1):
        workdir = (sweep_dir / "runs" / spec.name).resolve()  # absolute: train.py runs from the repository root
        head = f"[{i}/{len(specs)}] {spec.name}"
        cost = spec.flops_per_token_full * spec.tokens
        status = run_status(spec, workdir)
        if status == "done":
            todo_flops -= cost
            loss = final_eval(spec, workdir)["eval/nats_per_token"]
            print(f"{head}: finished before, skipped (loss {loss:.4f} nats/token)", file=out, flush=True)
            outcome[spec.name] = "skipped"
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "train.log"
        argv = [python, str(ROOT / "train.py"), *train_argv(spec, str(workdir), extra)]
        start = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(
                f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if status == 'partial' else 'start'}: {shlex.join(argv)}\n"
            )
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if "JAX_COMPILATION_CACHE_DIR" not in env:  # runs of one size share their eval (and init) programs
                env.update(
                    JAX_COMPILATION_CACHE_DIR=str(sweep_dir.resolve() / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                )
            rc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        took = time.perf_counter() - start
        todo_flops -= cost
        record = final_eval(spec, workdir)
        if rc != 0 or record is None:
            print(f"{head}: FAILED (exit {rc}): {_last_error(log_path)} [log: {log_path}]", file=out, flush=True)
            outcome[spec.name] = "failed"
            continue
        done_flops, busy = done_flops + cost, busy + took
        left = todo_flops * busy / done_flops
        print(
            f"{head}: {'resumed, ' if status == 'partial' else ''}{spec.steps} steps x {spec.batch_size * spec.seq_len} tokens, "
            f"loss {record['eval/nats_per_token']:.4f} nats/token, {_duration(took)}"
            + (f" (about {_duration(left)} left)" if todo_flops > 0 else ""),
            file=out,
            flush=True,
        )
        outcome[spec.name] = "done"
    return outcome


def write_script(
    sweep_dir: pathlib.Path, specs: Sequence[RunSpec], extra: Sequence[tuple[str, str]] = ()
) -> tuple[pathlib.Path, pathlib.Path]:
    """SWEEP_DIR/commands.sh (`bash commands.sh` runs all in order, `bash commands.sh K ...` runs
    number K, e.g. a job array's index) and SWEEP_DIR/runs.json (one object per run: name,
    objective, workdir and train.py's argv relative to the repository root)."""
    sweep_abs = sweep_dir.resolve()
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(specs)} train.py runs of an IsoFLOP sweep, written by `python -m scaling_laws.sweep script`.",
        "# bash commands.sh          runs them all, one after another, stopping at a failure (a finished run",
        "#                           finds its checkpoint at the final step and exits; a partial one resumes)",
        "# bash commands.sh K [K..]  runs number K (1-based), e.g. bash commands.sh $SLURM_ARRAY_TASK_ID",
        "# PYTHON, MDM_ROOT (the repository) and SWEEP_DIR may be set to paths on the cluster.",
        "set -euo pipefail",
        'PYTHON="${PYTHON:-python}"',
        f'MDM_ROOT="${{MDM_ROOT:-{shlex.quote(str(ROOT))}}}"',
        f'SWEEP_DIR="${{SWEEP_DIR:-{shlex.quote(str(sweep_abs))}}}"',
        'cd "$MDM_ROOT"',
        "run() {",
        '  case "$1" in',
    ]
    records = []
    for i, spec in enumerate(specs, 1):
        args = train_argv(spec, "@WORKDIR@", extra)
        quoted = " ".join(shlex.quote(a) for a in args).replace("@WORKDIR@", f'"$SWEEP_DIR/runs/{spec.name}"')
        lines.append(f'    {i}) "$PYTHON" train.py {quoted} ;;')
        records.append(
            {
                "index": i,
                "name": spec.name,
                "objective": spec.objective,
                "workdir": str(sweep_abs / "runs" / spec.name),
                "argv": ["train.py", *train_argv(spec, str(sweep_abs / "runs" / spec.name), extra)],
            }
        )
    lines += [
        f'    *) echo "no run $1: choose 1..{len(specs)}" >&2; return 2 ;;',
        "  esac",
        "}",
        'if [ "$#" -gt 0 ]; then',
        '  for k in "$@"; do run "$k"; done',
        "else",
        f'  for k in $(seq 1 {len(specs)}); do run "$k"; done',
        "fi",
    ]
    script = sweep_dir / "commands.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    runs_json = sweep_dir / "runs.json"
    runs_json.write_text(json.dumps(records, indent=1) + "\n")
    return script, runs_json


# ----------------------------------------------------------------------------------------------
# Command line


FLAGS = {"preset": "", "sweep_dir": "", "objectives": "mdm,ar", "budgets": "", "sizes": "", "seeds": "", "convention": ""}


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _budgets(text: str) -> list[float]:
    try:
        return [float(t) for t in _split(text)]
    except ValueError:
        raise ConfigError(f"--budgets={text}: expects comma-separated FLOP counts, e.g. --budgets=1e11,3e11") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _split(text)]
    except ValueError:
        raise ConfigError(f"--seeds={text}: expects comma-separated integers, e.g. --seeds=0,1") from None


def _body(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"usage: python -m scaling_laws.sweep {{{'|'.join(COMMANDS)}}} --preset NAME --sweep_dir DIR [...]")
    command = argv[0]
    flags, config_path, extra = parse_flags(argv[1:], FLAGS, allow_config=True)
    if config_path is not None:
        raise ConfigError("--config PATH is chosen by the preset; set single keys with --config.KEY=VALUE")
    if not flags["sweep_dir"]:
        raise ConfigError(f"{command} needs --sweep_dir DIR (where plan.json, runs/ and results.csv live)")
    sweep_dir = pathlib.Path(flags["sweep_dir"])
    if command == "collect":
        collect(sweep_dir)
        return
    if not flags["preset"]:
        raise ConfigError(f"{command} needs --preset NAME (smoke, mini, gpu_small or smdm)")
    specs = plan(
        flags["preset"],
        _split(flags["objectives"]),
        _budgets(flags["budgets"]),
        _split(flags["sizes"]),
        flags["convention"],
        extra,
        _seeds(flags["seeds"]),
    )
    save_plan(sweep_dir, flags["preset"], specs, extra)
    if command == "plan":
        print(format_plan(specs))
        print(f"plan written to {sweep_dir / 'plan.json'}")
    elif command == "script":
        script, runs_json = write_script(sweep_dir, specs, extra)
        print(f"{len(specs)} runs: {script} (bash {script.name} [K]) and {runs_json}")
    else:
        outcome = run_sweep(sweep_dir, specs, extra)
        collect(sweep_dir)
        failed = [name for name, o in outcome.items() if o == "failed"]
        if failed:
            raise MdmError(
                f"{len(failed)} run(s) failed ({', '.join(failed)}); see their train.log, fix, and run again to resume"
            )
        print(f"next: python -m scaling_laws.report --sweep_dir {sweep_dir}")


def main(argv: list[str]) -> int:
    from mdm.cli import run_cli

    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
