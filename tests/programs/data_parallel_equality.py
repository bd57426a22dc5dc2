"""parallel=data on N CPU devices (argv[1]) equals the single-device step on the whole batch."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import device_data, make_cfg
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.devices.parallel import DATA_AXIS, make_data_parallel_runner
from sgrad.core.step import UpdateRule, create_state, make_train_step
from sgrad.devices.chunk import chunk_fn, make_chunk_runner

assert jax.device_count() == int(sys.argv[1])
for mode in ("backprop", "dni", "cdni"):
    # Without batch norm the full-batch gradient is exactly the mean of the shard gradients.
    cfg = make_cfg(f"mode={mode}", "model.layers=4", "model.width=16", "model.batch_norm=false",
                   "sg.hidden_layers=1", "sg.batch_norm=false", "sg.width=32")
    net = build_network(cfg, (6, 6, 1), 10)
    rng = np.random.default_rng(0)
    xs, ys, mean, std = device_data(rng, 256, (6, 6, 1))
    params, stats = init_variables(net, jax.random.key(1), jnp.zeros((32, 6, 6, 1)))
    first = np.asarray(jax.tree.leaves(params["modules"])[0])
    fresh = lambda: create_state(jax.tree.map(jnp.copy, params), stats, tx)  # the runners donate the state
    tx = build_train_optimizer(cfg, 100)
    idx = rng.integers(0, 256, (5, 32)).astype(np.int32)
    single = make_chunk_runner(make_train_step(net, tx), mean, std)
    s1, m1 = single(fresh(), xs, ys, idx, np.int32(5))
    multi = make_data_parallel_runner(net, tx, UpdateRule(), mean, std, jax.devices())
    s2, m2 = multi(fresh(), xs, ys, idx, np.int32(5))
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    assert not np.allclose(jax.tree.leaves(s1.params["modules"])[0], first)
    print(mode, "ok")

# One collective per step: gradients, batch statistics and metrics travel as one flat buffer (bucket_mean), so
# each all-reduce in the compiled chunk has a single operand (a per-leaf reduce has one per parameter).
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

mesh = jax.make_mesh((jax.device_count(),), (DATA_AXIS,))
specs = (P(), P(), P(), P(), P(None, DATA_AXIS), P(), P(), P(), P())
step = make_train_step(net, tx, axis_name=DATA_AXIS)
sharded = jax.jit(jax.shard_map(chunk_fn(step, mean, std), mesh=mesh, in_specs=specs, out_specs=(P(), P(), P()),
                                check_vma=False))
state = fresh()
chunk = (state, multi.zeros(state, xs, ys, idx), xs, ys, idx, np.int32(0), np.int32(5), np.bool_(True), np.int32(5))
args = [jax.device_put(a, NamedSharding(mesh, sp)) for a, sp in zip(chunk, specs)]
reduces = [line for line in sharded.lower(*args).compile().as_text().splitlines() if " all-reduce(" in line]
assert reduces and all(line.split("=")[1].strip().startswith("f32[") for line in reduces), reduces
print("one bucket ok")
