"""Device meshes and shardings: one code path from one CPU to a multi-host mesh.

A mesh has the named axes ('data', 'fsdp', 'tensor'); its shape comes from config, where one
entry may be -1 ("the rest of the devices"). Params carry logical axis names ('embed', 'mlp',
'heads', ...); a rules table (config data) maps each logical name to mesh axes, so model code
never names a device axis. The batch is split over ('data', 'fsdp').
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mdm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes: the one rules table (config.py's `mesh.rules` defaults are made from
# it). FSDP shards the model width of every weight; tensor parallelism shards heads, MLP width,
# the vocabulary and the energy network's hidden width (Megatron style). Every logical name a
# network's params use needs a row (tests/test_sharding.py checks it).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("adaln", "tensor"),
    ("energy", "tensor"),  # mdm.energy.network: hidden width of the combiner, projection and readout
    ("kv", None),
    ("qkv", None),
    ("gate", None),
    ("norm", None),
    ("time", None),
    ("pair", None),  # mdm.energy.network: the (x_t, x_0) pair of the combiner
    ("length", None),
    ("embed_act", None),
)


def rules_to_config(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> dict[str, str]:
    """Config data {logical: 'fsdp' | 'data+fsdp' | ''} of a rules table (inverse of `rules_from_config`)."""
    out = {}
    for name, axes in rules:
        out[name] = "" if axes is None else axes if isinstance(axes, str) else "+".join(axes)
    return out


def rules_from_config(rules_cfg: Any) -> tuple[tuple[str, Any], ...]:
    """The rules table from config data {logical: 'fsdp' | 'data+fsdp' | ''} ('' = replicated)."""
    rules = []
    for name, axes in dict(rules_cfg).items():
        parts = tuple(a for a in axes.split("+") if a)
        rules.append((name, None if not parts else parts[0] if len(parts) == 1 else parts))
    return tuple(rules)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Iterator[None]:
    """Makes the network's `with_logical_constraint`s real for functions traced inside: the mesh
    and the rules become the ambient context (outside `jit`, as `jax.set_mesh` requires)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        yield


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills one -1 entry so that the product is `num_devices`; raises a one-line ConfigError."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ConfigError(f"mesh.shape={shape} needs {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh.shape={shape}: use positive sizes and at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(f"mesh.shape={shape}: {num_devices} devices are not divisible by {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"mesh.shape={shape} has {math.prod(shape)} devices but {num_devices} are present; "
            "make the product match or put -1 on one axis"
        )
    return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with axes MESH_AXES."""
    devices = list(jax.devices() if devices is None else devices)
    full = mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(full), MESH_AXES)


def check_batch(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """The global batch must split evenly over the batch axes."""
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % ways:
        raise ConfigError(f"{what}={batch_size} is not divisible by the {ways} data x fsdp shards of the mesh {dict(mesh.shape)}")


def param_shardings(logical_specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """NamedShardings for params from their logical PartitionSpecs."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def state_shardings(
    state_abstract: Any,
    logical_specs: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
    frozen_specs: Any = None,
) -> Any:
    """Shardings for a TrainState: params, EMA and the frozen tree (by `frozen_specs`, its logical
    specs) by the rules, optimizer moments like their params, scalars (step, counts) replicated."""
    params = param_shardings(logical_specs, mesh, rules)
    frozen = None if frozen_specs is None else param_shardings(frozen_specs, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        state_abstract.opt_state,
        params,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return state_abstract.replace(step=replicated, params=params, opt_state=opt, ema_params=params, frozen=frozen)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, length] array: batch over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's rows (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def mesh_axes(logical: str):
    """The mesh axes a logical activation axis maps to under the ambient rules (None: replicated)."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    return axes if axes else None


def batch_shards() -> int:
    """Ways the batch is split over devices under the ambient mesh and logical rules (1 if none)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = mesh_axes("batch")
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)
