"""Device mesh, logical axis rules and shardings (T5X-style 1-D, or 2-D FSDP, partitioning).

Parameters and activations carry logical axis names (`networks.py`); the rules
below map them to the two mesh axes `data` and `model`. Shardings of parameters
and train state come from `jax.eval_shape`, and initialisation runs sharded
through `jax.jit(..., out_shardings=...)`, so no host ever holds a full copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "model")

# Logical axis name -> mesh axis (None = replicated). One home for the rules.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
)


def logical_axis_rules(fsdp: bool = False) -> tuple[tuple[str, str | None], ...]:
    """The rules, with parameters' `embed` dimension split over `data` under `fsdp`.

    FSDP (T5X's `parameter_partitioning_dims=2`, MaxText's `fsdp` axis): every
    parameter and optimizer-state array with an embed dimension is split over
    both mesh axes, so a data-parallel replica holds 1 / (data x model) of it;
    XLA all-gathers a layer's weights where it is used. Activations are
    unchanged: Flax assigns a mesh axis to the first logical name of an array
    that claims it, and `batch` comes before `embed` in every activation.
    """
    if not fsdp:
        return LOGICAL_AXIS_RULES
    rules = list(LOGICAL_AXIS_RULES)
    rules.insert(rules.index(("embed", None)), ("embed", "data"))
    return tuple(rules)


def config_rules(config: Any, target: bool = False) -> tuple[tuple[str, str | None], ...]:
    """Rules of a training config's trained model (or of its frozen target).

    `config.partitioning.fsdp` / `.target_fsdp`; configs without the section
    get the 1-D rules.
    """
    section = config.get("partitioning") if hasattr(config, "get") else None
    if section is None:
        return LOGICAL_AXIS_RULES
    return logical_axis_rules(bool(section.target_fsdp if target else section.fsdp))


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 by the remaining devices and checks the product.

    Raises:
      ValueError: more than one -1, or a shape whose product is not `num_devices`.
    """
    shape = [int(s) for s in mesh_shape]
    if shape.count(-1) > 1:
        raise ValueError(f"At most one mesh dimension may be -1; got {tuple(shape)}")
    known = int(np.prod([s for s in shape if s != -1]))
    if known <= 0 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"Mesh dimensions must be positive or -1; got {tuple(shape)}")
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"Mesh shape {tuple(shape)} does not divide the {num_devices} available devices"
            )
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"Mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
            f"but {num_devices} are available"
        )
    return tuple(shape)


def create_mesh(
    mesh_shape: Sequence[int] = (-1, 1),
    axis_names: Sequence[str] = MESH_AXES,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (data, model) mesh over all devices of all processes (or `devices`).

    Axes are `Auto` so Flax's logical sharding constraints apply.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    if len(shape) != len(axis_names):
        raise ValueError(f"Mesh shape {shape} and axis names {tuple(axis_names)} differ in rank")
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(
            shape, devices, allow_split_physical_axes=True
        )
    except Exception:  # Non-TPU topologies: plain reshape keeps process locality.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, tuple(axis_names), axis_types=(AxisType.Auto,) * len(axis_names))


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Replicates the dimensions of `spec` that the mesh axes do not divide.

    T5-Small's 6 heads, say, cannot be split over a model axis of 4: that
    dimension is replicated (jit arguments must divide evenly).
    """
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        fitted.append(axes if dim % size == 0 else None)
    return P(*fitted)


def logical_to_sharding(
    logical_specs: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES,
    shapes: Any = None,
) -> Any:
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`.

    With `shapes` (a matching pytree of arrays or ShapeDtypeStructs) dimensions
    that the mesh does not divide are replicated (`fit_spec`).
    """
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    if shapes is not None:
        mesh_specs = jax.tree_util.tree_map(
            lambda spec, x: fit_spec(spec, x.shape, mesh), mesh_specs, shapes, is_leaf=is_spec
        )
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec), mesh_specs, is_leaf=is_spec
    )


def shardings_from_eval_shape(
    init_fn: Callable[..., Any],
    *args: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES,
) -> Any:
    """Shardings of `init_fn(*args)`'s (boxed, logically annotated) output.

    Leaves without logical metadata (an optimizer step count, say) are
    replicated with `P()`, so scalars are placed on the whole mesh.
    """
    abstract = jax.eval_shape(init_fn, *args)
    specs = nn.get_partition_spec(abstract)
    specs = jax.tree_util.tree_map(
        lambda s: P() if s is None else s, specs, is_leaf=lambda x: x is None or isinstance(x, P)
    )
    return logical_to_sharding(specs, mesh, rules, shapes=nn.meta.unbox(abstract))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays are split over `data` on their first axis."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES):
    """Context in which Flax logical constraints resolve against `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def sharded_init(
    model: Any,
    rng: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES,
) -> Any:
    """Initialises `model` (a models.BaseModel) directly into its shardings."""
    shardings = shardings_from_eval_shape(model.init_boxed, rng, mesh=mesh, rules=rules)
    with activate(mesh, rules):
        return jax.jit(model.init, out_shardings=shardings)(rng)


def param_shardings(
    model: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
    """NamedShardings for the plain (unboxed) parameter tree of `model`."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return logical_to_sharding(model.logical_axes(), mesh, rules, shapes=shapes)
