"""parallel=pipeline: the pipelined run equals the same schedule run sequentially, and with one minibatch in
flight at a time it equals the single-device DNI step."""

import json

import pytest

from conftest import make_cfg, run_on_cpu_devices
from sgrad.config import ConfigError
from sgrad.run.build import check


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4])
def test_pipeline_matches_sequential_schedule_and_single_device_step(devices):
    res = run_on_cpu_devices("pipeline_equality", devices, devices)
    expected = {2: ["sequential cdni fcn ok", "sequential dni cnn ok", "drained dni ok", "drained dni_full ok"],
                4: ["sequential cdni_full fcn ok", "drained cdni ok"]}[devices]
    assert res.stdout.splitlines() == expected


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3])
def test_dgl_ddg_and_fr_pipelines_match_their_sequential_schedule_and_single_device_step(devices):
    res = run_on_cpu_devices("pipeline_dgl_ddg", devices, devices)
    expected = (["dgl cnn ok", "ddg cnn ok"] if devices == 2 else
                ["dgl fcn ok", "fr fcn ok", "fr dropout ok"])
    assert res.stdout.splitlines() == expected


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3])
def test_a_shared_sg_regression_equals_the_unshared_pipeline_and_its_copies_stay_equal_to_m(devices):
    # 2 devices swap their halves in one collective; at 3 the middle one holds M_2 and a copy of M_1, so it sends
    # a half-gradient each way.
    # Bit for bit under any compiler flags: the copies step in the same code on both devices, outside the switch
    # over stages (compiled into each device's branch, the tests' fast emitters rounded them apart).
    # At 3 also interfaces of two widths, whose copies each device's branch steps.
    res = run_on_cpu_devices("pipeline_sg_share", devices, devices)
    assert res.stdout.splitlines() == ["dni shared = unshared", "cdni shared = unshared",
                                       *(["dni widths 16, 24 shared = unshared"] if devices == 3 else []),
                                       "cdni batch norm copies equal"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3])
def test_module_0_shared_with_device_1_equals_the_unshared_pipeline_and_its_copy_stays_equal(devices):
    res = run_on_cpu_devices("pipeline_first_share", devices, devices)
    assert res.stdout.splitlines() == ["dgl shared = unshared", "dgl batch norm copy equal"]


@pytest.mark.slow
def test_two_modules_per_device_match_the_sequential_schedule_of_the_same_modules():
    res = run_on_cpu_devices("pipeline_per_device", 2)
    assert [line.split(" ok")[0] for line in res.stdout.splitlines()] == ["cdni_full", "dgl"]


def test_modules_per_device_must_divide_the_modules():
    import numpy as np
    from conftest import program_setup
    from sgrad.devices.layout import build_pipeline
    cfg = make_cfg("model.layers=3", "model.width=8", "mode=cdni", "parallel=pipeline")
    net, tx, fresh, *_ = program_setup(cfg, (4, 4, 1), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"modules_per_device=2: must divide the network's 3 modules"):
        build_pipeline(net, tx, fresh(), (4, 4, 1), 4, per_device=2)


@pytest.mark.parametrize("overrides, message", [
    (["sg_share=0.5"], r"sg_share=0.5 .*0 unless parallel=pipeline with replicas=1"),
    (["parallel=pipeline", "sg_share=1.0"], r"sg_share=1.0 .*in \[0, 1\)"),
    (["parallel=pipeline", "mode=dgl", "sg_share=0.5"], r"sg_share=0.5 .*0 for mode=dgl .*cdni, dni regress"),
    (["modules_per_device=2"], r"modules_per_device=2 .*1 unless parallel=pipeline with replicas=1 and sg_share=0"),
    (["mode=dgl", "first_share=0.2"], r"first_share=0.2 .*0 unless parallel=pipeline with replicas=1"),
    (["parallel=pipeline", "mode=dgl", "first_share=1.0"], r"first_share=1.0 .*in \[0, 1\)"),
    (["parallel=pipeline", "mode=cdni", "first_share=0.2"], r"first_share=0.2 .*0 for mode=cdni .*only dgl"),
    (["parallel=pipeline", "modules_per_device=0"], r"modules_per_device=0 .*an integer >= 1"),
    (["parallel=pipeline", "mode=ddg", "modules_per_device=2"], r"modules_per_device=2 .*1 for mode=ddg")])
def test_sg_share_first_share_and_modules_per_device_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(make_cfg(*overrides))


@pytest.mark.slow
def test_the_transformer_pipeline_matches_its_sequential_schedule():
    res = run_on_cpu_devices("pipeline_transformer", 2)
    assert res.stdout.splitlines() == ["cdni ok"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["sg_share=0.5"], ["mode=dgl", "first_share=0.25"]],
                         ids=["unshared", "sg_share", "first_share"])
