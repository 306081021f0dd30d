"""Mesh construction, the rules table, and parameter/batch shardings on 8 simulated devices."""

import jax
import numpy as np
import optax
import pytest
import trainer_toy as toy
from jax.sharding import PartitionSpec

from maestro_jax import partitioning, train, trainer


def test_mesh_fills_minus_one_and_rejects_bad_sizes():
    mesh = partitioning.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(partitioning.make_mesh(devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="do not divide the 8"):
        partitioning.make_mesh(data=-1, fsdp=3)
    with pytest.raises(ValueError, match="multiply to 4"):
        partitioning.make_mesh(data=2, fsdp=2, tensor=1)


def test_hybrid_mesh_puts_dcn_axis_across_slices():
    class FakeDevice:
        def __init__(self, i):
            self.id, self.slice_index, self.process_index = i, i // 4, i // 4
            self.platform, self.device_kind = "cpu", "fake"

    devices = [FakeDevice(i) for i in range(8)]
    grid = partitioning.device_grid(data=1, fsdp=-1, tensor=1, dcn_data=2, devices=devices)
    assert grid.shape == (2, 4, 1)
    assert {d.slice_index for d in grid[0].flat} == {0} and {d.slice_index for d in grid[1].flat} == {1}
    with pytest.raises(ValueError, match="multiply to 3, not to the 2 slice.*make_mesh.dcn_data"):
        partitioning.device_grid(dcn_data=3, devices=devices)


def test_rules_map_logical_axes_to_mesh_axes():
    mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
    # An activation's embed dim cannot reuse fsdp once batch has taken it.
    sharding = partitioning.logical_to_sharding(PartitionSpec("batch", "length", "embed"), mesh)
    assert sharding.spec == PartitionSpec(("data", "fsdp"), None, None)
    assert partitioning.logical_to_sharding(PartitionSpec("embed", "mlp"), mesh).spec == PartitionSpec("fsdp", "tensor")
    custom = partitioning.logical_axis_rules([("embed", None), ("mlp", ["fsdp", "tensor"])])
    spec = partitioning.logical_to_sharding(PartitionSpec("embed", "mlp"), mesh, custom).spec
    assert spec == PartitionSpec(None, ("fsdp", "tensor"))


def test_fsdp8_stores_one_eighth_of_params_and_moments_per_device():
    mesh = partitioning.make_mesh(data=1, fsdp=8, tensor=1)
    rules = partitioning.logical_axis_rules()
    batch = next(toy.ToyBatcher(0, 1, 0, global_batch_size=8))
    abstract_batch = partitioning.abstract_global_batch(batch, mesh, rules)
    init_fn = trainer.make_init_fn(toy.ToyMLP(), optax.adam(1e-3), use_ema=False)
    rng = jax.random.PRNGKey(0)
    _, shardings = trainer.abstract_and_shardings(init_fn, rng, abstract_batch, mesh, rules)
    state = trainer.initialize_state(
        init_fn, rng, partitioning.global_batch(batch, mesh, rules), shardings, mesh, rules
    )
    for tree in (state.params, state.opt_state[0].mu):
        kernels = [x for x in jax.tree.leaves(tree) if x.ndim == 2]
        total = sum(x.nbytes for x in kernels)
        per_device = {}
        for x in kernels:
            for shard in x.addressable_shards:
                per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
        assert len(per_device) == 8
        assert set(per_device.values()) == {total // 8}


def test_global_batch_is_sharded_over_data_axes():
    mesh = partitioning.make_mesh(data=4, fsdp=2, tensor=1)
    local = next(toy.ToyBatcher(0, 1, 0, global_batch_size=16))
    batch = partitioning.global_batch(local, mesh)
    assert batch["x"].shape == (16, toy.FEATURES)
    assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {shard.data.shape for shard in batch["x"].addressable_shards} == {(2, toy.FEATURES)}
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])


def test_global_batch_the_batch_axes_do_not_divide_names_the_stream_batch_size():
    mesh = partitioning.make_mesh(data=4, fsdp=2, tensor=1)
    local = {"paired": {"tokens": np.zeros((6, 3), np.int32)}}
    expected = (
        "global batch of 6 .*data = 4 x fsdp = 2 .*PAIRED_BATCH_SIZE.* a multiple of 8.*make_mesh.data / make_mesh.fsdp"
    )
    with pytest.raises(ValueError, match=expected):
        partitioning.abstract_global_batch(local, mesh)
    with pytest.raises(ValueError, match=expected):
        partitioning.global_batch(local, mesh)


