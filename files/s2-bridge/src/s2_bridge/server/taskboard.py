"""The fleet and its tasks: fleet status, assign (to a worker or to "any"), list, update,
reassign, and the watchdog's alerts."""

from __future__ import annotations

from s2_bridge.contract.errors import BridgeError, forbidden, invalid, not_found
from s2_bridge.contract.models import (
    OPEN_TASK_STATES,
    AlertKind,
    AlertRecorded,
    Conversation,
    FleetStatus,
    Task,
    TaskList,
    TaskState,
    WorkerHealth,
    WorkerTaskState,
    health_of,
    iso,
    worker_sort_key,
)
from s2_bridge.server import routing
from s2_bridge.server.caller import Caller
from s2_bridge.server.messaging import Messaging
from s2_bridge.server.redact import redact_text
from s2_bridge.server.service_core import check_edges, check_length

TITLE_MAX = 200
DETAIL_MAX = 10_000
NOTE_MAX = 2_000
WORKER_FIX = 'name a worker id ("3"), a role ("worker-3-tests") or "any" (the least-loaded healthy worker)'


class TaskBoard(Messaging):
    def fleet_status(self, caller: Caller) -> FleetStatus:
        if caller.kind == "worker":
            raise forbidden("fleet_status is for the lead, the admin and coordinators", "use check_partner_status")
        return FleetStatus(workers=self._fleet(caller), silent_after_s=self.silent_after_s, generated_at=self._now())

    def _now(self) -> str:
        return iso(self.clock()) or ""

    def _fleet(self, caller: Caller | None = None) -> list[WorkerHealth]:
        now = self.clock()
        rows = self.store.fleet(now)
        if caller is not None and caller.kind == "coordinator" and caller.conversation is not None:
            rows = [r for r in rows if r.conversation.conversation_id == caller.conversation.conversation_id]
        workers = []
        for row in rows:
            heartbeat = row.worker_presence.last_heartbeat
            age = None if heartbeat is None else max(0.0, now - heartbeat)
            health = health_of(age, self.silent_after_s)
            if row.expired and health == "healthy":
                # Its tokens are refused from expiry on: never live, and the watchdog moves its tasks.
                health = "silent"
            workers.append(
                WorkerHealth(
                    worker_id=row.conversation.worker_id,
                    worker_role=row.conversation.worker_role,
                    conversation_id=row.conversation.conversation_id,
                    status=row.worker_presence.status,
                    last_heartbeat_at=iso(heartbeat),
                    heartbeat_age_s=None if age is None else round(age, 3),
                    health=health,
                    open_tasks=row.open_tasks,
                )
            )
        return workers

    def _least_loaded(self, field: str, exclude: str | None = None) -> Conversation:
        """The healthy worker with the fewest open tasks (ties: the lowest worker id)."""
        healthy = [w for w in self._fleet() if w.health == "healthy" and w.worker_id != exclude]
        if not healthy:
            raise BridgeError(
                "no_healthy_worker",
                "no worker has sent a heartbeat recently",
                field=field,
                fix="name a worker instead of any, or start the workers' keepalive",
            )
        best = min(healthy, key=lambda w: (w.open_tasks, worker_sort_key(w.worker_id)))
        conversation = self.store.get_conversation(best.conversation_id)
        assert conversation is not None
        return conversation

    def _target_worker(self, name: str, field: str, exclude: str | None = None) -> Conversation:
        if name == routing.ANY:
            return self._least_loaded(field, exclude)
        return routing.find_worker(self.store, name, field, self.clock())

    def assign_task(self, caller: Caller, title: str, detail: str, worker_id: str | None) -> Task:
        if caller.kind == "worker":
            raise forbidden("workers cannot assign tasks", "ask the lead with send_to_partner")
        check_length("title", title, 1, TITLE_MAX)
        check_length("detail", detail, 0, DETAIL_MAX)
        if caller.kind == "coordinator":
            conversation = self._require_side(caller)
            if worker_id is not None and worker_id not in (conversation.worker_id, conversation.worker_role):
                raise forbidden(
                    f"this coordinator token reaches worker {conversation.worker_id!r} only",
                    "omit worker_id or use the lead's credentials",
                    field="worker_id",
                )
        elif worker_id is None:
            raise invalid("worker_id", "worker_id is required", WORKER_FIX)
        else:
            conversation = self._target_worker(worker_id, "worker_id")
        title, _ = redact_text(title)
        detail, _ = redact_text(detail)
        with self.store.atomic():
            task = self.store.create_task(
                worker_id=conversation.worker_id,
                conversation_id=conversation.conversation_id,
                title=title,
                detail=detail,
                created_by=caller.name,
                now=self.clock(),
            )
            self._audit(caller, "task.assign", f"task:{task.task_id}", worker_id=task.worker_id)
            body = f"Task #{task.task_id} assigned to you: {title}" + (f"\n\n{detail}" if detail else "")
            self.post_from(caller, conversation.conversation_id, "task_assignment", body)
        return task

    def list_tasks(self, caller: Caller, state: TaskState | None, worker_id: str | None) -> TaskList:
        if caller.conversation is not None:
            own = caller.conversation.worker_id
            if worker_id is not None and worker_id != own:
                raise forbidden(f"this token reaches worker {own!r} only", "omit worker_id", field="worker_id")
            worker_id = own
        states = (state,) if state else None
        found = self.store.list_tasks(worker_id=worker_id, conversation_id=None, states=states)
        return TaskList(tasks=found)

    def _require_task(self, task_id: int) -> Task:
        check_edges("task_id", task_id)
        task = self.store.get_task(task_id)
        if task is None:
            raise not_found("task_id", f"no task {task_id}")
        return task

    def update_task(self, caller: Caller, task_id: int, state: WorkerTaskState, note: str) -> Task:
        if caller.kind in ("coordinator", "lead"):
            raise forbidden("the assignee updates a task's state", "ask the worker, or reassign the task")
        task = self._require_task(task_id)
        if caller.conversation is not None and task.worker_id != caller.conversation.worker_id:
            raise forbidden(f"task {task_id} is not assigned to you", "list_tasks shows your tasks", field="task_id")
        check_length("note", note, 0, NOTE_MAX)
        note, _ = redact_text(note)
        with self.store.atomic():
            updated = self.store.update_task(task_id, state=state, note=note, now=self.clock())
            self._audit(caller, "task.update", f"task:{task_id}", state=state)
        return updated

    def reassign_task(self, caller: Caller, task_id: int, to_worker_id: str, reason: str) -> Task:
        if caller.kind not in ("admin", "lead"):
            raise forbidden("only the lead and the admin reassign tasks", "ask the lead with send_to_partner")
        task = self._require_task(task_id)
        if task.state not in OPEN_TASK_STATES:
            raise invalid("task_id", f"task {task_id} is {task.state}", "only open tasks can be reassigned")
        check_length("reason", reason, 0, NOTE_MAX)
        reason, _ = redact_text(reason)
        target = self._target_worker(to_worker_id, "to_worker_id", exclude=task.worker_id)
        if target.worker_id == task.worker_id:
            raise invalid("to_worker_id", f"task {task_id} is already {target.worker_id}'s", "name another worker")
        with self.store.atomic():
            moved = self.store.move_task(
                task_id,
                to_worker_id=target.worker_id,
                to_conversation_id=target.conversation_id,
                now=self.clock(),
            )
            self._audit(
                caller,
                "task.reassign",
                f"task:{task_id}",
                from_worker=task.worker_id,
                to_worker=target.worker_id,
                reason=reason,
            )
            body = (
                f"Task #{task_id} reassigned to you from worker {task.worker_id}: {moved.title}"
                + (f"\nReason: {reason}" if reason else "")
                + (f"\n\n{moved.detail}" if moved.detail else "")
            )
            self.post_from(caller, target.conversation_id, "task_assignment", body)
        return moved

    def record_alert(self, caller: Caller, worker_id: str, kind: AlertKind, detail: str) -> AlertRecorded:
        self._require_admin(caller)
        check_length("detail", detail, 0, NOTE_MAX)
        detail, _ = redact_text(detail)
        audit_id = self._audit(caller, f"watchdog.{kind}", f"worker:{worker_id}", detail=detail)
        return AlertRecorded(audit_id=audit_id)
