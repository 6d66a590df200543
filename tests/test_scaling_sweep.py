"""scaling_laws: ladder counts, the IsoFLOP planner, the runner (real train.py subprocesses),
resume, the cluster script and the collector."""

import csv
import dataclasses
import json
import math
import os
import pathlib
import shlex
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mdm.config import base_config, validate
from mdm.cli import parse_command_line
from mdm.errors import ConfigError
from mdm.experiment import abstract_state, build
from mdm.flops import nonembedding_params, total_params
from mdm.metrics import read_metrics
from scaling_laws import sweep
from scaling_laws.ladder import LADDER, SMDM_SHAPES, get_shape
from scaling_laws.planner import budget_tag, peak_lr, plan_run, plan_sweep, warmup_steps
from scaling_laws.presets import PRESETS, get_preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTRACT = (
    "objective",
    "run",
    "budget",
    "params",
    "params_total",
    "tokens",
    "flops",
    "loss",
    "steps",
    "batch_size",
    "seq_len",
    "workdir",
)

# SMDM's non-embedding N per config, as its pretrain/train_mdm.py `model_para_config` lists them
# in SMDM's repository: an independent oracle for the ladder's formula.
SMDM_N = {
    "6M": 6_294_784, "19M": 18_880_896, "34M": 33_563_136, "48M": 47_786_688, "66M": 65_549_440,
    "75M": 75_387_520, "85M": 85_214_080, "113M": 113_265_408, "142M": 141_581_568, "170M": 169_897_728,
    "180M": 179_856_768, "206M": 205_550_464, "231M": 231_244_160, "268M": 268_469_248, "302M": 302_027_776,
    "336M": 335_586_304, "472M": 471_906_560, "551M": 550_557_440, "571M": 571_001_728, "629M": 629_208_320,
    "666M": 666_168_448, "717M": 717_285_888, "761M": 761_335_168, "831M": 830_541_312, "944M": 943_796_736,
    "1028M": 1_027_677_952, "1233M": 1_233_213_184, "1476M": 1_476_487_168, "1678M": 1_677_826_048,
    "2121M": 2_121_393_280,
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Ladder


def _model_config(shape, objective="mdm", tie=True, time_conditioning=False, vocab_source="bytes"):
    c = base_config()
    c.objective = objective
    for key, value in shape.overrides().items():
        c.model[key.split(".")[1]] = value
    c.model.tie_embeddings = tie
    c.model.time_conditioning = time_conditioning
    if vocab_source == "synthetic":
        c.data.source = "synthetic"
    validate(c)
    return c


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "size,objective,tie,time_conditioning",
    [("8k", "mdm", True, False), ("33k", "ar", False, False), ("300k", "mdm", True, True), ("1M", "ar", True, False)],
)
def test_ladder_counts_equal_the_initialised_model(size, objective, tie, time_conditioning):
    shape = get_shape(size)
    exp = build(_model_config(shape, objective, tie, time_conditioning))
    # The shapes init produces (traced, not run: the real init's compile costs seconds; the mini
    # sweep below checks the total against train.py's count of its actually initialised params).
    t = jnp.ones((1,)) if time_conditioning else None
    variables = jax.eval_shape(
        lambda rng: nn.unbox(exp.objective.model.init(rng, jnp.zeros((1, 16), jnp.int32), t)), jax.random.PRNGKey(0)
    )
    params = variables["params"]
    vocab = exp.tokenizer.vocab_size
    cfg = shape.config(vocab, causal=objective == "ar", tie_embeddings=tie, time_conditioning=time_conditioning)
    assert total_params(cfg) == _count(params)
    embedding = _count(params["embedding"]) + (0 if tie else _count(params["head"]))
    assert nonembedding_params(cfg) == _count(params) - embedding
    if not time_conditioning:
        assert shape.params == nonembedding_params(cfg)


def test_smdm_shapes_match_smdm_counts_and_a_built_model():
    assert {s.name: s.params for s in SMDM_SHAPES} == SMDM_N
    # The largest one, built (abstractly) through the library with SMDM's untied 32k head.
    shape = get_shape("2121M")
    c = _model_config(shape, tie=False)
    exp = build(c)
    params = abstract_state(exp, jax.random.PRNGKey(0), 8).params  # the train state's params, by shape
    embedding = _count(params["embedding"]) + _count(params["head"])
    assert _count(params) - embedding == SMDM_N["2121M"]


def test_ladder_is_ordered_and_spans_8k_to_2b():
    sizes = [s.params for s in LADDER.values()]
    assert sizes == sorted(sizes) and sizes[0] < 1e4 and sizes[-1] > 2e9
    with pytest.raises(ConfigError, match="unknown model size '7M'"):
        get_shape("7M")


