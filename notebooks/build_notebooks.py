"""Writes notebooks/sample.ipynb and notebooks/runs.ipynb (nbformat 4).

    python notebooks/build_notebooks.py [ROOT]   # ROOT: where notebooks/ goes (default: this repository)
"""

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent
COLAB = "https://colab.research.google.com/github/mdm-jax/mdm/blob/main/notebooks/{}"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({})"

INSTALL = '''# Install the library from its repository (skipped when `mdm` is already importable, e.g. in its tests).
REPO_URL = "https://github.com/mdm-jax/mdm"
try:
    import mdm  # noqa: F401
except ImportError:
    %pip install -q "git+{REPO_URL}"'''


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text, tags=()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(cells):
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # fixed ids (nbformat draws random ones), so a rebuild changes only what changed
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.metadata["accelerator"] = "GPU"
    return nb


sample = notebook(
    [
        md(
            f"""
# Sample from a masked diffusion model

{BADGE.format(COLAB.format("sample.ipynb"))}

Loads a checkpoint of the `mdm` library (a local path or a `gs://` URL), prints the model and its
config, samples with the first-hitting (FHS), ancestral and confidence samplers (and EDLM or a
distilled student when there is one) from scratch, after a prompt and around infilling context, and
shows the order in which positions were unmasked. With no checkpoint it trains the tiny default model
on the embedded corpus for about a minute first, so the notebook runs top to bottom as it is.

Works on a CPU, GPU or TPU runtime (*Runtime > Change runtime type*); the library picks the devices.
"""
        ),
        code(INSTALL),
        md(
            """
## Parameters

`CHECKPOINT`: a run's workdir (the folder holding `checkpoints/`, as written by
`python train.py --workdir ...`), one of its `checkpoints/<step>` folders, or a `gs://bucket/...`
URL of either (for a private bucket run `from google.colab import auth; auth.authenticate_user()`
first). Leave it empty to train the tiny default for about a minute.
"""
        ),
        code(
            '''
CHECKPOINT = ""  # a run's workdir, local or gs://...; "" trains the tiny default for about a minute
STEP = -1  # checkpoint step (-1: the latest)
TRAIN_STEPS = 0  # with CHECKPOINT = "": training steps (0: about a minute on this runtime)
ENERGY_KIND = "ar"  # EDLM's energy: "ar" (an AR run of the same data) or "nce" (a trained energy run)
ENERGY_WORKDIR = ""  # that run's workdir; "" skips the EDLM sampler
NUM_SAMPLES = 4
PROMPT = "def "
INFILL = "import [MASK*5] as np\\n"  # [MASK] is one token to generate, [MASK*n] is n of them
SEED = 0
''',
            tags=("parameters",),
        ),
        code(
            """
import tempfile

from mdm import notebook, plot, unmasking
from mdm.generation import make_canvas
from mdm.trained import load_energy
from mdm.samplers import SamplerSettings

notebook.setup()  # quiet logs; library errors show as one line, `error: ...`, with the fix
print(notebook.describe_devices())
"""
        ),
        md("## Load the checkpoint (or train the tiny default)"),
        code(
            """
trained = notebook.load_or_train(CHECKPOINT, step=None if STEP < 0 else STEP, train_steps=TRAIN_STEPS or None)
config, tokenizer = trained.config, trained.experiment.tokenizer
seq_len = config.data.seq_len
is_mdm = config.objective != "ar"
print(notebook.describe(trained))
"""
        ),
        code("print(config)"),
        md(
            """
## Sampling

Each sampler fills the masked positions of a canvas; `NFE` counts network calls for the batch.
FHS is exact (one call per token); ancestral sampling on a `steps`-point grid is exact as steps grow;
confidence decoding (MaskGIT/LLaDA) keeps the most confident tokens of each call and is not exact.
"""
        ),
        code(
            """
results = {}
results["fhs"] = notebook.sample(trained, SamplerSettings("fhs"), num_samples=NUM_SAMPLES, seed=SEED)
"""
        ),
        code(
            """
results["ancestral"] = notebook.sample(trained, SamplerSettings("ancestral", steps=seq_len), num_samples=NUM_SAMPLES, seed=SEED)
"""
        ),
        code(
            """
results["confidence"] = notebook.sample(
    trained, SamplerSettings("confidence", steps=max(seq_len // 4, 1), order="margin"), num_samples=NUM_SAMPLES, seed=SEED
)
"""
        ),
        md("### After a prompt, and around infilling context"),
        code(
            """
results["fhs, prompt"] = notebook.sample(trained, SamplerSettings("fhs"), prompt=PROMPT, num_samples=NUM_SAMPLES, seed=SEED)
"""
        ),
        code(
            """
if is_mdm:
    results["fhs, infill"] = notebook.sample(trained, SamplerSettings("fhs"), infill=INFILL, num_samples=NUM_SAMPLES, seed=SEED)
else:
    print("an AR run only continues prompts; infilling needs an MDM checkpoint")
"""
        ),
        md(
            """
### A distilled student, EDLM

A run trained with `objective=mcd` is a few-step student: it samples with the ancestral sampler on the
grid it was distilled for. EDLM corrects the MDM's parallel draws with an energy (an AR run of the same
data, or a trained NCE energy); set `ENERGY_WORKDIR` to use it.
"""
        ),
        code(
            """
student = notebook.student_settings(trained)
if student is not None:
    results[f"student, {student.steps} steps"] = notebook.sample(trained, student, num_samples=NUM_SAMPLES, seed=SEED)
else:
    print(f"objective {config.objective!r}: not a distilled student (train one with objective=mcd)")
if ENERGY_WORKDIR and is_mdm:
    energy, energy_record = load_energy(ENERGY_KIND, ENERGY_WORKDIR, config, denoiser_workdir=trained.workdir)
    edlm = SamplerSettings("edlm", steps=seq_len, is_k=2, is_window=0.2)
    results["edlm"] = notebook.sample(trained, edlm, energy=energy, num_samples=NUM_SAMPLES, seed=SEED)
else:
    print("EDLM: set ENERGY_WORKDIR to an AR or NCE energy run to sample with it")
"""
        ),
        code(
            """
from IPython.display import Markdown, display

rows = [f"| {name} | {out['nfe']} | {out['seconds']:.2f} | {out['tokens_per_s']:,.0f} |" for name, out in results.items()]
display(Markdown("| sampler | NFE | seconds | tokens/s |\\n|---|---|---|---|\\n" + "\\n".join(rows)))
"""
        ),
        md(
            """
## The unmasking order

`unmasking.record` draws the same samples as `generate` (same keys) while recording the input of
every denoiser call. The heat map shows the call at which each position was revealed: FHS reveals
positions in a uniformly random order, confidence decoding reveals the easy ones first.
"""
        ),
        code(
            """
if is_mdm:
    canvas = make_canvas(tokenizer, seq_len)
    fhs_order = unmasking.record(trained.experiment.objective, trained.params, SamplerSettings("fhs"), canvas, 8, seed=SEED)
    notebook.show(plot.unmasking_figure(fhs_order, tokenizer))
    fractions = (0.1, 0.25, 0.5, 0.75, 1.0)
    for fraction, state in zip(fractions, fhs_order.snapshot_states(0, fractions)):
        print(f"--- {fraction:.0%} revealed (state {state} of {fhs_order.nfe}) ---")
        print(unmasking.render(tokenizer, fhs_order.states_SxBxL[state, 0], fhs_order.mask))
else:
    print("an AR run decodes left to right")
"""
        ),
        code(
            """
if is_mdm:
    settings = SamplerSettings("confidence", steps=max(seq_len // 4, 1), order="margin")
    conf_order = unmasking.record(trained.experiment.objective, trained.params, settings, canvas, 8, seed=SEED)
    notebook.show(plot.unmasking_figure(conf_order, tokenizer))
"""
        ),
        md(
            """
## Bad input

Library errors are one line with the fix, never a stack trace. The cells below show three of them;
with `notebook.setup()` the same line appears (and the run stops) when the load cell above gets a
wrong `CHECKPOINT`.
"""
        ),
        code(
            """
with notebook.one_line_errors():
    notebook.load_or_train("/no/such/run")
with notebook.one_line_errors():
    notebook.load_or_train(tempfile.mkdtemp())  # a folder that is not a run
with notebook.one_line_errors():
    make_canvas(tokenizer, seq_len, prompt="x" * (seq_len + 1))  # longer than the model's sequence
"""
        ),
        md(
            """
## Next

Train your own run with `python train.py --workdir runs/x` (see the README), plot its curves with
`python -m mdm.plot runs/x runs/ar` or the `runs.ipynb` notebook, and sample from the command line
with `python sample.py --workdir runs/x --sampler fhs`.
"""
        ),
    ]
)

