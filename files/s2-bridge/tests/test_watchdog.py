"""The watchdog: `decide()` rules on their own, then the daemon against a real bridge."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import Bridge, call, connect, create_conversation
from fixtures_client import Daemon, admin_call
from hypothesis import given
from hypothesis import strategies as st
from s2_bridge.agent.watchdog import (
    Alert,
    NoHealthyWorker,
    ReassignStranded,
    Stranded,
    WatchdogState,
    decide,
    plan_reassignments,
)
from s2_bridge.contract import tokens
from s2_bridge.contract.models import worker_sort_key

# --- decide(): pure ----------------------------------------------------------------------------


def worker(worker_id: str, age: float | None, open_tasks: int = 0) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "worker_role": f"role-{worker_id}",
        "heartbeat_age_s": age,
        "open_tasks": open_tasks,
    }


def snapshot(*workers: dict[str, Any]) -> dict[str, Any]:
    return {"workers": list(workers), "silent_after_s": 45}


def fresh_state(threshold: float = 45, grace: float = 120) -> WatchdogState:
    return WatchdogState(started_at=1000.0, threshold_s=threshold, grace_s=grace)


def alerts(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.worker_id, a.kind) for a in actions if isinstance(a, Alert)]


def test_silent_worker_is_alerted_once_and_its_tasks_reassigned_until_none_remain() -> None:
    state = fresh_state()
    state, actions = decide(state, snapshot(worker("1", 5, 2), worker("2", 3, 1), worker("3", 1)), 1001)
    assert actions == []
    state, actions = decide(state, snapshot(worker("1", 50, 2), worker("2", 3, 1), worker("3", 1)), 1016)
    assert alerts(actions) == [("1", "silent")]
    assert "no heartbeat for 50 s" in next(a for a in actions if isinstance(a, Alert)).detail
    reassign = [a for a in actions if isinstance(a, ReassignStranded)]
    assert reassign == [ReassignStranded((Stranded("1", "silent"),), (("2", 1), ("3", 0)))]
    # Next round: still silent, still holding a task (say a move failed): no new alert, retry the move.
    state, actions = decide(state, snapshot(worker("1", 65, 1), worker("2", 3, 1), worker("3", 1, 1)), 1031)
    assert alerts(actions) == []
    assert [type(a) for a in actions] == [ReassignStranded]
    # Tasks gone: nothing to do, and still no repeated alert.
    state, actions = decide(state, snapshot(worker("1", 80, 0), worker("2", 3, 1), worker("3", 1, 2)), 1046)
    assert actions == []
    # Back: one recovery alert.
    state, actions = decide(state, snapshot(worker("1", 2, 0), worker("2", 3, 1), worker("3", 1, 2)), 1061)
    assert alerts(actions) == [("1", "recovered")]
    state, actions = decide(state, snapshot(worker("1", 2, 0), worker("2", 3, 1), worker("3", 1, 2)), 1076)
    assert actions == []


def test_never_seen_worker_alerts_once_after_grace_and_then_counts_as_silent() -> None:
    state = fresh_state(grace=120)
    state, actions = decide(state, snapshot(worker("4", None, 1), worker("5", 1)), 1000 + 119)
    assert actions == []  # still inside the grace period: it may be booting
    state, actions = decide(state, snapshot(worker("4", None, 1), worker("5", 1)), 1000 + 121)
    assert alerts(actions) == [("4", "never_seen")]
    assert [a for a in actions if isinstance(a, ReassignStranded)] == [
        ReassignStranded((Stranded("4", "never_seen"),), (("5", 0),))
    ]
    state, actions = decide(state, snapshot(worker("4", None, 0), worker("5", 1, 1)), 1000 + 136)
    assert actions == []
    state, actions = decide(state, snapshot(worker("4", 0.5, 0), worker("5", 1, 1)), 1000 + 151)
    assert alerts(actions) == [("4", "recovered")]


def test_with_no_healthy_worker_it_says_so_once_and_keeps_trying() -> None:
    state = fresh_state()
    state, actions = decide(state, snapshot(worker("1", 100, 1), worker("2", 90)), 1001)
    assert sorted(alerts(actions)) == [("1", "silent"), ("2", "silent")]
    assert [a for a in actions if isinstance(a, NoHealthyWorker)] == [NoHealthyWorker((Stranded("1", "silent"),))]
    state, actions = decide(state, snapshot(worker("1", 115, 1), worker("2", 105)), 1016)
    assert actions == []
    # A healthy worker appears: the tasks move now.
    state, actions = decide(state, snapshot(worker("1", 130, 1), worker("2", 1)), 1031)
    assert alerts(actions) == [("2", "recovered")]
    assert [a for a in actions if isinstance(a, ReassignStranded)] == [
        ReassignStranded((Stranded("1", "silent"),), (("2", 0),))
    ]


def test_workers_that_leave_the_fleet_are_forgotten() -> None:
    state, _ = decide(fresh_state(), snapshot(worker("1", 100), worker("2", 1)), 1001)
    assert set(state.workers) == {"1", "2"}
    state, actions = decide(state, snapshot(worker("2", 1)), 1016)
    assert set(state.workers) == {"2"}
    assert actions == []


def test_plan_gives_each_task_to_the_least_loaded_worker_ties_by_id() -> None:
    tasks = [{"task_id": 12}, {"task_id": 10}, {"task_id": 11}]
    plan = plan_reassignments(tasks, {"10": 0, "2": 0, "3": 1})
    # Oldest task first; "2" sorts before "10" numerically; counts rise as tasks are handed out.
    assert [(t["task_id"], target) for t, target in plan] == [(10, "2"), (11, "10"), (12, "2")]
    assert plan_reassignments(tasks, {}) == []


def test_worker_ids_sort_naturally() -> None:
    assert sorted(["10", "2", "b", "1", "a"], key=worker_sort_key) == ["1", "2", "10", "a", "b"]


@given(ages=st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=200)), min_size=1, max_size=40))
def test_alerts_only_on_transitions(ages: list[float | None]) -> None:
    """Whatever the heartbeat history, a worker never gets the same alert twice in a row,
    and `recovered` only follows a standing alert."""
    state = fresh_state(threshold=45, grace=0)
    kinds: list[str] = []
    for round_number, age in enumerate(ages):
        state, actions = decide(state, snapshot(worker("1", age)), 1000 + 15 * round_number)
        kinds.extend(kind for _, kind in alerts(actions))
    for earlier, later in itertools.pairwise(kinds):
        assert earlier != later
    if kinds:
        assert kinds[0] != "recovered"
    silent_rounds = sum(1 for age in ages if age is None or age > 45)
    assert len([k for k in kinds if k != "recovered"]) <= silent_rounds


# --- the daemon against a real bridge ------------------------------------------------------------


class Heartbeats:
    """Worker heartbeats driven by the test: each worker beats while its flag is set."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.tokens: dict[str, str] = {}
        self.beating: dict[str, bool] = {}

    def add(self, created: dict[str, Any], beating: bool = True) -> None:
        self.tokens[created["worker_id"]] = created["worker_token"]
        self.beating[created["worker_id"]] = beating

    async def _loop(self) -> None:
        async with httpx2.AsyncClient(verify=self.bridge.ssl_context(), timeout=10) as http:
            while True:
                for worker_id, token in list(self.tokens.items()):
                    if self.beating[worker_id]:
                        response = await http.post(
                            f"{self.bridge.base_url}/v1/heartbeat",
                            json={},
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        assert response.status_code == 200, response.text
                await anyio.sleep(0.2)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Heartbeats]:
        async with anyio.create_task_group() as group:
            group.start_soon(self._loop)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()


