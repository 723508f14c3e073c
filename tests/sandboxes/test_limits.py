"""ResourcePolicy: defaults, operator maxima, hard bounds, and the field named in every error."""

from __future__ import annotations

import pytest

from gateway.errors import LimitOutOfRange, NetworkNotAllowed
from gateway.sandboxes.limits import ResourcePolicy


def test_defaults_fill_what_the_request_leaves_out() -> None:
    limits = ResourcePolicy(default_memory_mb=256).resolve({"cpu": 2})
    assert (limits.cpu, limits.memory_mb, limits.network, limits.timeout) == (2, 256, False, 30)


@pytest.mark.parametrize("field, value", [("cpu", 0), ("cpu", 16.01), ("memory_mb", 0), ("memory_mb", 32769),
                                          ("disk_mb", -5), ("pids", 0), ("timeout", 0)])
def test_hard_bounds(field: str, value: float) -> None:
    with pytest.raises(LimitOutOfRange, match=f"resources.{field}"):
        ResourcePolicy(max_cpu=100, max_memory_mb=100_000).resolve({field: value})


def test_operator_maximum_is_lower_than_the_hard_bound() -> None:
    policy = ResourcePolicy(max_cpu=2)
    assert policy.resolve({"cpu": 2}).cpu == 2
    with pytest.raises(LimitOutOfRange, match="at most 2"):
        policy.resolve({"cpu": 3})


def test_network_only_where_allowed() -> None:
    with pytest.raises(NetworkNotAllowed):
        ResourcePolicy().resolve({"network": True})
    assert ResourcePolicy(allow_network=True).resolve({"network": True}).network is True
    assert ResourcePolicy().resolve({"network": False}).network is False


def test_execution_timeout_defaults_to_the_sandboxes() -> None:
    policy = ResourcePolicy(max_timeout=60)
    limits = policy.resolve({"timeout": 12})
    assert policy.timeout_for(None, limits) == 12
    assert policy.timeout_for(5, limits) == 5
    with pytest.raises(LimitOutOfRange, match="timeout"):
        policy.timeout_for(61, limits)