# ----------------------------------------------------------------------------------------------
# Planner


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_planner_spends_every_budget_within_half_a_step(name):
    preset = get_preset(name)
    vocab = 259 if name in ("smoke", "mini") else 32000
    runs = plan_sweep(preset, vocab)
    assert len(runs) == sum(len(sizes) for objective in ("mdm", "ar") for _, sizes in preset.grid_for(objective))
    for r in runs:
        step_flops = r.flops_per_token * r.batch_size * r.seq_len
        # The step count closest to the budget: |s x step - C| is convex in s, so beating both neighbours suffices.
        miss = abs(r.steps * step_flops - r.budget)
        assert miss <= abs((r.steps + 1) * step_flops - r.budget) and (
            r.steps == 1 or miss <= abs((r.steps - 1) * step_flops - r.budget)
        )
        assert abs(r.flops / r.budget - 1) <= 0.5 / r.steps + 1e-12
        assert abs(r.flops / r.budget - 1) < (0.01 if name != "mini" else 0.1)  # <= 0.5 % from >= 100 steps
        assert r.steps >= preset.min_steps and 1 <= r.warmup_steps <= r.steps // 2 or r.steps == 1
        assert r.tokens == r.steps * r.batch_size * r.seq_len
    # MDM and AR follow one protocol: a cell both grids hold gets the same steps, batch and recipe.
    by_cell = {}
    for r in runs:
        by_cell.setdefault((r.budget, r.size), []).append((r.steps, r.batch_size, r.lr, r.warmup_steps, r.flops))
    assert all(v[0] == v[-1] for v in by_cell.values()) and any(len(v) == 2 for v in by_cell.values())


def test_smoke_preset_shape():
    preset = get_preset("smoke")
    for objective in ("mdm", "ar"):
        grid = preset.grid_for(objective)
        assert len(grid) >= 3 and all(len(sizes) >= 3 for _, sizes in grid)
    runs = plan_sweep(preset, 259)
    assert {r.objective for r in runs} == {"mdm", "ar"} and all(r.seq_len == 128 for r in runs)
    assert all(get_shape(r.size).params < 5e5 for r in runs)  # tiny CPU rungs


def test_objective_grids_replace_the_shared_one():
    preset = dataclasses.replace(
        get_preset("mini"), grid=((1e9, ("5k", "8k")),), objective_grids=(("ar", ((1e9, ("19k", "33k")), (2e9, ("33k",)))),)
    )
    runs = plan_sweep(preset, 259)
    assert [r.name for r in runs] == ["mdm_C1e9_5k", "mdm_C1e9_8k", "ar_C1e9_19k", "ar_C1e9_33k", "ar_C2e9_33k"]
    # --budgets alone keeps each objective's own sizes; --sizes alone keeps each objective's budgets.
    by_budget = plan_sweep(preset, 259, budgets=(3e9,))
    assert [r.name for r in by_budget] == ["mdm_C3e9_5k", "mdm_C3e9_8k", "ar_C3e9_19k", "ar_C3e9_33k"]
    assert [r.name for r in plan_sweep(preset, 259, sizes=("8k",))] == ["mdm_C1e9_8k", "ar_C1e9_8k", "ar_C2e9_8k"]


def test_seeds_replicate_every_cell_with_only_the_seed_changed():
    preset = dataclasses.replace(get_preset("mini"), seeds=(0, 1))
    runs = plan_sweep(preset, 259, ("mdm",))
    assert [(r.name, r.seed) for r in runs] == [("mdm_C1.3e8_8k", 0), ("mdm_C1.3e8_8k_s1", 1)]
    a, b = (dict(r.overrides) for r in runs)
    assert (a.pop("seed"), b.pop("seed")) == ("0", "1") and a == b
    assert [r.name for r in plan_sweep(preset, 259, ("ar",), seeds=(2,))] == ["ar_C1.3e8_8k_s2"]
    with pytest.raises(ConfigError, match="seeds must be non-negative"):
        plan_sweep(preset, 259, seeds=(-1,))
    with pytest.raises(ConfigError, match="list each once"):
        plan_sweep(preset, 259, seeds=(1, 1))
    with pytest.raises(ConfigError, match=r"--config.seed is set by the sweep planner.*--seeds"):
        sweep.plan("mini", extra=[("seed", "3")])