def start_watchdog(bridge: Bridge, **settings: float) -> Daemon:
    config = bridge.admin_config(**settings)
    return Daemon(["--log-level", "DEBUG", "watchdog", "--config", str(config)])


async def open_tasks_of(bridge: Bridge, worker_id: str) -> list[dict[str, Any]]:
    listed = await admin_call(bridge, "list_tasks", worker_id=worker_id)
    return [t for t in listed["tasks"] if t["state"] in ("assigned", "in_progress", "blocked")]


@pytest.mark.anyio
async def test_silent_worker_alerted_once_tasks_reassigned_new_assignee_told_then_recovery(
    bridge: Bridge, tmp_path: Path
) -> None:
    workers = {wid: await create_conversation(bridge, wid) for wid in ("1", "2", "3")}
    first = await admin_call(bridge, "assign_task", title="port the parser", worker_id="1")
    second = await admin_call(bridge, "assign_task", title="write the docs", worker_id="1")
    await admin_call(bridge, "assign_task", title="already busy", worker_id="2")
    heartbeats = Heartbeats(bridge)
    for created in workers.values():
        heartbeats.add(created)
    async with heartbeats.running():
        await anyio.sleep(0.5)
        daemon = start_watchdog(bridge, interval_s=0.3, threshold_s=1.5, grace_s=30, check_timeout_s=10)
        try:
            await daemon.wait_for(r"DEBUG .*round: 3 workers, 0 actions")
            heartbeats.beating["1"] = False
            silent_at, line = await daemon.wait_for(r"WARNING .*worker 1 \(.*\) silent: no heartbeat", timeout=30)
            assert "audit #" in line
            await daemon.wait_for(r"moved from worker 1 .* to worker 2", timeout=30)
            await daemon.wait_for(r"moved from worker 1 .* to worker 3", timeout=30)

            assert await open_tasks_of(bridge, "1") == []
            # Fewest open tasks first: worker 3 (0) takes the oldest, then 2 and 3 tie at 1 -> "2".
            moved = {t["task_id"]: t for t in await open_tasks_of(bridge, "3") + await open_tasks_of(bridge, "2")}
            assert moved[first["task_id"]]["worker_id"] == "3"
            assert moved[second["task_id"]]["worker_id"] == "2"
            assert moved[first["task_id"]]["reassigned_from"] == "1"

            async with connect(bridge, workers["3"]["worker_token"]) as worker3:
                inbox = await call(worker3, "check_messages")
            assert any("port the parser" in m["message"] for m in inbox["messages"]), inbox

            # Several more rounds while still silent: no second alert.
            await daemon.wait_for(r"round: 3 workers", since=time.monotonic() + 1.5)
            assert len(daemon.matching(r"worker 1 \(.*\) silent")) == 1

            heartbeats.beating["1"] = True
            _, line = await daemon.wait_for(r"WARNING .*worker 1 \(.*\) recovered", timeout=30, since=silent_at)
            assert "audit #" in line
            await daemon.wait_for(r"round: 3 workers", since=time.monotonic() + 1.0)
            assert len(daemon.matching(r"worker 1 \(.*\) recovered")) == 1
            assert not daemon.matching(r"worker [23] \(")  # the healthy ones never alerted
            assert bridge.admin_token not in daemon.text()
        finally:
            assert await daemon.terminate() == 0


