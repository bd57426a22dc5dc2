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
