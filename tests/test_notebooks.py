"""The notebooks and what they stand on: unmasking trajectories, checkpoint loading, notebook execution.

The notebooks run top to bottom in a fresh kernel (nbclient) with their parameters cell edited the way
papermill does it (assignments appended). The sample notebook's full run is `-m slow`; the default run
executes the runs notebook on MetricsWriter-written runs and a synthetic sweep, and the sample notebook
up to a bad CHECKPOINT, which must stop with one line and no trace.
"""

from __future__ import annotations

import base64
import io
import json
import math
import pathlib
import re
import subprocess
import sys
import time

import jax
import nbformat
import numpy as np
import pytest
from matplotlib import image as mpimg
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from scipy import stats

from mdm import notebook, runs, unmasking
from mdm.checkpoint import Checkpointer
from mdm.cli import load_config
from mdm.errors import CheckpointError, ConfigError
from mdm.experiment import build
from mdm.generation import generate, make_canvas
from mdm.metrics import MetricsWriter, read_metrics
from mdm.trained import load_trained
from mdm.samplers import SamplerSettings, make_sampler
from mdm.schedules import make_schedule
from mdm.state import init_state
from test_loop import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# ----------------------------------------------------------------------------------------------
# Running notebooks


def _execute(
    name: str,
    params: dict,
    tmp_path: pathlib.Path,
    monkeypatch,
    upto: str | None = None,
    extra: int = 0,
    expect_error: bool = False,
):
    """Executes notebooks/<name> with `params` appended to its parameters cell (papermill-style).

    upto: keep the cells up to the first code cell containing this text, and `extra` more.
    Returns (notebook, seconds); with expect_error, the notebook executed up to a cell that must fail.
    """
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters'"
    tagged[0].source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    if upto is not None:
        stop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and upto in c.source)
        nb.cells = nb.cells[: stop + 1 + extra]
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    if expect_error:
        with pytest.raises(CellExecutionError):
            client.execute()
        return nb
    client.execute()
    return nb, time.perf_counter() - start


def _outputs(nb, kind: str | None = None):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind is None or out.output_type == kind:
                yield cell, out


def _text(nb, stream: str = "stdout") -> str:
    return "".join(out.text for _, out in _outputs(nb, "stream") if out.name == stream)


def _pngs(nb) -> list[np.ndarray]:
    """Every image/png output, decoded to pixels."""
    images = []
    for _, out in _outputs(nb):
        data = out.get("data", {})
        if "image/png" in data:
            images.append(mpimg.imread(io.BytesIO(base64.b64decode(data["image/png"])), format="png"))
    return images


def _assert_real_figure(pixels: np.ndarray, min_size: int = 200) -> None:
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= min_size, pixels.shape
    assert pixels[..., :3].std() > 0.05, "a blank canvas"


def _cell_with(nb, text: str):
    return next(c for c in nb.cells if c.cell_type == "code" and text in c.source)


# ----------------------------------------------------------------------------------------------
# Fixtures: runs written without training (fast) and, for slow tests, trained ones


def _saved_untrained(workdir: pathlib.Path, **overrides):
    """A checkpoint of freshly initialised params (no training: a second or two); returns the state."""
    config = tiny_config(**overrides)
    exp = build(config)
    state = init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(0), config.data.seq_len)
    Checkpointer(workdir).save(0, state, {}, config)
    return state


