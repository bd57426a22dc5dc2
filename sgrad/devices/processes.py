"""The environment of processes that each drive one CPU device (launch_local, the multi-process benchmarks)."""

from __future__ import annotations

import os
from typing import Mapping

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def one_device_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (the current environment by default) for a process that must see one CPU device: XLA's forced
    device count dropped from XLA_FLAGS, every other flag the caller set (compile options, say) kept."""
    env = dict(os.environ if env is None else env)
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def device_count_env(n: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` for a process that must see `n` CPU devices: XLA's forced device count set to `n`, every other flag
    the caller set kept (as one_device_env)."""
    env = one_device_env(env)
    env["XLA_FLAGS"] = f"{DEVICE_COUNT_FLAG}={n} {env.get('XLA_FLAGS', '')}".strip()
    return env
