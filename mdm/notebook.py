"""Helpers for the notebooks in `notebooks/`: load or train a run, sample, show figures and errors.

The notebooks run in Colab on a fresh runtime (CPU, GPU or TPU) with only a checkpoint path to
set. A checkpoint path may be local or a `gs://` URL: both go through etils' epath (a remote
checkpoint step is copied to a local cache first, since the library's checkpointer reads local
paths). With no path, `load_or_train` trains the tiny default config on the embedded corpus for
about a minute. Library errors (`MdmError`) are shown as one line, `error: ...`, naming the fix.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pathlib
import sys
import tempfile
from typing import Iterator

import numpy as np

from mdm import runs
from mdm.errors import CheckpointError, ConfigError, MdmError

REPO_URL = "https://github.com/mdm-jax/mdm"
COLAB_URL = "https://colab.research.google.com/github/mdm-jax/mdm/blob/main/notebooks/sample.ipynb"
CPU_TRAIN_STEPS = 150  # the tiny default config: about a minute on a 2-core CPU
ACCELERATOR_TRAIN_STEPS = 1000  # its full length, about a minute on a GPU or TPU
_FIX = "set CHECKPOINT to a run's workdir (the folder holding checkpoints/, local or gs://) or to '' to train the tiny default"


# ----------------------------------------------------------------------------------------------
# Errors and logs


def _print_error(error: BaseException) -> None:
    print(f"error: {error}", file=sys.stderr)


def setup(quiet: bool = True) -> None:
    """Quiet logs (as the CLIs) and, inside IPython, show any MdmError as one line instead of a trace.

    The cell still fails (so "run all" stops there), but prints only `error: <problem; fix>`.
    """
    if quiet:
        logging.getLogger("mdm").setLevel(logging.INFO)
        try:
            from absl import logging as absl_logging  # orbax logs every save and restore at INFO

            absl_logging.set_verbosity(absl_logging.WARNING)
        except ImportError:
            pass
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((MdmError,), lambda _shell, etype, value, tb, tb_offset=None: _print_error(value))


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Prints an MdmError raised inside the block as `error: ...` and carries on (the cell succeeds)."""
    try:
        yield
    except MdmError as e:
        _print_error(e)


# ----------------------------------------------------------------------------------------------
# Devices and the tiny default run


def describe_devices(mesh_shape: tuple[int, ...] = (-1, 1, 1)) -> str:
    """One line: backend, device count and the (data, fsdp, tensor) mesh the library builds for `mesh_shape`."""
    import jax

    from mdm.sharding import MESH_AXES, mesh_shape as full_shape

    devices = jax.devices()
    shape = full_shape(mesh_shape, len(devices))
    mesh = ", ".join(f"{a}={n}" for a, n in zip(MESH_AXES, shape))
    return f"backend {jax.default_backend()}: {len(devices)} x {devices[0].device_kind}; mesh ({mesh})"


def default_train_steps() -> int:
    """Steps for about a minute of the tiny default: CPU_TRAIN_STEPS on a CPU, else ACCELERATOR_TRAIN_STEPS."""
    import jax

    return CPU_TRAIN_STEPS if jax.default_backend() == "cpu" else ACCELERATOR_TRAIN_STEPS