def _synthetic_run(workdir: pathlib.Path, floor: float, steps: int = 60) -> dict[int, float]:
    """metrics.jsonl of a run whose eval loss is floor + 2 exp(-step / 20); returns {step: eval loss}."""
    writer = MetricsWriter(workdir / "metrics.jsonl", tensorboard=False)
    writer.write(0, {"params": 28960})
    evals = {}
    for step in range(1, steps + 1):
        loss = floor + 2.0 * math.exp(-step / 20)
        writer.write(
            step,
            {
                "train/loss": loss + 0.05 * math.sin(step),
                "train/lr": 1e-3,
                "train/tokens_per_s": 1000.0 + step,
                "train/grad_norm": 1.0 / step,
            },
        )
        if step % 10 == 0:
            evals[step] = loss
            writer.write(
                step,
                {
                    "eval/nats_per_token": loss,
                    "eval/nats_per_token_stderr": 0.02,
                    "eval/bits_per_byte": loss / math.log(2),
                    "eval_ema/nats_per_token": loss + 0.01,
                },
            )
    return evals


def _synthetic_sweep(sweep_dir: pathlib.Path) -> None:
    """results.csv of MDM and AR runs drawn from known L(N, D) laws (3 budgets x 5 sizes each)."""
    fits = pytest.importorskip("scaling_laws.results")
    rng = np.random.default_rng(0)
    rows = []
    for objective, (e, a, b, alpha, beta) in {
        "mdm": (1.9, 520.0, 2400.0, 0.34, 0.35),
        "ar": (1.8, 482.0, 2085.0, 0.35, 0.37),
    }.items():
        for c in np.logspace(18, 20, 3):
            g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
            centre = math.log10(g * (c / 6) ** (beta / (alpha + beta)))
            for i, log_n in enumerate(np.linspace(centre - 0.6, centre + 0.6, 5)):
                n = int(round(10**log_n))
                tokens = int(round(c / (6.0 * n)))
                loss = (e + a * n**-alpha + b * tokens**-beta) * math.exp(0.005 * rng.standard_normal())
                rows.append(
                    fits.RunResult(
                        objective=objective,
                        run=f"{objective}-{c:.0e}-{i}",
                        budget=float(c),
                        params=n,
                        params_total=n + 4096,
                        tokens=tokens,
                        flops=6.0 * n * tokens,
                        loss=loss,
                        steps=tokens // 4096,
                        batch_size=32,
                        seq_len=128,
                        workdir=f"runs/{i}",
                    )
                )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    from results_csv import write_results

    write_results(sweep_dir / "results.csv", rows)


# ----------------------------------------------------------------------------------------------
# Notebook files


@pytest.mark.parametrize("name", ["sample.ipynb", "runs.ipynb"])
def test_notebooks_install_first_and_take_papermill_parameters(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0].source
    assert f'REPO_URL = "{notebook.REPO_URL}"' in first and 'pip install -q "git+{REPO_URL}"' in first and "import mdm" in first
    assert "parameters" in code[1].metadata.get("tags", [])
    assert not any(c.get("outputs") for c in code), "commit notebooks without outputs"


def test_committed_notebooks_are_what_the_builder_writes(tmp_path):
    """notebooks/*.ipynb are notebooks/build_notebooks.py's output: edit the builder, then rerun it."""
    builder = [sys.executable, str(NOTEBOOKS / "build_notebooks.py"), str(tmp_path)]
    subprocess.run(builder, check=True, capture_output=True, timeout=300)
    for name in ("sample.ipynb", "runs.ipynb"):
        built = nbformat.read(tmp_path / "notebooks" / name, as_version=4)
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        stale = f"notebooks/{name} differs from what notebooks/build_notebooks.py writes: run it and commit the result"
        assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], stale
        assert committed == built, stale


def test_readme_sections_give_the_colab_link_and_the_first_two_cells():
    text = (ROOT / "README.md").read_text()
    assert "## Use in Colab" in text and notebook.COLAB_URL in text
    nb = nbformat.read(NOTEBOOKS / "sample.ipynb", as_version=4)
    install, parameters = [c.source for c in nb.cells if c.cell_type == "code"][:2]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert install.strip() in [b.strip() for b in blocks], "the README shows the install cell as it is"
    assert any('CHECKPOINT = ""' in b for b in blocks) and 'CHECKPOINT = ""' in parameters
    assert "python -m mdm.plot" in text


