"""A run on disk: `<workdir>/checkpoints/<step>/{state,data,config}` beside `metrics.jsonl`.

The one place that knows this layout: finding a run's checkpoints from a path (a workdir, its
`checkpoints/` folder or one step folder; local or a cloud URL), its finished steps, choosing a
step, reading the saved config, copying a step into a local cache, and deciding whether two
runs' configs are compatible for a purpose (named groups of keys: shapes, tokenizer, schedule).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Sequence

import ml_collections
from etils import epath

from mdm.errors import CheckpointError

log = logging.getLogger("mdm")

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"

# Config keys two runs must share, by what they fix. 'tokenizer' compares what token ids mean
# (the synthetic alphabet or the tokenizer file), so data of another source may share it.
KEY_GROUPS: dict[str, tuple[str, ...]] = {
    "objective": ("objective", "block.size", "diffusion.shift", "diffusion.anneal_steps"),
    "shapes": (
        "model.num_layers",
        "model.d_model",
        "model.num_heads",
        "model.num_kv_heads",
        "model.norm_eps",
        "model.mlp_dim",
        "model.tie_embeddings",
        "model.time_conditioning",
    ),
    "positions": ("model.rope_base",),
    "tokenizer": ("data.tokenizer", "data.synthetic_vocab"),
    "data": ("data.source", "data.seq_len", "data.format", "data.mode"),
    "length": ("data.seq_len",),
    "schedule": ("diffusion.schedule", "diffusion.eps", "diffusion.power"),
}


def as_path(workdir: str | pathlib.Path) -> epath.Path:
    """A workdir as an absolute local path, or a cloud URL (gs://...) kept as it is."""
    text = str(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def is_remote(path: str | pathlib.Path) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def checkpoint_dir(workdir: str | pathlib.Path) -> epath.Path:
    """`<workdir>/checkpoints`, where orbax keeps one folder per saved step."""
    return as_path(workdir) / CHECKPOINTS


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    """Whether `workdir` has a checkpoints folder (finished steps or not)."""
    return checkpoint_dir(workdir).is_dir()


def finished_steps(workdir: str | pathlib.Path) -> list[int]:
    """The steps under `workdir/checkpoints` whose checkpoint is complete (orbax's commit marker), sorted."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    return sorted(int(c.name) for c in folder.iterdir() if c.name.isdigit() and (c / "commit_success.txt").exists())


def locate(path: str, fix: str) -> tuple[epath.Path, int | None]:
    """(the run's workdir, the step or None for the latest) for a workdir, its `checkpoints/`
    folder or one `checkpoints/<step>` folder; a one-line CheckpointError (ending in `fix`) when
    the path does not exist or holds no checkpoints folder."""
    if not str(path).strip():
        raise CheckpointError(f"the checkpoint path is empty; {fix}")
    where = epath.Path(str(path).rstrip("/"))
    try:
        exists = where.exists()
    except Exception as e:  # e.g. no credentials for a bucket
        raise CheckpointError(
            f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "in Colab run google.colab.auth.authenticate_user() for a private bucket"
        ) from e
    if not exists:
        raise CheckpointError(f"checkpoint path {path} does not exist; {fix}")
    step = None
    if where.name.isdigit() and where.parent.name == CHECKPOINTS:
        where, step = where.parent.parent, int(where.name)
    elif where.name == CHECKPOINTS:
        where = where.parent
    if not (where / CHECKPOINTS).is_dir():
        raise CheckpointError(f"{path} is not an mdm run: it has no {CHECKPOINTS}/ folder; {fix}")
    return where, step


def choose_step(workdir: str | pathlib.Path, step: int | None, steps: Sequence[int], flag: str = "--step") -> int:
    """`step` if it is among `steps`, the latest with step None; a one-line CheckpointError otherwise."""
    if not steps:
        raise CheckpointError(f"no finished checkpoint under {checkpoint_dir(workdir)}; train longer or check the path")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} ({flag}) in {workdir}; available: {sorted(steps)}")
    return step


def saved_config(workdir: str | pathlib.Path) -> dict | None:
    """The config saved with the newest readable checkpoint of a local `workdir` (plain JSON read
    without orbax, so plots and sweeps stay light), or None."""
    root = pathlib.Path(workdir) / CHECKPOINTS
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.is_dir() else []
    for step in steps:
        try:
            return json.loads((root / str(step) / "config" / "metadata").read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


def copy_tree(src: epath.Path, dst: str | pathlib.Path) -> None:
    """Copies the folder `src` (local or remote) to the local folder `dst`, streaming files."""
    dst = pathlib.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            copy_tree(child, dst / child.name)
        else:
            with child.open("rb") as r, open(dst / child.name, "wb") as w:
                shutil.copyfileobj(r, w, length=1 << 22)


def cache_step(workdir: epath.Path, step: int, cache_dir: str | None = None) -> pathlib.Path:
    """A local workdir holding a copy of `workdir`'s checkpoint `step` (and its metrics.jsonl).

    The copy goes to `<step>.partial` first and is renamed when whole; a step already copied is reused.
    """
    root = pathlib.Path(cache_dir or os.path.join(tempfile.gettempdir(), "mdm_checkpoints"))
    local = root / hashlib.sha1(str(workdir).encode()).hexdigest()[:12] / workdir.name
    target = local / CHECKPOINTS / str(step)
    if not target.is_dir():
        partial = local / CHECKPOINTS / f"{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        copy_tree(workdir / CHECKPOINTS / str(step), partial)
        partial.rename(target)
    metrics = workdir / METRICS
    if metrics.exists():
        (local / METRICS).write_bytes(metrics.read_bytes())
    return local


def _value(config: dict, key: str) -> Any:
    """config['a']['b'] for 'a.b', or None where a level is missing (a config from an older version)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _matters(config: dict, key: str) -> bool:
    """Whether `key` means anything in `config` (a synthetic run has no tokenizer file, and only
    the 'polynomial' schedule has a power)."""
    source = _value(config, "data.source")
    if key == "data.synthetic_vocab":
        return source == "synthetic"
    if key == "data.tokenizer":
        return source != "synthetic"
    if key == "diffusion.power":
        return _value(config, "diffusion.schedule") == "polynomial"
    return True


def mismatches(mine: Any, theirs: Any, groups: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(key, my value, their value) for each key of `groups` (names in KEY_GROUPS) on which two
    configs (ConfigDicts or their dicts) differ. Keys an older config lacks are skipped; the
    tokenizer differs when one run is synthetic and the other not."""
    mine, theirs = (c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c for c in (mine, theirs))
    found = []
    for group in groups:
        synthetic = [_value(c, "data.source") == "synthetic" for c in (mine, theirs)]
        if group == "tokenizer" and synthetic[0] != synthetic[1]:
            found.append(("data.source", _value(mine, "data.source"), _value(theirs, "data.source")))
            continue
        for key in KEY_GROUPS[group]:
            a, b = _value(mine, key), _value(theirs, key)
            if a is not None and b is not None and _matters(mine, key) and a != b:
                found.append((key, a, b))
    return found


def check_compatible(
    mine: Any,
    theirs: Any,
    groups: Sequence[str],
    message: Callable[[str, Any, Any], str],
    error: type[Exception] = CheckpointError,
) -> None:
    """Raises `error(message(key, mine, theirs))` for the first key of `groups` the configs differ on."""
    found = mismatches(mine, theirs, groups)
    if found:
        raise error(message(*found[0]))
