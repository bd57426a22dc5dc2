"""One of two processes (JAX_PROCESS_ID: its id, argv[1]: the coordinator port) joined by jax.distributed over
localhost with the collectives JAX_CPU_COLLECTIVES_IMPLEMENTATION names (gloo, or mpi under one mpiexec): the
pipeline equals the sequential schedule, data parallelism the single-device step."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sgrad.devices.processes import leave_mpi_world, warm_collectives

jax.config.update("jax_cpu_collectives_implementation", os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo"))
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2, process_id=int(os.environ["JAX_PROCESS_ID"]))
assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
warm_collectives()

from conftest import ROOT, device_data, make_cfg, max_diff
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.devices.parallel import make_data_parallel_runner
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.core.step import UpdateRule, create_state, make_train_step

B, shape = 16, (6, 6, 1)
rng = np.random.default_rng(0)  # the same data and initial parameters in both processes
xs, ys, mean, std = device_data(rng, 128, shape)
pre = lambda x: preprocess(x, mean, std)
gather = lambda tree: jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), tree)

# SGD: Adam divides by the root of tiny early SG gradients and so magnifies float rounding.
sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]
cfg = make_cfg("mode=dni", "model.layers=2", "model.width=16", "sg.hidden_layers=1", "sg.width=32", *sgd)
net = build_network(cfg, shape, 10)
params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, *shape)))
tx = build_train_optimizer(cfg, 100)


def starts(params, stats, tx):
    """A maker of fresh copies of one initial state (each runner donates the state it is given)."""
    return lambda: create_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx)


fresh = starts(params, stats, tx)
T = 10
idx = rng.integers(0, 128, (T, B)).astype(np.int32)

# Module 0 in process 0, module 1 in process 1: activations and SG targets cross between processes.
pipeline = (cfg, net, tx, fresh)  # the parts below time this network too
pipe, state = build_pipeline(net, tx, fresh(), shape, B)
state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
got = to_train_state(pipe, state)
ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
assert int(got.step) == T
assert max_diff(got.params["modules"], fresh().params["modules"]) > 0
assert max_diff(got.params, ref.params) < 1e-5, max_diff(got.params, ref.params)
print("pipeline ok", flush=True)

# Without batch norm the full-batch gradient is the mean of the two processes' shard gradients.
cfg = make_cfg("mode=cdni", "model.layers=3", "model.width=16", "model.batch_norm=false", "sg.batch_norm=false")
net = build_network(cfg, shape, 10)
params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, *shape)))
tx = build_train_optimizer(cfg, 100)
fresh = starts(params, stats, tx)
single, _ = make_chunk_runner(make_train_step(net, tx), mean, std)(fresh(), xs, ys, idx, np.int32(T))
multi, _ = make_data_parallel_runner(net, tx, UpdateRule(), mean, std, jax.devices())(fresh(), xs, ys, idx,
                                                                                        np.int32(T))
d = max_diff(gather(multi.params), single.params)
assert d < 1e-5, d
print("data ok", flush=True)

# The cost model's parts (scripts/parallel_rows.py): each process times its own device's part, both at once, and
# every process gets both devices' (a part process 1 did not send would stay NaN).
sys.path.insert(0, str(ROOT / "scripts"))  # the benchmarks are scripts, not modules of the package
from parallel_rows import part_seconds  # noqa: E402
from timing import wait_seconds  # noqa: E402
# With sg_share each device's part also steps its SG model (and device 1 its copy) along its own half; with
# first_share device 1's part also runs its copy of module 0.
shared = (make_cfg("mode=dni", "model.layers=2", "model.width=16", "sg.hidden_layers=1", "sg.width=32", *sgd,
                   "parallel=pipeline", "sg_share=0.5"), *pipeline[1:])
dgl = make_cfg("mode=dgl", "model.layers=2", "model.width=16", *sgd, "parallel=pipeline", "first_share=0.25")
dgl_net, dgl_tx = build_network(dgl, shape, 10), build_train_optimizer(dgl, 100)
first = (dgl, dgl_net, dgl_tx, starts(*init_variables(dgl_net, jax.random.key(2), jnp.zeros((B, *shape))), dgl_tx))
for parallel, (c, n, t, start) in (("data", (cfg, net, tx, fresh)), ("pipeline", pipeline), ("pipeline", shared),
                                   ("pipeline", first)):
    c.trainer.batch_size = B
    parts = part_seconds(c, UpdateRule(), parallel, 2, 1, n, t, start(), shape, xs, ys, idx, mean, std)
    key = "shard_sec" if parallel == "data" else "stage_sec"
    assert len(parts[key]) == 2 and all(np.isfinite(parts[key])) and min(parts[key]) > 0, parts
    assert parts[key] == [float(p) for p in multihost_utils.broadcast_one_to_all(np.array(parts[key]))], parts
# What a collective after a step's compute costs beyond it alone (the model's third term): both processes run the
# same stand-in step (a differing one would not deadlock but would time the gap), and it returns a finite time.
wait = wait_seconds(jax.devices(), 1e-3, repeats=1)
assert np.isfinite(wait) and abs(wait) < 0.1, wait
print("parts ok", flush=True)
leave_mpi_world()