runs = notebook(
    [
        md(
            f"""
# Plot training runs and scaling-law sweeps

{BADGE.format(COLAB.format("runs.ipynb"))}

Plots the training and validation curves of one or several runs (each run's `metrics.jsonl`; an MDM
and its AR twin on the same axes) and, given a sweep directory, the scaling-law report's figures and
fitted laws. With no runs given it trains a tiny MDM and its AR twin for about half a minute each.
"""
        ),
        code(INSTALL),
        md(
            """
## Parameters

`RUNS`: workdirs written by `python train.py --workdir ...` (local paths; copy a bucket's run with
`gsutil -m cp -r` first). `SWEEP_DIR`: a directory of `python -m scaling_laws.sweep` holding
`results.csv` (the report is computed when `fits.json` is missing or older).
"""
        ),
        code(
            """
RUNS = []  # workdirs; [] trains a tiny MDM and its AR twin
SWEEP_DIR = ""  # a scaling-law sweep directory; "" skips that section
OUT_DIR = ""  # where the curve PNGs go ("" a temporary directory)
X_AXIS = "step"  # "step" or "tokens"
TRAIN_STEPS = 0  # with RUNS = []: steps per run (0: about half a minute each)
BOOTSTRAP = 200  # bootstrap replicates of the scaling-law fits
""",
            tags=("parameters",),
        ),
        code(
            """
import tempfile

from IPython.display import Markdown, display

from mdm import notebook, plot
from scaling_laws import notebook as sweep_notebook

notebook.setup()
print(notebook.describe_devices())
"""
        ),
        code(
            """
if not RUNS:
    steps = TRAIN_STEPS or max(notebook.default_train_steps() // 2, 1)
    RUNS = [notebook.train_tiny(num_steps=steps, objective=objective) for objective in ("mdm", "ar")]
runs = plot.load_runs(RUNS)
display(Markdown(notebook.run_table(runs)))
"""
        ),
        md(
            """
## Curves

Training loss (MDM: the NELBO estimate; AR: the next-token NLL, both nats/token), the validation NLL
bound with its standard error (dashed: EMA parameters), bits per byte, learning rate, throughput and
gradient norm. The same PNGs come from `python -m mdm.plot WORKDIR [WORKDIR ...] --out DIR`.
"""
        ),
        code("notebook.show(plot.curves_figure(runs, X_AXIS))"),
        code(
            """
eval_curve = next(c for c in plot.CURVES if c.name == "eval_loss")
notebook.show(plot.curve_figure(runs, eval_curve, X_AXIS))
paths = plot.write_curves(runs, OUT_DIR or tempfile.mkdtemp(prefix="mdm_plots_"), X_AXIS)
print("wrote", ", ".join(str(p) for p in paths))
"""
        ),
        md(
            """
## Scaling laws

For a sweep directory: the IsoFLOP profiles, the compute-optimal frontier, loss against compute and
the parametric fit, with the fitted laws (exponents with 95 % bootstrap intervals).
"""
        ),
        code(
            """
if SWEEP_DIR:
    summary, figures = sweep_notebook.sweep_report(SWEEP_DIR, bootstrap=BOOTSTRAP, bootstrap3=BOOTSTRAP // 10)
    print("\\n".join(summary))
    for figure in figures:
        notebook.show_png(figure)
else:
    print("set SWEEP_DIR to a sweep directory (python -m scaling_laws.sweep ...) to plot its fits")
"""
        ),
    ]
)

for name, nb in (("sample.ipynb", sample), ("runs.ipynb", runs)):
    nbformat.validate(nb)
    path = ROOT / "notebooks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    print("wrote", path)
