"""`s2-bridge watchdog`: watch worker heartbeats, alert once per transition, move stranded tasks.

The decisions live in `decide()`, a pure function of (previous state, one fleet_status
snapshot, now), so every rule is testable without a bridge. `Watchdog` runs the loop:
fetch a snapshot, decide, carry out the actions (record_alert, reassign_task), back off
while the bridge is unreachable, exit 77 when the admin token is refused.

Rules:
- healthy -> silent (no heartbeat for more than threshold_s): one `silent` alert.
- never seen by the time grace_s has passed since the watchdog started: one `never_seen` alert.
- an alerted worker that heartbeats again: one `recovered` alert.
- a silent worker's open tasks (never-seen ones after grace) go, one by one, to the healthy
  worker with the fewest open tasks (ties: lowest worker id); the bridge messages the new
  assignee. With no healthy worker, say so once and try again every round.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from s2_bridge.agent.client import AuthRefused, BridgeClient, BridgeUnavailable, ToolCallError
from s2_bridge.agent.daemon import run_until_signal
from s2_bridge.contract import exitcodes
from s2_bridge.contract.backoff import Backoff
from s2_bridge.contract.config import AdminConfig, load_admin_config
from s2_bridge.contract.models import OPEN_TASK_STATES, AlertKind, Health, Unhealthy, health_of, worker_sort_key

log = logging.getLogger("s2_bridge.watchdog")

BACKOFF_CAP_S = 60.0


# --- state and actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerTrack:
    """What the watchdog remembers about one worker: the alert still standing, if any."""

    alerted: Unhealthy | None = None


@dataclass(frozen=True)
class WatchdogState:
    started_at: float  # monotonic seconds when the watchdog started (never_seen grace counts from it)
    threshold_s: float
    grace_s: float
    workers: Mapping[str, WorkerTrack] = field(default_factory=dict)
    no_healthy_reported: bool = False


@dataclass(frozen=True)
class Alert:
    worker_id: str
    worker_role: str
    kind: AlertKind
    detail: str


@dataclass(frozen=True)
class Stranded:
    """A worker that cannot work its open tasks: silent, or never seen after the grace period."""

    worker_id: str
    why: Unhealthy


@dataclass(frozen=True)
class ReassignStranded:
    stranded: tuple[Stranded, ...]
    # Healthy workers and their open task counts when the snapshot was taken.
    candidates: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class NoHealthyWorker:
    stranded: tuple[Stranded, ...]


Action = Alert | ReassignStranded | NoHealthyWorker


def classify(worker: Mapping[str, Any], threshold_s: float) -> Health:
    age = worker.get("heartbeat_age_s")
    return health_of(None if age is None else float(age), threshold_s)


def decide(previous: WatchdogState, snapshot: Mapping[str, Any], now: float) -> tuple[WatchdogState, list[Action]]:
    """One round: from the previous state and a fleet_status result, the new state and what to do."""
    workers = sorted(snapshot.get("workers", []), key=lambda w: worker_sort_key(str(w["worker_id"])))
    since_start = now - previous.started_at
    after_grace = since_start >= previous.grace_s
    actions: list[Action] = []
    tracks: dict[str, WorkerTrack] = {}
    healthy: list[tuple[str, int]] = []
    stranded: list[Stranded] = []

    for worker in workers:
        worker_id = str(worker["worker_id"])
        role = str(worker.get("worker_role", ""))
        open_tasks = int(worker.get("open_tasks", 0))
        age = worker.get("heartbeat_age_s")
        track = previous.workers.get(worker_id, WorkerTrack())
        health = classify(worker, previous.threshold_s)
        if health == "healthy":
            healthy.append((worker_id, open_tasks))
            if track.alerted is not None:
                detail = f"heartbeat again ({float(age):.0f} s ago) after being {track.alerted.replace('_', ' ')}"
                actions.append(Alert(worker_id, role, "recovered", detail))
                track = WorkerTrack()
        elif health == "silent":
            if track.alerted != "silent":
                detail = f"no heartbeat for {float(age):.0f} s (threshold {previous.threshold_s:g} s)"
                actions.append(Alert(worker_id, role, "silent", detail))
                track = WorkerTrack("silent")
            if open_tasks:
                stranded.append(Stranded(worker_id, "silent"))
        elif after_grace:
            if track.alerted != "never_seen":
                detail = (
                    f"no heartbeat since the watchdog started {since_start:.0f} s ago (grace {previous.grace_s:g} s)"
                )
                actions.append(Alert(worker_id, role, "never_seen", detail))
                track = WorkerTrack("never_seen")
            if open_tasks:
                stranded.append(Stranded(worker_id, "never_seen"))
        tracks[worker_id] = track

    no_healthy_reported = False
    if stranded and healthy:
        actions.append(ReassignStranded(tuple(stranded), tuple(healthy)))
    elif stranded:
        if not previous.no_healthy_reported:
            actions.append(NoHealthyWorker(tuple(stranded)))
        no_healthy_reported = True
    new_state = replace(previous, workers=tracks, no_healthy_reported=no_healthy_reported)
    return new_state, actions


def plan_reassignments(
    tasks: Iterable[Mapping[str, Any]], candidates: Mapping[str, int]
) -> list[tuple[Mapping[str, Any], str]]:
    """Give each task (oldest first) to the candidate with the fewest open tasks, counting as we go."""
    counts = dict(candidates)
    plan: list[tuple[Mapping[str, Any], str]] = []
    if not counts:
        return plan
    for task in sorted(tasks, key=lambda t: int(t["task_id"])):
        target = min(counts, key=lambda w: (counts[w], worker_sort_key(w)))
        counts[target] += 1
        plan.append((task, target))
    return plan


# --- the loop ----------------------------------------------------------------------------------


class Watchdog:
    def __init__(self, config: AdminConfig, clock: Any = time.monotonic) -> None:
        self.config = config
        settings = config.watchdog
        self.interval_s = settings.interval_s
        self.check_timeout_s = settings.check_timeout_s
        self.clock = clock
        self.state = WatchdogState(started_at=clock(), threshold_s=settings.threshold_s, grace_s=settings.grace_s)
        self.backoff = Backoff(base=self.interval_s, cap=max(BACKOFF_CAP_S, self.interval_s))
        self.bridge_down = False

    async def run(self, bridge_client: BridgeClient) -> int:
        settings = self.config.watchdog
        log.info(
            "watching %s every %g s (silent after %g s, never-seen grace %g s)",
            self.config.bridge_url,
            settings.interval_s,
            settings.threshold_s,
            settings.grace_s,
        )
        async with bridge_client as bridge:
            while True:
                refusal: str | None = None
                try:
                    await self.check_once(bridge)
                except BridgeUnavailable as exc:
                    delay = self._on_down(str(exc))
                except AuthRefused as exc:
                    refusal = str(exc)
                else:
                    delay = self._on_up()
                if refusal is not None:
                    log.error(
                        "the bridge refused the admin token in %s (%s): install the current admin token; exiting %d",
                        self.config.admin_token_file,
                        refusal,
                        exitcodes.AUTH_REFUSED,
                    )
                    return exitcodes.AUTH_REFUSED
                await asyncio.sleep(delay)

    def _on_down(self, reason: str) -> float:
        if not self.bridge_down:
            log.warning("bridge unreachable (%s); retrying with backoff up to %.0f s", reason, self.backoff.cap)
            self.bridge_down = True
        delay = self.backoff.next_delay()
        log.debug("check failed (%s); retry %d in %.2f s", reason, self.backoff.attempt, delay)
        return delay

    def _on_up(self) -> float:
        if self.bridge_down:
            log.info("bridge reachable again after %d failed checks", self.backoff.attempt)
            self.bridge_down = False
        self.backoff.reset()
        return self.interval_s

    async def check_once(self, bridge: BridgeClient) -> None:
        """One round: snapshot, decide, act. State advances only for actions that were carried out."""
        snapshot = await _fetch(bridge)  # bounded by the client's call timeout (check_timeout_s)
        previous = self.state
        new_state, actions = decide(previous, snapshot, self.clock())
        log.debug("round: %d workers, %d actions", len(snapshot.get("workers", [])), len(actions))
        tracks = dict(new_state.workers)
        for index, action in enumerate(actions):
            try:
                await self._execute(bridge, action)
            except BridgeUnavailable:
                # Undo what was not done, so the next round decides (and alerts) it again.
                for pending in actions[index:]:
                    if isinstance(pending, Alert):
                        tracks[pending.worker_id] = previous.workers.get(pending.worker_id, WorkerTrack())
                    if isinstance(pending, NoHealthyWorker):
                        new_state = replace(new_state, no_healthy_reported=False)
                self.state = replace(new_state, workers=tracks)
                raise
        self.state = new_state

    async def _execute(self, bridge: BridgeClient, action: Action) -> None:
        if isinstance(action, Alert):
            await self._alert(bridge, action)
        elif isinstance(action, ReassignStranded):
            await self._reassign(bridge, action)
        else:
            ids = ", ".join(s.worker_id for s in action.stranded)
            log.warning("no healthy worker can take the open tasks of worker(s) %s; retrying every round", ids)

    async def _alert(self, bridge: BridgeClient, alert: Alert) -> None:
        try:
            recorded = await bridge.call(
                "record_alert", worker_id=alert.worker_id, kind=alert.kind, detail=alert.detail
            )
            audit = f"audit #{recorded.get('audit_id')}"
        except ToolCallError as exc:
            audit = f"not recorded in the audit log: {exc}"
        log.warning("worker %s (%s) %s: %s; %s", alert.worker_id, alert.worker_role, alert.kind, alert.detail, audit)

    async def _reassign(self, bridge: BridgeClient, action: ReassignStranded) -> None:
        counts = dict(action.candidates)
        for stranded in action.stranded:
            listed = await bridge.call("list_tasks", worker_id=stranded.worker_id)
            tasks = [t for t in listed.get("tasks", []) if t.get("state") in OPEN_TASK_STATES]
            for task, target in plan_reassignments(tasks, counts):
                reason = f"watchdog: worker {stranded.worker_id} is {stranded.why.replace('_', ' ')}"
                try:
                    await bridge.call("reassign_task", task_id=task["task_id"], to_worker_id=target, reason=reason)
                except ToolCallError as exc:
                    # Typically the task was closed meanwhile; the next round sees the truth.
                    log.info("task %s not reassigned: %s", task["task_id"], exc)
                    continue
                counts[target] += 1
                log.warning(
                    "task %s %r moved from worker %s (%s) to worker %s",
                    task["task_id"],
                    task.get("title", ""),
                    stranded.worker_id,
                    stranded.why.replace("_", " "),
                    target,
                )


async def _fetch(bridge: BridgeClient) -> dict[str, Any]:
    try:
        return await bridge.call("fleet_status")
    except ToolCallError as exc:
        # The admin token always may call fleet_status; anything else is a bridge fault.
        raise BridgeUnavailable(f"fleet_status failed: {exc}") from None


def run(args: argparse.Namespace) -> int:
    config = load_admin_config(args.config)
    # The token file is read here: a bad one is a config error (exit 78), not a retry.
    bridge = BridgeClient.for_admin(config, call_timeout_s=config.watchdog.check_timeout_s)
    watchdog = Watchdog(config)
    return run_until_signal(lambda: watchdog.run(bridge), log)