# ----------------------------------------------------------------------------------------------
# Checkpoint loading for the notebooks


def test_tiny_default_config_is_configs_default():
    ours, theirs = notebook.tiny_default_config().to_dict(), load_config(ROOT / "configs" / "default.py").to_dict()
    differing = {f"{s}.{k}" for s in theirs if isinstance(theirs[s], dict) for k in theirs[s] if ours[s][k] != theirs[s][k]}
    differing |= {s for s in theirs if not isinstance(theirs[s], dict) and ours[s] != theirs[s]}
    assert differing == {"sample.num_samples"}
    short = notebook.tiny_default_config(150)
    assert short.train.num_steps == 150 and short.train.checkpoint_every == 150 and short.train.eval_every == 50


def test_notebook_helpers_refuse_a_zero_batch_size_or_zero_steps_in_one_line(tmp_path):
    from mdm.trained import Trained

    trained = Trained(build(tiny_config(**{"data.seq_len": 16})), None, None, 0, tmp_path)  # refused before any params are used
    with pytest.raises(ConfigError) as err:
        notebook.sample(trained, SamplerSettings("fhs"), num_samples=2, batch_size=0)
    assert str(err.value) == "batch_size=0 must be >= 1 (the samples drawn per call)"
    # num_steps=0 is blamed on itself, not replaced by the default length
    with pytest.raises(ConfigError, match=r"^num_steps=0 must be >= 1$"):
        notebook.train_tiny(tmp_path / "run", num_steps=0)
    with pytest.raises(ConfigError, match=r"^num_steps=0 must be >= 1$"):
        notebook.load_or_train("", train_steps=0, workdir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fetch_copies_a_checkpoint_step_and_loads_the_same_params(tmp_path):
    run = tmp_path / "run"
    state = _saved_untrained(run, **{"data.seq_len": 16})
    (run / "metrics.jsonl").write_text('{"step": 0, "params": 1}\n')
    local, step = notebook.fetch_checkpoint(str(run), cache_dir=str(tmp_path / "cache"), copy=True)  # the gs:// code path
    assert step == 0 and local != run and (local / "metrics.jsonl").read_text() == '{"step": 0, "params": 1}\n'
    loaded = load_trained(local, step)
    for x, y in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(x, y)
    # A workdir, its checkpoints/ folder and one step folder name the same run.
    assert runs.locate(str(run / "checkpoints" / "0"), "")[1] == 0
    assert str(runs.locate(str(run / "checkpoints"), "")[0]) == str(run)
    assert runs.is_remote("gs://bucket/run") and not runs.is_remote(str(run))


def test_bad_checkpoints_are_one_line_errors_naming_the_fix(tmp_path, capsys):
    (tmp_path / "junk" / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoints" / "3" / "state").write_text("not orbax")
    (tmp_path / "plain").mkdir()
    cases = [
        ("/no/such/run", "does not exist; set CHECKPOINT to a run's workdir"),
        (str(tmp_path / "plain"), "is not an mdm run: it has no checkpoints/ folder"),
        (str(tmp_path / "junk"), "is not an mdm checkpoint ("),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=re.escape(message)) as info:
            notebook.load_or_train(path)
        assert "\n" not in str(info.value)
    with notebook.one_line_errors():
        notebook.load_or_train("/no/such/run")
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint path /no/such/run does not exist") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# The unmasking recorder


def _spelling_denoiser(length: int, vocab: int):
    """Proposes, at every position, the token 'number of positions already filled' (sharply), so a
    sample spells out how many tokens its input had when each position was drawn."""

    def den(x, t):
        return 50.0 * jax.nn.one_hot((x != vocab).sum(-1), vocab)[:, None, :].repeat(length, 1)

    return den


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings("fhs", steps=3),
        SamplerSettings("ancestral", steps=12, cache=True),
        SamplerSettings("ancestral", steps=5, cache=False),
        SamplerSettings("confidence", steps=4, order="margin"),
    ],
    ids=lambda s: f"{s.sampler}-{s.steps}-{s.cache}",
)
def test_reveal_step_is_the_call_whose_logits_drew_the_token(settings):
    length, vocab, batch = 8, 9, 6
    sampler = make_sampler(settings, mask=vocab, schedule=make_schedule("linear"))
    canvas = np.full((batch, length), vocab, np.int32)
    canvas[1, [0, 5]] = [3, 4]  # context the sampler keeps
    traj = unmasking.record_calls(
        sampler, _spelling_denoiser(length, vocab), jax.random.split(jax.random.PRNGKey(1), batch), canvas, mask=vocab
    )
    tokens, steps = traj.tokens_BxL, traj.reveal_step_BxL
    np.testing.assert_array_equal(steps == -1, canvas != vocab)
    b, pos = np.nonzero(steps >= 0)
    filled_when_called = (traj.states_SxBxL[steps[b, pos], b] != vocab).sum(-1)
    np.testing.assert_array_equal(tokens[b, pos], filled_when_called)  # the token the oracle proposed at that call
    # States only ever unmask: each state agrees with the sample wherever it holds a token.
    held = traj.states_SxBxL != vocab
    assert np.all(np.where(held, traj.states_SxBxL == tokens[None], True))
    assert np.all(np.diff(held.sum(-1), axis=0) >= 0)


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings("fhs"),
        pytest.param(SamplerSettings("ancestral", steps=7), marks=pytest.mark.slow),
        pytest.param(SamplerSettings("confidence", steps=4), marks=pytest.mark.slow),
    ],
    ids=lambda s: s.sampler,
)
def test_recorded_samples_are_generates_samples(settings):
    config = tiny_config(**{"data.seq_len": 16})
    exp = build(config)
    params = init_state(exp.objective, exp.optimizer, jax.random.PRNGKey(3), 16).params
    canvas = make_canvas(exp.tokenizer, 16, prompt="ab")
    traj = unmasking.record(exp.objective, params, settings, canvas, 4, seed=11)
    out = generate(exp.objective, params, settings, canvas, 4, seed=11, batch_size=2, progress=False)
    np.testing.assert_array_equal(traj.tokens_BxL, out["tokens"])  # batches of 2 in generate, one of 4 here
    assert traj.nfe == out["nfe"] // 2 or settings.sampler != "fhs"  # FHS: 13 calls per batch
    assert np.all(traj.reveal_step_BxL[:, :3] == -1) and np.all(traj.reveal_step_BxL[:, 3:] >= 0)  # BOS, 'a', 'b' given
    assert traj.revealed_fraction_SxB()[-1].min() == 1.0 and traj.revealed_fraction_SxB()[0].max() == 0.0
    bos, mask = exp.tokenizer.bos_id, traj.mask
    assert unmasking.render(exp.tokenizer, np.asarray([bos, 97, 98, mask, 99, mask]), mask) == "ab_c_"
    ar = tiny_config(objective="ar", **{"data.seq_len": 16})
    with pytest.raises(ConfigError, match="no unmasking order"):
        unmasking.record(build(ar).objective, params, SamplerSettings("fhs"), canvas, 1)


