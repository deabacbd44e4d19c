"""The controller's watch over its steps' agents (the real agents' case is in tests/test_pipeline_agents.py)."""

from __future__ import annotations

from types import SimpleNamespace

from clearml_pipeline.agent_watch import MISSES_TO_FAIL, lost_steps


def step(task_id: str, worker: str | None) -> SimpleNamespace:
    return SimpleNamespace(id=task_id, name=f"step {task_id}", last_worker=worker)


def test_a_step_is_lost_only_after_its_agent_was_missing_from_consecutive_checks() -> None:
    running = [step("a", "agent:gpu"), step("b", "agent:cpu"), step("c", None)]
    misses: dict[str, int] = {}
    for _ in range(MISSES_TO_FAIL - 1):
        assert lost_steps(running, {"agent:cpu"}, misses) == []
    assert [t.id for t in lost_steps(running, {"agent:cpu"}, misses)] == ["a"]  # c has no agent yet: not lost
    assert misses == {}  # reported once; a relaunched task starts counting afresh


def test_an_agent_that_comes_back_between_checks_resets_the_count() -> None:
    running = [step("a", "agent:gpu")]
    misses: dict[str, int] = {}
    assert lost_steps(running, set(), misses) == []
    assert lost_steps(running, {"agent:gpu"}, misses) == [] and misses == {}
    for _ in range(MISSES_TO_FAIL - 1):
        assert lost_steps(running, set(), misses) == []
    assert len(lost_steps(running, set(), misses)) == 1
