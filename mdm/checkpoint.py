"""Checkpoints with orbax: train state, data-iterator state and config, committed atomically.

Each step (laid out by `mdm.runs`) holds state, data and config; `data` holds every process's
data-iterator position (gathered to process 0, which writes JSON items). orbax writes each step
into a temporary directory and renames it when complete, so a killed run leaves either a whole
checkpoint or none; the last `keep` are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mdm import runs
from mdm.errors import CheckpointError

log = logging.getLogger(__name__)

class Checkpointer:
    """Saves and restores (state, data-iterator state, config) under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
        self.directory = runs.checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, config: ml_collections.ConfigDict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config.to_dict()),
                data=ocp.args.JsonSave({"processes": gather_json(data_state)}),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore_config(self, step: int) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as e:  # noqa: BLE001 - any failure to read is damage, reported in one line
            raise UnreadableCheckpoint(f"checkpoint {self.directory / str(step)} cannot be read ({_first_line(e)})") from e

    def restore(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict) -> tuple[Any, dict]:
        """Restores the state onto `abstract_state`'s shapes (and shardings) and the data state.

        A saved config that fixes other shapes raises CheckpointError; a step that cannot be read
        (damaged, empty, or arrays of other shapes) raises UnreadableCheckpoint."""
        check_compatible(self.restore_config(step), config, self.directory / str(step))
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
            states = restored["data"]["processes"]
        except Exception as e:  # noqa: BLE001 - tensorstore, orbax and JSON failures alike
            raise UnreadableCheckpoint(
                f"checkpoint {self.directory / str(step)} cannot be restored with this config ({_first_line(e)})"
            ) from e
        if len(states) != jax.process_count():
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} was written by {len(states)} processes but this run has "
                f"{jax.process_count()}; resume with {len(states)} processes (the mesh may differ) or use a new --workdir"
            )
        return restored["state"], states[jax.process_index()]

    def restore_latest(self, abstract_state: Any, config: ml_collections.ConfigDict) -> tuple[int, Any, dict] | None:
        """(step, state, data state) of the newest step that restores, or None without checkpoints.

        A damaged newest step is skipped with one warning naming the step used instead."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = (step, *self.restore(step, abstract_state, config))
            except UnreadableCheckpoint as e:
                if i + 1 == len(steps):
                    raise CheckpointError(f"{e}; no earlier checkpoint is left: use a new --workdir") from e
                log.warning("%s; resuming from step %d instead", e, steps[i + 1])
                continue
            if i and jax.process_index() == 0:  # set the damaged steps aside, so they are redone
                for bad in steps[:i]:
                    (self.directory / str(bad)).rename(self.directory / f"damaged-{bad}")
            if i:
                multihost_utils.sync_global_devices("mdm_checkpoint_set_aside")
                self.manager.reload()
            return restored
        return None


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint step that exists but cannot be read (damaged, empty, or of other shapes)."""


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path) -> Iterator[None]:
    """Holds `<workdir>/.train.lock` for a training run (process 0 only; cloud workdirs are not
    locked), so a second run on the same workdir stops with one line instead of interleaving."""
    if jax.process_index() != 0 or "://" in str(workdir):
        yield
        return
    path = pathlib.Path(workdir) / ".train.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise CheckpointError(f"{workdir} is in use by another training run ({owner}); let it end or pass a new --workdir")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def gather_json(value: dict) -> list[dict]:
    """Every process's JSON-able `value`, in process order (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return [value]
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    longest = int(multihost_utils.process_allgather(np.int32(raw.size)).max())
    padded = np.zeros(longest, np.uint8)
    padded[: raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gathered]


def check_compatible(saved: dict, config: ml_collections.ConfigDict, where: pathlib.Path) -> None:
    """Raises a one-line CheckpointError when the saved config fixes other shapes, tokens or data."""
    runs.check_compatible(
        config,
        saved,
        ("objective", "shapes", "tokenizer", "data"),
        lambda key, new, old: (
            f"checkpoint {where} was trained with {key}={old!r} but the config has {key}={new!r}; "
            f"pass --config.{key}={old!r} or use a new --workdir"
        ),
    )