def test_exact_fhs_reveal_steps_are_the_call_index_and_a_uniform_order():
    """With the spelling oracle, exact FHS (one position per call) writes each position's call index
    as its token, so the recorded reveal steps must equal the tokens; over 4,800 rows the orders
    must be uniform over the 4! permutations (chi-square, p > 1e-3)."""
    length, vocab, n = 4, 5, 4800
    sampler = make_sampler(SamplerSettings("fhs"), mask=vocab, schedule=make_schedule("cosine"))
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    traj = unmasking.record_calls(sampler, _spelling_denoiser(length, vocab), keys, np.full((n, length), vocab), mask=vocab)
    steps = traj.reveal_step_BxL
    np.testing.assert_array_equal(steps, traj.tokens_BxL)
    assert traj.nfe == length and np.all(np.diff((traj.states_SxBxL != vocab).sum(-1), axis=0) == 1)
    _, counts = np.unique((steps * length ** np.arange(length)).sum(1), return_counts=True)
    assert len(counts) == 24
    p = stats.chisquare(counts).pvalue
    assert p > 1e-3, p


# ----------------------------------------------------------------------------------------------
# Notebook execution


def test_runs_notebook_plots_runs_and_a_sweep(tmp_path, monkeypatch):
    evals = {name: _synthetic_run(tmp_path / name, floor) for name, floor in (("mdm", 2.0), ("ar", 1.5))}
    _synthetic_sweep(tmp_path / "sweep")
    params = {
        "RUNS": [str(tmp_path / "mdm"), str(tmp_path / "ar")],
        "SWEEP_DIR": str(tmp_path / "sweep"),
        "OUT_DIR": str(tmp_path / "plots"),
        "BOOTSTRAP": 20,
    }
    nb, seconds = _execute("runs.ipynb", params, tmp_path, monkeypatch)
    print(f"runs.ipynb executed in {seconds:.1f} s")
    images = _pngs(nb)
    assert len(images) == 2 + 4, len(images)  # the curves grid, the eval panel, the report's four figures
    for pixels in images:
        _assert_real_figure(pixels)
    table = next(out.data["text/markdown"] for _, out in _outputs(nb, "display_data") if "text/markdown" in out.data)
    assert f"| mdm (29k params) | 60 | {evals['mdm'][60]:.4f} +- 0.0200 |" in table, table
    assert f"| ar (29k params) | 60 | {evals['ar'][60]:.4f} +- 0.0200 |" in table, table
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"curves.png", "train_loss.png", "eval_loss.png", "bits.png"}
    out = _text(nb)
    assert "mdm approach 2 (95 % CI): n_opt ~ C^" in out and "ar approach 3: L(N, D) = E=" in out
    assert "MDM/AR compute multiplier" in out
    fits = json.loads((tmp_path / "sweep" / "fits.json").read_text())
    assert f"C^{fits['objectives']['mdm']['approach2']['laws']['n_opt']['exponent']:.3g}" in out


