"""RestartBudget: how many deaths in a row a Jupyter kernel is restarted after (the counting alone, on a
clock the test moves; tests/api/test_jupyter.py proves it on real kernels)."""

from __future__ import annotations

from gateway.sandboxes.restarts import RestartBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_kernel_that_dies_at_once_each_time_is_restarted_limit_times() -> None:
    clock = Clock()
    budget = RestartBudget(limit=3, stable_after=10.0, clock=clock)
    for _ in range(3):
        assert budget.spend("s")
        clock.now += 9.0  # up for less than stable_after: the same row
        budget.restarted("s")
        clock.now += 9.0
    assert not budget.spend("s")
    assert budget.spend("s")  # refused once, then a new row (its owner restarted it)
    assert budget.in_row("s") == 1


def test_a_kernel_that_stayed_up_starts_a_new_row() -> None:
    clock = Clock()
    budget = RestartBudget(limit=2, stable_after=10.0, clock=clock)
    assert budget.spend("s") and budget.in_row("s") == 1
    budget.restarted("s")
    clock.now += 10.0
    assert budget.spend("s") and budget.in_row("s") == 1  # counted from the restarted kernel's answer


def test_time_spent_restarting_is_not_time_up() -> None:
    clock = Clock()
    budget = RestartBudget(limit=1, stable_after=10.0, clock=clock)
    assert budget.spend("s")
    clock.now += 60.0  # a slow start; the kernel never answered (restarted not called)
    assert not budget.spend("s")


def test_sandboxes_are_counted_apart_and_forgotten() -> None:
    budget = RestartBudget(limit=1, stable_after=10.0, clock=Clock())
    assert budget.spend("a") and budget.spend("b")
    budget.forget("a")
    assert budget.in_row("a") == 0 and budget.in_row("b") == 1
    assert budget.spend("a") and not budget.spend("b")


def test_a_granted_restart_is_pending_until_its_kernel_answers() -> None:
    budget = RestartBudget(limit=1, stable_after=10.0, clock=Clock())
    assert not budget.pending("s")
    assert budget.spend("s") and budget.pending("s")
    budget.restarted("s")
    assert not budget.pending("s")
    assert not budget.spend("s") and not budget.pending("s")  # refused: dead, nothing pending
