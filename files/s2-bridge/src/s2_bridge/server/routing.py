"""Who a message goes to: the `to` and `reply_to` rules of send_to_partner, in one place.

Pure decisions over the store's reads: which inbox each recipient's copy lands in, whether
the caller may reach it (star or mesh, lead-only broadcast, a coordinator's own worker), and
whether a message named by `reply_to` is one the caller can see. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2_bridge.contract.errors import BridgeError, forbidden, invalid, not_found
from s2_bridge.contract.models import Conversation, Message
from s2_bridge.server.caller import Caller
from s2_bridge.server.store import Store

LEAD = "lead"
ALL = "all"
ANY = "any"
TO_FIX = 'name a worker id ("3"), a role ("worker-3-tests"), "lead", or for the lead "all" or a list'


@dataclass(frozen=True)
class Recipient:
    """One copy of a message: to a worker (its conversation) or to the lead/coordinator side."""

    conversation: Conversation | None  # None: the lead's inbox (a worker's own conversation)

    @property
    def label(self) -> str:
        return LEAD if self.conversation is None else self.conversation.worker_id


def find_worker(store: Store, name: str, field: str, now: float) -> Conversation:
    """A live worker by id or by role name. One whose conversation expired (not revoked) is
    refused with worker_expired: its tokens are refused too, until it is rotated."""
    conversation = store.live_conversation_of_worker(name, now)
    if conversation is not None:
        return conversation
    unrevoked = store.list_conversations(include_revoked=False)
    for candidate in unrevoked:
        if candidate.worker_role == name:
            live = store.live_conversation_of_worker(candidate.worker_id, now)
            if live is not None:
                return live
    for worker_id in [name, *(c.worker_id for c in unrevoked if c.worker_role == name)]:
        expired = store.expired_conversation_of_worker(worker_id, now)
        if expired is not None:
            raise worker_expired(expired, field)
    raise not_found(field, f"no live worker with id or role {name!r}")


def worker_expired(conversation: Conversation, field: str) -> BridgeError:
    return BridgeError(
        "worker_expired",
        f"worker {conversation.worker_id!r} ({conversation.worker_role}) has expired credentials"
        f" (conversation {conversation.conversation_id} expired at {conversation.expires_at}): it cannot read"
        " messages or work on tasks",
        field=field,
        fix=f"rotate its credentials (s2-bridge admin rotate-conversation --conversation-id"
        f" {conversation.conversation_id}, or playbooks/rotate-credentials.yml), then try again",
    )


def can_see(caller: Caller, message: Message) -> bool:
    """Whether `message` is in the caller's inbox or was sent by the caller."""
    if caller.kind in ("lead", "admin"):
        return True
    conversation = caller.conversation
    if conversation is None:
        return False
    if caller.kind == "worker":
        own = conversation.worker_id
        return own in (message.to_worker, message.from_worker)
    # a coordinator: its conversation's traffic with the coordinator side
    return message.conversation_id == conversation.conversation_id and (
        message.to_worker is None or message.from_worker is None
    )


def reply_target(caller: Caller, original: Message) -> str:
    """Without `to`, a reply goes to the other party of the original message."""
    own_worker = caller.conversation.worker_id if caller.kind == "worker" and caller.conversation else None
    sent_by_caller = (
        original.from_worker == own_worker
        if own_worker is not None
        else original.from_side == "coordinator" and original.from_worker is None
    )
    other = original.to_worker if sent_by_caller else original.from_worker
    return LEAD if other is None else other


def resolve(
    store: Store,
    caller: Caller,
    to: str | list[str] | None,
    original: Message | None,
    messaging: str,
    now: float,
) -> list[Recipient]:
    """The recipients of one send, or a BridgeError naming `to` and the rule."""
    if to is None:
        to = _default_target(caller, original)
    if isinstance(to, list) or to == ALL:
        return _broadcast(store, caller, to, now)
    if caller.kind == "worker":
        return [_worker_target(store, caller, to, messaging, now)]
    if to == LEAD:
        raise invalid("to", "you are the lead side: a message to the lead needs a worker token", TO_FIX)
    target = find_worker(store, to, "to", now)
    if caller.kind == "coordinator" and caller.conversation and target.worker_id != caller.conversation.worker_id:
        raise forbidden(
            f"this coordinator token reaches worker {caller.conversation.worker_id!r} only",
            "omit to, or use the lead's credentials to reach other workers",
            field="to",
        )
    return [Recipient(target)]


def _default_target(caller: Caller, original: Message | None) -> str:
    if original is not None:
        return reply_target(caller, original)
    if caller.kind == "worker":
        return LEAD
    if caller.kind == "coordinator" and caller.conversation:
        return caller.conversation.worker_id
    raise invalid("to", "the lead must say who the message is for", TO_FIX)


def _broadcast(store: Store, caller: Caller, to: str | list[str], now: float) -> list[Recipient]:
    if caller.kind != "lead":
        raise forbidden(
            "only the lead can broadcast",
            "send to one recipient, or ask the lead to broadcast",
            field="to",
        )
    if to == ALL:  # every live worker: an expired one is left out
        targets = [
            live
            for c in store.list_conversations(include_revoked=False)
            if (live := store.live_conversation_of_worker(c.worker_id, now)) is not None
        ]
        if not targets:
            raise not_found("to", "the fleet has no live worker")
        return [Recipient(c) for c in targets]
    if not to:
        raise invalid("to", "the list of recipients is empty", TO_FIX)
    seen: dict[str, Recipient] = {}
    for index, name in enumerate(to):
        target = find_worker(store, name, f"to[{index}]", now)
        seen.setdefault(target.worker_id, Recipient(target))
    return list(seen.values())


def _worker_target(store: Store, caller: Caller, to: str, messaging: str, now: float) -> Recipient:
    assert caller.conversation is not None
    if to == LEAD:
        return Recipient(None)
    own = caller.conversation
    if to in (own.worker_id, own.worker_role):
        raise invalid("to", "that is you", 'omit to (or use "lead") to reach the lead')
    if messaging != "mesh":
        raise BridgeError(
            "forbidden",
            f"this fleet's messaging is {messaging!r}: workers message the lead only",
            field="to",
            fix="omit to and ask the lead to pass it on (or set s2_fleet_messaging: mesh for direct messages)",
        )
    return Recipient(find_worker(store, to, "to", now))
