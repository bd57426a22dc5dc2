"""parallel=data: on N CPU devices the step equals the single-device step on the whole batch."""

import pytest

from conftest import run_on_cpu_devices


@pytest.mark.slow
def test_data_parallel_equals_single_device():
    # Four devices here; two processes with one device each in tests/test_multiprocess.py.
    res = run_on_cpu_devices("data_parallel_equality", 4, 4)
    assert res.stdout.split() == ["backprop", "ok", "dni", "ok", "cdni", "ok", "one", "bucket", "ok"]


def test_the_mean_over_two_devices_is_one_swap_and_the_same_bits_as_pmean():
    assert run_on_cpu_devices("axis_mean", 4).stdout.split() == ["2", "ok", "3", "ok", "4", "ok"]


def test_an_argument_already_in_an_equivalent_sharding_is_not_placed_again():
    # A program returns its state as P('pipe', None) where the state went in as P('pipe'): the next chunk must
    # take it as it is, not copy every leaf (a reshard per leaf and chunk).
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from sgrad.devices.chunk import placed
    mesh = jax.make_mesh((1,), ("pipe",))
    a = jax.device_put(np.zeros((2, 3), np.float32), NamedSharding(mesh, P("pipe", None)))
    assert placed(lambda a: a, [NamedSharding(mesh, P("pipe"))])(a) is a
    moved = placed(lambda a: a, [NamedSharding(mesh, P(None, "pipe"))])(np.zeros((2, 3), np.float32))
    assert moved.sharding.spec == P(None, "pipe")  # what is not there yet is still placed