def test_pipeline_run_learns_and_resumes(idx_dir, tmp_path, overrides):
    res = run_on_cpu_devices("pipeline_train", 3, idx_dir, tmp_path, *overrides)
    first, second = (json.loads(line) for line in res.stdout.splitlines()[-2:])
    assert first["status"] == "completed" and first["accuracy"] > 0.5, first  # chance is 0.1
    assert second["same"] and second["steps"][-1] == 200, second


@pytest.mark.slow
def test_pipeline_with_replicas_equals_the_whole_batch_schedule_and_learns(idx_dir, tmp_path):
    # 2 modules x 2 copies on 4 devices: each copy on half the batch, gradients averaged.
    res = run_on_cpu_devices("pipeline_replicas", 4, 2, 2, idx_dir, tmp_path)
    lines = res.stdout.splitlines()
    assert lines[:2] == ["cdni ok", "dgl ok"]
    run = json.loads(lines[2])
    assert run["status"] == "completed" and run["accuracy"] > 0.5, run  # chance is 0.1


@pytest.mark.parametrize("overrides, message", [
    (["replicas=2"], "replicas=2 .*1 unless parallel=pipeline"),
    (["parallel=pipeline", "replicas=3", "trainer.batch_size=16"], "replicas=3 .*divisor of trainer.batch_size=16"),
    (["parallel=pipeline", "replicas=2", "mode=ddg"], "replicas=2 .*1 for mode=ddg")])
def test_replicas_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(make_cfg(*overrides))


@pytest.mark.parametrize("override, key", [("mode=backprop", "mode"), ("trainer.update_prob=0.5", "trainer.update_prob"),
                                           ("sg.lambda_=0.5", "sg.lambda_"), ("sg.warmup_steps=10", "sg.warmup_steps")])
def test_pipeline_rejects_what_would_lock_it(override, key):
    with pytest.raises(ConfigError, match=key):
        check(make_cfg("parallel=pipeline", override))


@pytest.mark.parametrize("override, key", [("parallel=data", "parallel"), ("trainer.update_prob=0.5",
                                                                           "trainer.update_prob")])
def test_ddg_rejects_what_would_split_or_skip_its_stash(override, key):
    with pytest.raises(ConfigError, match=f"{key}=.*for mode=ddg"):
        check(make_cfg("mode=ddg", override))


def test_pipeline_needs_one_device_per_module(idx_dir, tmp_path):
    from sgrad.run import train_and_evaluate
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "dataset.download=false", "parallel=pipeline",
                   "model.layers=4", "trainer.steps=5")
    with pytest.raises(ValueError, match="4 modules but only 1 devices.*xla_force_host_platform_device_count=4"
                                         ".*model.dni_every or model.modules.*model=custom") as err:
        train_and_evaluate(cfg, tmp_path)
    assert "launch_local" not in str(err.value)  # one process: more devices come from XLA_FLAGS


def test_balanced_partition_minimises_the_slowest_module():
    from sgrad.models.partition import balanced_sizes, even_sizes
    assert balanced_sizes([10, 1, 1, 1], [0, 0, 0, 0], 2) == (1, 3)
    assert balanced_sizes([1, 1, 1, 1], [0, 0, 0, 0], 2) == (2, 2)
    # The SG model a module carries on its output counts: a costly one pushes layers to the module above.
    assert balanced_sizes([2, 2, 2, 2], [0, 3, 0, 0], 2) == (1, 3)
    assert balanced_sizes([3, 1, 1, 1, 1, 1], [0] * 6, 3) == (1, 2, 3)
    assert even_sizes(5, 2) == (2, 2, 1)
    # sg_share hands part of each SG model's regression to the module above: (1, 3) costs max(2 + 5, 6) unshared,
    # but with 3 of its 4 handed up (2, 2) costs max(4 + 2, 4 + 3) against (1, 3)'s max(2 + 2, 6 + 3).
    assert balanced_sizes([2, 2, 2, 2], [5, 5, 5, 0], 2) == (1, 3)
    assert balanced_sizes([2, 2, 2, 2], [2, 2, 2, 0], 2, handed_up=[3, 3, 3, 0]) == (2, 2)
    # first_share moves that share of the first module's cost to the second: (1, 3) costs max(4, 3) alone, but with
    # 0.3 of it moved max(2.8, 3 + 1.2) against (2, 2)'s max(3.5, 2 + 1.5).
    assert balanced_sizes([4, 1, 1, 1], [0] * 4, 2) == (1, 3)
    assert balanced_sizes([4, 1, 1, 1], [0] * 4, 2, first_share=0.3) == (2, 2)