def test_a_bad_checkpoint_shows_one_line_and_stops_the_notebook(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    nb = _execute(
        "sample.ipynb",
        {"CHECKPOINT": str(missing)},
        tmp_path,
        monkeypatch,
        upto="load_or_train(CHECKPOINT",
        extra=1,
        expect_error=True,
    )
    stop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "load_or_train(CHECKPOINT" in c.source)
    outputs = nb.cells[stop].outputs
    assert [(o.output_type, o.name) for o in outputs] == [("stream", "stderr")], outputs  # no traceback output
    assert outputs[0].text == (
        f"error: checkpoint path {missing} does not exist; set CHECKPOINT to a run's workdir "
        "(the folder holding checkpoints/, local or gs://) or to '' to train the tiny default\n"
    )
    assert not nb.cells[stop + 1].outputs and nb.cells[stop + 1].execution_count is None  # the run stopped there


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A tiny MDM on bytes (seq_len 32) and its AR twin, trained for a few steps."""
    from mdm.loop import run

    root = tmp_path_factory.mktemp("nb_runs")
    common = {"train.num_steps": 4, "train.checkpoint_every": 4}
    run(tiny_config(**common), root / "mdm")
    run(tiny_config(objective="ar", **common), root / "ar")
    return root


@pytest.mark.slow
def test_sample_notebook_runs_top_to_bottom_on_a_tiny_checkpoint(trained_runs, tmp_path, monkeypatch):
    nb, seconds = _execute("sample.ipynb", {"CHECKPOINT": str(trained_runs / "mdm"), "NUM_SAMPLES": 3}, tmp_path, monkeypatch)
    print(f"sample.ipynb executed in {seconds:.1f} s")
    out = _text(nb)
    assert "objective mdm" in out and "params: 28,960" in out and "seq_len 32" in out
    for sampler, nfe in (("fhs", 32), ("ancestral", None), ("confidence", 8)):
        line = re.search(rf"\[{sampler}\] 3 samples: NFE (\d+), ([\d,]+) tokens/s", out)
        assert line, sampler
        if nfe is not None:
            assert int(line.group(1)) == nfe
    prompt_out = _text_of(_cell_with(nb, "prompt=PROMPT"))
    assert prompt_out.count("--- sample") == 3 and all(s.startswith("def ") for s in _samples(prompt_out))
    infill_out = _text_of(_cell_with(nb, "infill=INFILL"))
    assert all(s.startswith("import ") and " as np\n" in s for s in _samples(infill_out))
    table = next(o.data["text/markdown"] for _, o in _outputs(nb, "display_data") if "text/markdown" in o.data)
    assert "| fhs | 32 |" in table and "| confidence | 8 |" in table
    images = _pngs(nb)
    assert len(images) == 2
    for pixels in images:
        _assert_real_figure(pixels)
    assert "--- 100% revealed (state 32 of 32) ---" in out
    errors = _text_of(_cell_with(nb, "one_line_errors"), "stderr").splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "does not exist" in errors[0] and "not an mdm run" in errors[1] and "seq_len is 32; shorten it" in errors[2]
    assert not list(_outputs(nb, "error"))


@pytest.mark.slow
def test_sample_notebook_trains_the_tiny_default_without_a_checkpoint(tmp_path, monkeypatch):
    nb, seconds = _execute("sample.ipynb", {"TRAIN_STEPS": 3, "NUM_SAMPLES": 2}, tmp_path, monkeypatch)
    print(f"sample.ipynb (training 3 steps of the default) executed in {seconds:.1f} s")
    out = _text(nb)
    assert "at step 3 (objective mdm)" in out and "seq_len 128" in out and "[fhs] 2 samples: NFE 128" in out
    assert len(_pngs(nb)) == 2


@pytest.mark.slow
def test_runs_notebook_on_trained_runs(trained_runs, tmp_path, monkeypatch):
    params = {"RUNS": [str(trained_runs / "mdm"), str(trained_runs / "ar")], "OUT_DIR": str(tmp_path / "plots")}
    nb, seconds = _execute("runs.ipynb", params, tmp_path, monkeypatch)
    print(f"runs.ipynb executed in {seconds:.1f} s")
    table = next(o.data["text/markdown"] for _, o in _outputs(nb, "display_data") if "text/markdown" in o.data)
    assert re.search(r"\| mdm \(mdm, [\d.]+k params\) \| 4 \| \d\.\d{4} \+- ", table), table
    assert re.search(r"\| ar \(ar, [\d.]+k params\) \| 4 \| \d\.\d{4} \+- ", table), table
    assert len(_pngs(nb)) == 2 and "set SWEEP_DIR" in _text(nb)
    # The training loop's MetricsWriter also wrote TensorBoard scalars equal to metrics.jsonl.
    pytest.importorskip("tensorboardX")
    from test_plot import _expected, _read_events, _scalars

    (events,) = (trained_runs / "mdm").glob("events.out.tfevents.*.mdm")
    assert _scalars(_read_events(events)) == _expected(read_metrics(trained_runs / "mdm" / "metrics.jsonl"))


def _text_of(cell, stream: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == stream)


def _samples(text: str) -> list[str]:
    """The sample texts printed by notebook.sample (between '--- sample i ---' lines, before the summary)."""
    parts = re.split(r"--- sample \d+ ---\n", text)[1:]
    parts[-1] = parts[-1].rsplit("\n[", 1)[0] + "\n"
    return [p[:-1] for p in parts]