def tiny_default_config(num_steps: int | None = None, objective: str = "mdm"):
    """`configs/default.py` (the tiny CPU MDM, or its AR twin with objective='ar'), shortened to `num_steps`.

    Evaluates three times, checkpoints at the end, draws no samples.
    """
    from mdm.config import validate
    from mdm.presets import tiny_cpu_config

    c = tiny_cpu_config()
    c.objective = objective
    if num_steps is not None:
        if num_steps < 1:
            raise ConfigError(f"num_steps={num_steps} must be >= 1")
        c.train.num_steps = num_steps
        c.optim.warmup_steps = min(c.optim.warmup_steps, max(num_steps // 5, 1))
        c.train.eval_every = max(num_steps // 3, 1)
        c.train.checkpoint_every = num_steps
        c.train.log_every = max(min(num_steps // 30, 25), 1)
    c.sample.num_samples = 0
    validate(c)
    return c


def train_tiny(workdir: str | pathlib.Path | None = None, *, num_steps: int | None = None, objective: str = "mdm", config=None):
    """Trains `config` (default: the tiny default for `num_steps`, see default_train_steps) in `workdir`.

    workdir: default a new temporary directory. Re-running with the same workdir resumes (and
    returns at once when the run is finished). Returns the workdir.
    """
    from mdm.loop import run

    if config is None:  # num_steps=0 is refused by tiny_default_config, not replaced by the default
        config = tiny_default_config(default_train_steps() if num_steps is None else num_steps, objective)
    workdir = pathlib.Path(workdir) if workdir else pathlib.Path(tempfile.mkdtemp(prefix=f"mdm_tiny_{config.objective}_"))
    run(config, workdir)
    return workdir


# ----------------------------------------------------------------------------------------------
# Checkpoints: local or gs://, through epath


def fetch_checkpoint(checkpoint: str, *, step: int | None = None, cache_dir: str | None = None, copy: bool | None = None):
    """(a local workdir, step) holding the checkpoint at `checkpoint` (a workdir, its checkpoints/
    folder or one step folder; local or gs://).

    copy: copy the chosen step (and metrics.jsonl) into `cache_dir` first; default: only for a
    remote path. A step already copied is reused.
    """
    workdir, located_step = runs.locate(checkpoint, _FIX)
    step = step if step is not None else located_step
    if not (runs.is_remote(checkpoint) if copy is None else copy):
        return pathlib.Path(str(workdir)), step
    step = runs.choose_step(workdir, step, runs.finished_steps(workdir))
    return runs.cache_step(workdir, step, cache_dir), step


def load_or_train(
    checkpoint: str = "", *, step: int | None = None, use_ema: bool = True, train_steps: int | None = None, workdir=None
):
    """A `mdm.trained.Trained` run: the checkpoint at `checkpoint` (local or gs://), or with
    checkpoint='' the tiny default trained for `train_steps` (default: about a minute) in `workdir`."""
    from mdm.checkpoint import UnreadableCheckpoint
    from mdm.trained import load_trained

    if not str(checkpoint).strip():
        return load_trained(train_tiny(workdir, num_steps=train_steps), use_ema=use_ema)
    local, step = fetch_checkpoint(checkpoint, step=step)
    try:
        return load_trained(local, step, use_ema)
    except UnreadableCheckpoint as e:  # a step folder that orbax cannot read
        raise _not_a_checkpoint(checkpoint, e.__cause__ or e) from e
    except MdmError:
        raise
    except Exception as e:  # orbax/json errors: a folder that is not this library's checkpoint
        raise _not_a_checkpoint(checkpoint, e) from e


def _not_a_checkpoint(checkpoint: str, cause: BaseException) -> CheckpointError:
    detail = str(cause).splitlines()[0][:160] if str(cause) else ""
    return CheckpointError(f"{checkpoint} is not an mdm checkpoint ({type(cause).__name__}: {detail}); {_FIX}")


# ----------------------------------------------------------------------------------------------
# Describing a run, sampling, showing figures


def describe(trained) -> str:
    """Several lines: where the run is from, the model's shape and size, and the settings that matter."""
    import jax

    config = trained.config
    objective = trained.experiment.objective
    leaves = jax.tree_util.tree_flatten_with_path(trained.params)[0]
    total = sum(int(np.size(x)) for _, x in leaves)
    embedding = sum(int(np.size(x)) for p, x in leaves if "embed" in jax.tree_util.keystr(p).lower())
    m, d = config.model, config.data
    lines = [
        f"run {trained.workdir} at step {trained.step} (objective {config.objective})",
        f"model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads, mlp {m.mlp_dim}, "
        f"{'time-conditioned' if m.time_conditioning else 'time-agnostic'}, dtype {m.dtype}",
        f"params: {total:,} ({total - embedding:,} without embeddings)",
        f"data: {d.source}, tokenizer {d.tokenizer if d.source != 'synthetic' else 'symbols'}, "
        f"vocabulary {objective.vocab_size} (+ mask), seq_len {d.seq_len}",
        f"diffusion: schedule {config.diffusion.schedule} (eps {config.diffusion.eps})",
        "parameter shapes:",
    ]
    lines += [f"  {jax.tree_util.keystr(p)}: {tuple(np.shape(x))}" for p, x in leaves]
    return "\n".join(lines)


def student_settings(trained):
    """The SamplerSettings a distilled student was made for (ancestral on its grid), or None."""
    from mdm.samplers import SamplerSettings

    preferred = trained.experiment.objective.preferred_sampler
    return None if preferred is None else SamplerSettings(**preferred)


def sample(
    trained,
    settings,
    *,
    prompt: str = "",
    infill: str = "",
    num_samples: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    energy=None,
    show: bool = True,
) -> dict:
    """`generation.generate` from `trained` on the canvas of `prompt`/`infill`; adds 'texts' (decoded).

    show: print each sample and a line with NFE and tokens/s.
    """
    from mdm.generation import generate, make_canvas

    config, tokenizer = trained.config, trained.experiment.tokenizer
    canvas = make_canvas(tokenizer, config.data.seq_len, prompt, infill)
    out = generate(
        trained.experiment.objective,
        trained.params,
        settings,
        canvas,
        num_samples,
        seed=seed,
        batch_size=batch_size,
        progress=False,
        energy=energy,
    )
    out["texts"] = [tokenizer.decode(row) for row in out["tokens"]]
    if show:
        for i, text in enumerate(out["texts"]):
            print(f"--- sample {i} ---\n{text}")
        energy_note = f", energy NFE {out['energy_nfe']}" if out.get("energy_nfe") else ""
        print(f"[{settings.sampler}] {num_samples} samples: NFE {out['nfe']}{energy_note}, {out['tokens_per_s']:,.0f} tokens/s")
    return out


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig, path: str | pathlib.Path | None = None, dpi: int = 100) -> None:
    """Displays a matplotlib figure as a PNG output (any backend), and saves it to `path` if given."""
    from IPython.display import Image, display

    data = png_bytes(fig, dpi)
    if path is not None:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_bytes(data)
    display(Image(data=data, format="png"))


def show_png(path: str | pathlib.Path) -> None:
    """Displays a PNG file."""
    from IPython.display import Image, display

    display(Image(filename=str(path)))


def run_table(runs) -> str:
    """A Markdown table of each run's last evaluation (`mdm.plot.Run`s): NLL bound +- stderr, bits, EMA."""
    rows = ["| run | step | eval nats/token | bits/byte | EMA nats/token |", "|---|---|---|---|---|"]
    for run in runs:
        last = next((r for r in reversed(run.records) if "eval/nats_per_token" in r), None)
        if last is None:
            rows.append(f"| {run.label} | - | no evaluation yet | - | - |")
            continue
        bits, ema = last.get("eval/bits_per_byte"), last.get("eval_ema/nats_per_token")
        nll = f"{last['eval/nats_per_token']:.4f} +- {last.get('eval/nats_per_token_stderr', 0.0):.4f}"
        bits_text, ema_text = "-" if bits is None else f"{bits:.4f}", "-" if ema is None else f"{ema:.4f}"
        rows.append(f"| {run.label} | {last['step']} | {nll} | {bits_text} | {ema_text} |")
    return "\n".join(rows)
