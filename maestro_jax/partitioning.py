"""Device mesh, the one logical-axis rules table, and shardings for params, optimizer state and batches.

Layers name their axes logically (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`, `conv`, `layers`,
`codebook`, `proj`); this module maps them to the mesh axes `data`, `fsdp`, `tensor`. The same code path serves one
CPU device and a multi-slice pod: only the mesh sizes change.
"""

import collections
import functools
import logging
import math
from collections.abc import Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# The one table. `batch` spreads over every data-parallel axis; params shard their `embed` dim over `fsdp` (ZeRO-3
# style) and their wide dims over `tensor`.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv", None),
    ("layers", None),
    ("codebook", None),
    ("proj", None),
)


@gin.configurable
def logical_axis_rules(rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = DEFAULT_LOGICAL_AXIS_RULES):
    """The logical -> mesh axis rules in force (override in gin with `logical_axis_rules.rules = [...]`)."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def _resolve_fill(sizes: Sequence[int], total: int, what: str, counted: str, bindings: str) -> tuple[int, ...]:
    """Replaces a single -1 in `sizes` by whatever makes their product equal `total`.

    `counted` names what `total` counts and `bindings` the gin bindings that set `sizes`, for the errors.
    """
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise ValueError(f"{what} sizes {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1 ('the rest').")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(
                f"{what} sizes {dict(zip(MESH_AXES, sizes))} do not divide the {total} {counted}; change {bindings}."
            )
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise ValueError(
            f"{what} sizes {dict(zip(MESH_AXES, sizes))} multiply to {math.prod(sizes)}, not to the {total} "
            f"{counted}; set one of {bindings} to -1 to take the rest."
        )
    return tuple(sizes)


def devices_per_slice(devices: Sequence[jax.Device]) -> dict[int, int]:
    """{slice_index: device count}: the slices a job spans, joined by the slow network (DCN). TPU multi-slice sets
    `device.slice_index`, and XLA numbers GPU hosts (NVLink domains) the same way; {0: len(devices)} for devices
    without one (CPU)."""
    if not all(hasattr(d, "slice_index") for d in devices):
        return {0: len(devices)}
    return dict(sorted(collections.Counter(d.slice_index for d in devices).items()))


@functools.cache
def _warn_plain_reshape(platform: str) -> None:
    # Info on CPU, where there is no interconnect to follow (every CPU run would warn); a warning elsewhere.
    log.log(
        logging.INFO if platform == "cpu" else logging.WARNING,
        "%s devices have no physical topology (no device.coords): the mesh is a plain reshape of the devices in "
        "their order, with no torus to follow.",
        platform,
    )


def device_grid(
    *,
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    dcn_data: int = -1,
    dcn_fsdp: int = 1,
    dcn_tensor: int = 1,
    devices: Sequence[jax.Device],
) -> np.ndarray:
    """The [data, fsdp, tensor] array of devices `make_mesh` wraps (sizes as in `make_mesh`)."""
    devices = list(devices)
    per_slice = devices_per_slice(devices)
    if len(set(per_slice.values())) > 1:
        raise ValueError(
            f"The mesh devices are spread unevenly over slices ({{slice_index: devices}} = {per_slice}); pass "
            "make_mesh(devices=...) whole slices."
        )
    dcn_shape = _resolve_fill(
        (dcn_data, dcn_fsdp, dcn_tensor),
        len(per_slice),
        "make_mesh DCN",
        "slice(s) the devices span (distinct device.slice_index; 1 where devices have none)",
        "make_mesh.dcn_data/dcn_fsdp/dcn_tensor",
    )
    ici_shape = _resolve_fill(
        (data, fsdp, tensor),
        len(devices) // len(per_slice),
        "make_mesh ICI",
        "devices per slice (make_mesh.dcn_data/dcn_fsdp/dcn_tensor span slices)",
        "make_mesh.data/fsdp/tensor",
    )
    if not all(hasattr(d, "coords") for d in devices):
        _warn_plain_reshape(devices[0].platform)
    try:
        if len(per_slice) > 1:
            return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices=devices)
        return mesh_utils.create_device_mesh(ici_shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError) as e:
        # Only devices with a physical topology (TPU coords) get here: a plain reshape would route the fsdp/tensor
        # collectives over whichever links happen to join the devices it pairs.
        raise ValueError(
            f"make_mesh ICI sizes {dict(zip(MESH_AXES, ici_shape))} do not fit the physical topology of the "
            f"{len(devices) // len(per_slice)} {devices[0].device_kind} devices per slice ({e}); choose "
            "make_mesh.data/fsdp/tensor that split the slice's torus along its axes, or pass whole slices in "
            "make_mesh(devices=...)."
        ) from e


@gin.configurable
def make_mesh(
    *,
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    dcn_data: int = -1,
    dcn_fsdp: int = 1,
    dcn_tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all global devices).

    data/fsdp/tensor are the sizes within one slice (ICI); one of them may be -1 for "the rest". dcn_* are the
    number of slices along each axis (multi-slice over DCN); one may be -1 for "the rest" of the slices the devices
    span (`devices_per_slice`), so by default `dcn_data` is the number of slices and only data parallelism crosses
    DCN. Over several slices the mesh comes from `mesh_utils.create_hybrid_device_mesh`, so that only the DCN axes
    cross slices. Mesh axis sizes are ici * dcn.
    """
    grid = device_grid(
        data=data,
        fsdp=fsdp,
        tensor=tensor,
        dcn_data=dcn_data,
        dcn_fsdp=dcn_fsdp,
        dcn_tensor=dcn_tensor,
        devices=jax.devices() if devices is None else devices,
    )
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_sharding(logical_specs, mesh: Mesh, rules=None):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh` through the rules table."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, logical_axis_rules() if rules is None else rules)


def _indivisible_dims(shape: Sequence[int], sharding: NamedSharding) -> list[tuple[int, tuple[str, ...], int]]:
    """(dim, mesh axes, shards) for each dim of `shape` that `sharding` cuts into a number of shards not dividing it
    (jax.jit refuses such uneven shardings with an error that names neither the array nor a setting)."""
    uneven = []
    for dim, entry in enumerate(sharding.spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        shards = math.prod(sharding.mesh.shape[axis] for axis in axes)
        if shape[dim] % shards:
            uneven.append((dim, axes, shards))
    return uneven


def state_shardings(abstract_boxed_state, mesh: Mesh, rules=None):
    """NamedShardings for every leaf of an abstract state whose params (and optimizer moments) are still boxed.

    Leaves without logical annotations (step counters, rng, scalar optimizer counts) are replicated. A dimension that
    its mesh axes do not divide raises a ValueError naming the leaf: there is no fallback to replication, since the
    dims fsdp and tensor shard are the model's widest and replicating them silently would undo the memory saving.
    """
    logical_specs = nn.get_partition_spec(abstract_boxed_state)
    shardings = logical_to_sharding(logical_specs, mesh, rules)
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_boxed_state))[0]
    flat_logical = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    uneven = [
        (path, leaf, names, dims)
        for (path, leaf), names, sharding in zip(leaves, flat_logical, jax.tree.leaves(shardings), strict=True)
        if (dims := _indivisible_dims(leaf.shape, sharding))
    ]
    if uneven:
        path, leaf, names, [(dim, axes, shards), *_] = uneven[0]
        name = names[dim]
        sizes = " x ".join(f"{axis} = {mesh.shape[axis]}" for axis in axes)
        raise ValueError(
            f"{jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)} and logical axes {tuple(names)}; its dim "
            f"{dim} ('{name}', size {leaf.shape[dim]}) is split over mesh axes {sizes} ({shards} shards), which does "
            f"not divide {leaf.shape[dim]} ({len(uneven) - 1} more state leaves likewise). Make "
            f"{' / '.join(f'make_mesh.{axis}' for axis in axes)} a divisor of {leaf.shape[dim]}, change the model size "
            f"behind '{name}' (ModelConfig), or map '{name}' to None in logical_axis_rules.rules."
        )
    return shardings


def batch_sharding(mesh: Mesh, rules=None) -> NamedSharding:
    """Sharding for batch leaves: dim 0 over the mesh axes the `batch` rule names, the rest replicated."""
    return logical_to_sharding(PartitionSpec("batch"), mesh, rules)


def global_batch(local_batch, mesh: Mesh, rules=None):
    """Assembles global jax arrays from each process's host-local numpy batch (leaves [B_local, ...]).

    Every process passes its own shard; the global batch size is B_local * process_count.
    """
    sharding = batch_sharding(mesh, rules)

    def to_global(path, x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, _global_batch_shape(path, x, sharding))

    return jax.tree_util.tree_map_with_path(to_global, local_batch)


def abstract_global_batch(local_batch, mesh: Mesh, rules=None):
    """ShapeDtypeStructs (with shardings) of the global batch `global_batch(local_batch, ...)` would build."""
    sharding = batch_sharding(mesh, rules)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(_global_batch_shape(path, x, sharding), x.dtype, sharding=sharding),
        local_batch,
    )


def _global_batch_shape(path, x, sharding: NamedSharding) -> tuple[int, ...]:
    """[B_local * process_count, ...] of one host-local batch leaf; a ValueError naming the stream and the batch size
    to change when the devices the `batch` axis spans do not divide that global batch."""
    processes = jax.process_count()
    global_shape = (x.shape[0] * processes, *x.shape[1:])
    for _, axes, shards in _indivisible_dims(global_shape[:1], sharding):
        multiple = shards // math.gcd(shards, processes)
        # Batches from the data entry points are {stream: {feature: array}}; their batch sizes are per stream.
        stream = path[0].key if len(path) > 1 and isinstance(path[0], jax.tree_util.DictKey) else None
        fix = (
            f"make {str(stream).upper()}_BATCH_SIZE (train.make_data's {stream}_batch_size, per host) a multiple of "
            f"{multiple}"
            if stream is not None
            else f"make the per-host batch size a multiple of {multiple}"
        )
        raise ValueError(
            f"batch leaf {jax.tree_util.keystr(path)} has a global batch of {global_shape[0]} ({x.shape[0]} per host x "
            f"{processes} process(es)), but the 'batch' axis is split over mesh axes "
            f"{' x '.join(f'{axis} = {sharding.mesh.shape[axis]}' for axis in axes)} ({shards} devices), which must "
            f"divide it; {fix}, or change {' / '.join(f'make_mesh.{axis}' for axis in axes)}."
        )
    return global_shape


def with_shardings(abstract_tree, shardings):
    """Attaches shardings to a pytree of ShapeDtypeStructs (targets for AOT compile and checkpoint restore)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)