def test_lr_and_warmup_rules():
    smoke = get_preset("smoke")
    assert peak_lr(smoke, get_shape("1M")) == pytest.approx(2e-3)  # the reference width, 128
    assert peak_lr(smoke, get_shape("33k")) == pytest.approx(2e-3 * 2.0)  # (128 / 32) ** 0.5
    smdm = get_preset("smdm")
    assert peak_lr(smdm, get_shape("19M")) == peak_lr(smdm, get_shape("629M")) == 2e-4
    assert warmup_steps(smdm, 50_000) == 500 and warmup_steps(smdm, 5_000) == 100  # max(100, 1 %)
    assert warmup_steps(smoke, 100) == 10 and warmup_steps(smoke, 1000) == 50 and warmup_steps(smoke, 12) == 6


def test_planner_lowers_the_batch_before_refusing_a_cell():
    preset = dataclasses.replace(get_preset("smoke"), batch_size=32, min_batch=8, min_steps=100)
    # 131k at L = 128: F = 6 (2 (4 x 64^2 + 3 x 64 x 256) + 64 x 259) + 12 x 2 x 128 x 64 = 1,082,496
    # FLOPs/token, so 2e11 buys 45 steps at batch 32 and 90 at 16: the planner goes to batch 8 (180).
    r = plan_run(preset, "mdm", "131k", 2e11, 259)
    assert r.flops_per_token == 1_082_496
    assert (r.batch_size, r.steps) == (8, 180)
    with pytest.raises(ConfigError, match=r"buys only 27 steps of size 1M at batch 8"):
        plan_run(preset, "mdm", "1M", 2e11, 259)


