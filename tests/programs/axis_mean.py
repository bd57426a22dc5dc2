"""sgrad.core.step.axis_mean over 2, 3 and 4 of this process's CPU devices: the same bits as jax.lax.pmean, by one
swap on two devices (no all-reduce left in the program) and by pmean on more."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgrad.core.step import axis_mean

assert jax.device_count() == 4
x = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32) * np.float32(1e3)
for n in (2, 3, 4):
    mesh = jax.make_mesh((n,), ("d",), devices=jax.devices()[:n])
    mean = lambda f: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=P("d"), check_vma=False))
    ours, theirs = mean(lambda a: axis_mean(a, "d")), mean(lambda a: jax.lax.pmean(a, "d"))
    a = jax.device_put(x[:n], NamedSharding(mesh, P("d")))
    got = np.asarray(ours(a))
    assert np.array_equal(got, np.asarray(theirs(a))), n
    np.testing.assert_allclose(got[0], x[:n].mean(0), rtol=1e-6, atol=1e-3)
    assert all(np.array_equal(row, got[0]) for row in got), n  # every device holds the same mean
    hlo = ours.lower(a).compile().as_text()
    assert ((" all-reduce(" in hlo, " collective-permute(" in hlo) == ((False, True) if n == 2 else (True, False))), n
    print(n, "ok")