def test_an_sg_models_cost_counts_its_regression_on_an_older_activation():
    # ĝ on this tick's activation and the regression on an older one: two forward passes and a VJP w.r.t. the
    # parameters, three matmuls of a linear SG model (on one activation XLA shared the forwards: two).
    import jax
    import jax.numpy as jnp
    from sgrad.models.partition import flops, interface_cost
    from sgrad.run.build import interface_models
    model = interface_models(make_cfg("mode=dni", "sg.hidden_layers=0"), 10)["sg"]((64,))
    matmul = 2 * 32 * 64 * 64
    prediction, regression = interface_cost(model, jax.ShapeDtypeStruct((32, 64), jnp.float32), None, True, flops)
    assert matmul <= prediction < 1.25 * matmul and 2 * matmul <= regression < 2.25 * matmul


def test_sg_share_moves_the_balanced_split_towards_the_sg_model():
    # cDNI at width 1024: the linear SG model costs about as much as a hidden layer. Unshared it sits with the
    # 784-input layer alone (1+3); with 0.9 of its regression done by the device above, 2+2 balances.
    from sgrad.run.build import build_network
    sizes = lambda share: [len(m.layers) for m in build_network(make_cfg(
        "model.partition=balanced", "model.modules=2", "model.layers=4", "model.width=1024", "trainer.batch_size=64",
        "mode=cdni", "parallel=pipeline", f"sg_share={share}"), (28, 28, 1), 10).modules]
    assert sizes(0.0) == [1, 3] and sizes(0.9) == [2, 2]


def test_balanced_partition_builds_the_networks_it_estimates():
    from sgrad.run.build import build_network
    # The 784-input layer costs as much as the other three together: it gets a module of its own.
    net = build_network(make_cfg("model.partition=balanced", "model.modules=2", "model.layers=4",
                                 "model.width=64", "trainer.batch_size=64"), (28, 28, 1), 10)
    assert [len(m.layers) for m in net.modules] == [1, 3] and len(net.interface_models) == 1
    even = build_network(make_cfg("model.layers=4", "model.dni_every=2"), (28, 28, 1), 10)
    assert [len(m.layers) for m in even.modules] == [2, 2]


def test_profiled_partition_measures_once_and_every_later_run_builds_the_same_split(tmp_path, monkeypatch):
    from sgrad.run.build import build_network
    from sgrad.run.partition_cache import cache_dir, profiled_sizes
    monkeypatch.setenv("SGRAD_CACHE", str(tmp_path))
    # The split itself depends on the timing (here the 784-input layer of a wide FCN usually weighs as much as
    # two hidden layers or more, so [1, 3]; a busy machine can say otherwise): what is measured is kept.
    cfg = make_cfg("model.partition=profiled", "model.modules=2", "model.layers=4", "model.width=256",
                   "trainer.batch_size=256", "mode=dgl")
    measured = [len(m.layers) for m in build_network(cfg, (28, 28, 1), 10).modules]
    assert len(measured) == 2 and sum(measured) == 4 and min(measured) >= 1
    (cached,) = cache_dir().glob("*.json")
    assert json.loads(cached.read_text())["sizes"] == measured
    # Later runs read the split instead of timing again, even if timing would now say otherwise.
    other = [3, 1] if measured != [3, 1] else [2, 2]
    cached.write_text(json.dumps({"sizes": other}))
    assert [len(m.layers) for m in build_network(cfg, (28, 28, 1), 10).modules] == other
    calls = []
    measure = lambda: calls.append(1) or (3, 1)
    assert profiled_sizes("a network", 2, measure) == (3, 1) and profiled_sizes("a network", 2, measure) == (3, 1)
    assert len(calls) == 1
    for path in cache_dir().glob("*.json"):
        path.write_text("{not json")  # unreadable: measured again, not an error
    assert profiled_sizes("a network", 2, measure) == (3, 1) and len(calls) == 2
    from sgrad.run import partition_cache
    monkeypatch.setattr(partition_cache, "COSTS", partition_cache.COSTS + 1)  # costs measured anew: so is the split
    assert profiled_sizes("a network", 2, measure) == (3, 1) and len(calls) == 3


@pytest.mark.parametrize("overrides, message", [
    (["model.partition=balanced"], "model.modules=None is not allowed.*with model.partition=balanced"),
    (["model.partition=balanced", "model.modules=9"], r"model.modules=9 .*\[2, model.layers=4\]"),
    (["model.modules=2"], "model.modules=2 .*null with model.partition=even"),
    (["model.partition=profiled", "model.modules=2", "model.dni_every=2"], "model.dni_every=2 .*model.modules=2 sets")])
def test_partition_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(make_cfg("model.layers=4", *overrides))