def test_budget_too_small_for_one_step_is_one_line():
    with pytest.raises(ConfigError, match="too small for even one step of size 8k") as e:
        plan_run(get_preset("mini"), "ar", "8k", 1e6, 259)
    assert "\n" not in str(e.value)
    assert budget_tag(2e11) == "2e11" and budget_tag(1.5e12) == "1.5e12" and budget_tag(1.3e8) == "1.3e8"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["plan", "--preset", "nope", "--sweep_dir", "{d}"], "error: unknown preset 'nope'; choose one of"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--budgets", "1e5"], "error: budget 1e+05 FLOPs is too small"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--budgets", "lots"], "error: --budgets=lots: expects"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--sizes", "9k"], "error: unknown model size '9k'"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--objectives", "gan"], "error: --objectives: unknown"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--config.optim.lr=1"], "error: --config.optim.lr is set by"),
        (["plan", "--preset", "mini", "--sweep_dir", "{d}", "--config.model.widht=3"], "error: unknown config key"),
        (["plan", "--preset", "mini"], "error: plan needs --sweep_dir"),
        (["launch", "--preset", "mini"], "error: usage: python -m scaling_laws.sweep"),
        (["collect", "--sweep_dir", "{d}/none"], "error: no plan at"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert sweep.main([a.replace("{d}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_a_sweep_dir_refuses_a_conflicting_plan(tmp_path):
    specs = sweep.plan("mini")
    sweep.save_plan(tmp_path, "mini", specs, [])
    assert sweep.save_plan(tmp_path, "mini", specs[:1], []) == specs  # re-planning a subset merges
    other = sweep.plan("mini", budgets=[1.3e8], sizes=["8k"], convention="6n")
    with pytest.raises(ConfigError, match="already plans run 'mdm_C1.3e8_8k' differently"):
        sweep.save_plan(tmp_path, "mini", other, [])
    with pytest.raises(ConfigError, match="other --config overrides"):
        sweep.save_plan(tmp_path, "mini", specs, [("data.val_percent", "10")])
    with pytest.raises(ConfigError, match="holds a sweep of preset 'mini', not 'smoke'"):
        sweep.save_plan(tmp_path, "smoke", sweep.plan("smoke"), [])


def test_run_status_reads_the_final_evaluation(tmp_path):
    spec = sweep.plan("mini")[0]
    assert sweep.run_status(spec, tmp_path) == "new"
    lines = [{"step": 0, "params": 1}, {"step": spec.steps, "train/loss": 5.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert sweep.run_status(spec, tmp_path) == "partial"
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": spec.steps - 1, "eval/nats_per_token": 4.0}) + "\n")
    assert sweep.run_status(spec, tmp_path) == "partial"  # an evaluation, but not at the last step
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": spec.steps, "eval/nats_per_token": 3.5}) + "\n")
    assert sweep.run_status(spec, tmp_path) == "done"
    assert sweep.final_eval(spec, tmp_path)["eval/nats_per_token"] == 3.5


# ----------------------------------------------------------------------------------------------
# The script mode


def test_script_mode_writes_one_runnable_command_per_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the script cds there; its config paths are relative to the repository
    specs = sweep.plan("smoke", extra=[("data.val_percent", "6")])
    script, runs_json = sweep.write_script(tmp_path, specs, [("data.val_percent", "6")])
    records = json.loads(runs_json.read_text())
    n = len(specs)
    assert [r["name"] for r in records] == [s.name for s in specs] and n == 30
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, PYTHON="echo")
    for k in (1, n // 2, n):
        printed = subprocess.run(["bash", str(script), str(k)], env=env, capture_output=True, text=True, check=True).stdout
        argv = shlex.split(printed)
        assert argv == records[k - 1]["argv"]
        config, flags = parse_command_line(argv[1:], ROOT / "configs" / "default.py", {"workdir": ""})
        spec = specs[k - 1]
        assert flags["workdir"] == str(tmp_path.resolve() / "runs" / spec.name)
        assert (config.objective, config.model.d_model, config.train.num_steps) == (
            spec.objective,
            get_shape(spec.size).d_model,
            spec.steps,
        )
        assert (config.train.batch_size, config.optim.lr, config.data.val_percent) == (spec.batch_size, spec.lr, 6)
    bad = subprocess.run(["bash", str(script), str(n + 1)], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and f"no run {n + 1}: choose 1..{n}" in bad.stderr


# ----------------------------------------------------------------------------------------------
# End to end: two real train.py runs, the collector, resume


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    rc = sweep.main(["run", "--preset", "mini", "--sweep_dir", str(sweep_dir)])
    return sweep_dir, rc


def test_mini_sweep_trains_and_collects(mini_sweep, capsys):
    sweep_dir, rc = mini_sweep
    assert rc == 0
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(CONTRACT) <= set(rows[0])
    assert sorted(r["objective"] for r in rows) == ["ar", "mdm"]
    specs = {s.name: s for s in sweep.load_plan(sweep_dir)[0]}
    for row in rows:
        spec = specs[row["run"]]
        records = read_metrics(pathlib.Path(row["workdir"]) / "metrics.jsonl")
        final = [r for r in records if "eval/nats_per_token" in r][-1]
        assert float(row["loss"]) == final["eval/nats_per_token"] and math.isfinite(float(row["loss"]))
        # A byte model that trained 6 steps is between perfect and far worse than uniform (ln 259 = 5.56).
        assert 0 < float(row["loss"]) < 2 * math.log(259)
        assert final["step"] == spec.steps == int(row["steps"]) == max(r["step"] for r in records)
        assert int(row["tokens"]) == int(row["steps"]) * int(row["batch_size"]) * int(row["seq_len"])
        assert float(row["flops"]) == pytest.approx(spec.flops_per_token * int(row["tokens"]))
        assert abs(float(row["flops"]) / float(row["budget"]) - 1) < 0.05
        # train.py counts the initialised params itself (step-0 record): the ladder's total agrees.
        assert int(row["params_total"]) == records[0]["params"]
        assert int(row["params"]) == get_shape("8k").params
        assert (pathlib.Path(row["workdir"]) / "checkpoints").is_dir()


def test_rerunning_a_finished_sweep_skips_every_run(mini_sweep, capsys):
    sweep_dir, _ = mini_sweep
    logs = {p: p.read_text() for p in (sweep_dir / "runs").glob("*/train.log")}
    metrics = {p: p.read_text() for p in (sweep_dir / "runs").glob("*/metrics.jsonl")}
    capsys.readouterr()
    assert sweep.main(["run", "--preset", "mini", "--sweep_dir", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 2 and "collected 2 of 2 runs" in out
    assert {p: p.read_text() for p in logs} == logs  # no train.py was launched
    assert {p: p.read_text() for p in metrics} == metrics


def test_collector_leaves_out_unfinished_runs(mini_sweep, tmp_path, capsys):
    sweep_dir, _ = mini_sweep
    copy = tmp_path / "copy"
    (copy / "runs" / "ar_C1.3e8_8k").mkdir(parents=True)
    (copy / "plan.json").write_text((sweep_dir / "plan.json").read_text())
    src = sweep_dir / "runs" / "ar_C1.3e8_8k" / "metrics.jsonl"
    kept = [r for r in read_metrics(src) if "eval/nats_per_token" not in r]
    (copy / "runs" / "ar_C1.3e8_8k" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    rows = sweep.collect(copy)
    assert rows == [] and "not finished: mdm_C1.3e8_8k, ar_C1.3e8_8k" in capsys.readouterr().out
    with open(copy / "results.csv") as f:
        assert next(csv.reader(f))[: len(CONTRACT)] == list(CONTRACT)