@pytest.mark.anyio
async def test_never_seen_worker_alerts_after_grace_and_its_task_moves(plain_bridge: Bridge) -> None:
    healthy = await create_conversation(plain_bridge, "5")
    await create_conversation(plain_bridge, "6")  # never starts
    task = await admin_call(plain_bridge, "assign_task", title="stranded from the start", worker_id="6")
    heartbeats = Heartbeats(plain_bridge)
    heartbeats.add(healthy)
    async with heartbeats.running():
        started = time.monotonic()
        daemon = start_watchdog(plain_bridge, interval_s=0.3, threshold_s=5, grace_s=2.0)
        try:
            alerted_at, _ = await daemon.wait_for(r"WARNING .*worker 6 \(.*\) never_seen", timeout=30)
            assert alerted_at - started >= 2.0  # not before the grace period
            await daemon.wait_for(r"moved from worker 6 \(never seen\) to worker 5", timeout=30)
            assert [t["task_id"] for t in await open_tasks_of(plain_bridge, "5")] == [task["task_id"]]
            await daemon.wait_for(r"round: 2 workers", since=time.monotonic() + 1.0)
            assert len(daemon.matching(r"never_seen")) == 1
        finally:
            assert await daemon.terminate() == 0


@pytest.mark.anyio
async def test_no_healthy_worker_is_reported_once_then_tasks_move_when_one_appears(plain_bridge: Bridge) -> None:
    lonely = await create_conversation(plain_bridge, "7")
    await admin_call(plain_bridge, "assign_task", title="waits for help", worker_id="7")
    heartbeats = Heartbeats(plain_bridge)
    heartbeats.add(lonely, beating=False)
    async with heartbeats.running():
        async with httpx2.AsyncClient() as http:  # one beat, then silence
            await http.post(
                f"{plain_bridge.base_url}/v1/heartbeat",
                json={},
                headers={"Authorization": f"Bearer {lonely['worker_token']}"},
            )
        daemon = start_watchdog(plain_bridge, interval_s=0.3, threshold_s=1.0, grace_s=60)
        try:
            await daemon.wait_for(r"no healthy worker can take the open tasks of worker\(s\) 7", timeout=30)
            await daemon.wait_for(r"round: 1 workers", since=time.monotonic() + 1.0)
            assert len(daemon.matching(r"no healthy worker")) == 1
            helper = await create_conversation(plain_bridge, "8")
            heartbeats.add(helper)
            await daemon.wait_for(r"moved from worker 7 \(silent\) to worker 8", timeout=30)
        finally:
            assert await daemon.terminate() == 0


@pytest.mark.anyio
async def test_watchdog_survives_a_bridge_outage(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "1")
    heartbeats = Heartbeats(plain_bridge)
    heartbeats.add(created, beating=False)
    daemon = start_watchdog(plain_bridge, interval_s=0.3, threshold_s=30, grace_s=60)
    try:
        await daemon.wait_for(r"round: 1 workers")
        plain_bridge.stop()
        down_at, _ = await daemon.wait_for(r"WARNING .*bridge unreachable")
        await daemon.wait_for(r"retry 3 in", timeout=60)
        plain_bridge.start()
        await daemon.wait_for(r"INFO .*bridge reachable again", timeout=90, since=down_at)
        await daemon.wait_for(r"round: 1 workers", since=time.monotonic())
        assert len(daemon.matching(r"bridge unreachable")) == 1
        assert daemon.running()
    finally:
        assert await daemon.terminate() == 0


@pytest.mark.anyio
async def test_refused_admin_token_exits_77(plain_bridge: Bridge, tmp_path: Path) -> None:
    fake = tmp_path / "wrong-admin.token"
    fd = os.open(fake, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (tokens.new_token("admin")).encode())
    os.close(fd)
    config = tmp_path / "admin-wrong.toml"
    config.write_text(f'bridge_url = "{plain_bridge.url}"\nadmin_token_file = "{fake}"\n[watchdog]\ninterval_s = 0.3\n')
    daemon = Daemon(["watchdog", "--config", str(config)])
    assert await daemon.wait_exit() == 77
    errors = daemon.matching(r"^ERROR ")
    assert len(errors) == 1 and str(fake) in errors[0][1], daemon.text()
    assert fake.read_text() not in daemon.text()