def test_train_stops_before_compiling_on_a_batch_the_mesh_does_not_divide(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "compile_ahead_of_time", lambda *a: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="global batch of 4 .*data = 8 .*per-host batch size a multiple of 8"):
        train.train(
            model_dir=str(tmp_path),
            model=toy.ToyMLP(),
            objective=toy.toy_objective,
            make_data=lambda *args: toy.ToyBatcher(*args, global_batch_size=4),
            train_steps=1,
            mesh=partitioning.make_mesh(data=8),
        )


def test_fsdp_size_that_does_not_divide_a_param_names_it_and_the_bindings():
    """No silent replication: the toy's [16, 32] kernels shard their 16-wide 'embed' dim over fsdp = 3."""
    mesh = partitioning.make_mesh(data=1, fsdp=3, tensor=1, devices=jax.devices()[:3])
    rules = partitioning.logical_axis_rules()
    batch = next(toy.ToyBatcher(0, 1, 0, global_batch_size=3))
    init_fn = trainer.make_init_fn(toy.ToyMLP(), optax.adam(1e-3), use_ema=False)
    abstract_batch = partitioning.abstract_global_batch(batch, mesh, rules)
    expected = (
        r"\.params\['Dense_0'\]\['kernel'\] has shape \(16, 32\) and logical axes \('embed', 'mlp'\); its dim 0 "
        r"\('embed', size 16\) is split over mesh axes fsdp = 3 .*make_mesh.fsdp a divisor of 16.*"
        r"logical_axis_rules.rules"
    )
    with pytest.raises(ValueError, match=expected):
        trainer.abstract_and_shardings(init_fn, jax.random.PRNGKey(0), abstract_batch, mesh, rules)


class FakeTPUDevice:
    """What mesh_utils reads of a TPU v4 chip: slices of 2x2x1 chips at coords (x, y, 0)."""

    platform, device_kind, core_on_chip = "tpu", "TPU v4", 0

    def __init__(self, i, chips_per_slice=4):
        self.id, self.slice_index = i, i // chips_per_slice
        self.process_index = self.slice_index
        chip = i % chips_per_slice
        self.coords = (chip % 2, chip // 2, 0)

    def __repr__(self):
        return f"FakeTPUDevice({self.id})"


def test_dcn_data_defaults_to_the_slices_seen_and_a_binding_that_disagrees_stops():
    devices = [FakeTPUDevice(i) for i in range(8)]
    grid = partitioning.device_grid(data=1, fsdp=-1, devices=devices)
    assert grid.shape == (2, 4, 1)
    assert [{d.slice_index for d in row.flat} for row in grid] == [{0}, {1}]
    for dcn_data in (1, 4):
        with pytest.raises(ValueError, match=f"multiply to {dcn_data}, not to the 2 slice.*make_mesh.dcn_data"):
            partitioning.device_grid(dcn_data=dcn_data, devices=devices)
    with pytest.raises(ValueError, match=r"unevenly over slices .*\{0: 4, 1: 3\}"):
        partitioning.device_grid(devices=devices[:7])
    # CPU devices have no slice_index: one slice, so a second one cannot be asked for.
    with pytest.raises(ValueError, match="multiply to 2, not to the 1 slice.*make_mesh.dcn_data"):
        partitioning.make_mesh(dcn_data=2)


def test_tpu_devices_off_the_torus_stop_instead_of_a_plain_reshape():
    """Three chips of a 2x2 slice leave a hole in the torus: no silent reshape on a platform with a topology."""
    with pytest.raises(ValueError, match="ICI sizes .* physical topology of the 3 TPU v4 devices.*make_mesh.data"):
        partitioning.device_grid(devices=[FakeTPUDevice(i) for i in range(3)])


def test_devices_without_a_topology_are_reshaped_in_order_and_logged(caplog):
    partitioning._warn_plain_reshape.cache_clear()
    with caplog.at_level("INFO", logger=partitioning.__name__):
        mesh = partitioning.make_mesh(data=2, fsdp=4)
    assert list(mesh.devices.flat) == jax.devices()
    assert "cpu devices have no physical topology" in caplog.text and "plain reshape" in caplog.text
    assert [record.levelname for record in caplog.records if "plain reshape" in record.message] == ["INFO"]
