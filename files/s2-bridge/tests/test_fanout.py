"""One message, many parked readers (issue 14, item 2): the readers it wakes share one read and
one encoded answer, and answer a few per event-loop turn so other callers are served between
them. In process (real SQLite, real service) and against a real TLS bridge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import PKI, Bridge, create_conversation, heartbeat, raw_call
from inprocess import make_fleet
from s2_bridge.server.inbox import WakeTurns
from s2_bridge.server.tools import encoded_once

pytestmark = pytest.mark.anyio

WAITERS = 30


async def test_wake_turns_let_a_batch_through_per_loop_turn_in_order() -> None:
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:
        nonlocal turn
        turn += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    turns = WakeTurns(batch=4)
    passed: list[tuple[int, int]] = []

    async def reader(index: int) -> None:
        await turns.turn()
        passed.append((index, turn))

    tasks = [asyncio.create_task(reader(i)) for i in range(18)]
    tasks[6].cancel()  # a reader whose client went away takes no slot
    await asyncio.gather(*tasks, return_exceptions=True)
    assert [index for index, _ in passed] == [i for i in range(18) if i != 6]  # first in, first out
    per_turn: dict[int, int] = {}
    for _, at in passed:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert max(per_turn.values()) <= 4, per_turn
    assert len(per_turn) >= 5, per_turn  # 17 readers, 4 a turn


async def test_readers_woken_by_one_message_share_one_result_and_one_encoding(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, ("3",), parked_waits_per_caller=WAITERS)
    service, store = fleet.service, fleet.store
    worker, coordinator = fleet.workers["3"], fleet.coordinators["3"]
    reads = 0
    real_read = store.messages_for

    def counting_read(*args: object) -> object:
        nonlocal reads
        reads += 1
        return real_read(*args)  # type: ignore[arg-type]

    store.messages_for = counting_read  # type: ignore[method-assign]
    waits = [asyncio.create_task(service.wait_for_messages(worker, None, 10)) for _ in range(WAITERS)]
    await asyncio.sleep(0.1)
    reads_before = reads
    service.send_to_partner(coordinator, "x" * 45_000, "info", [])
    results = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert all(result is results[0] for result in results)  # one result object for all
    assert len(results[0].messages) == 1 and not results[0].timed_out
    assert reads - reads_before == 1  # one store read for thirty readers
    encoded = [encoded_once(result) for result in results]
    assert all(answer is encoded[0] for answer in encoded)
    assert json.loads(encoded[0].content[0].text)["messages"][0]["message"] == "x" * 45_000
    assert encoded[0].structured_content == results[0].model_dump(mode="json")
    store.close()


async def test_thirty_parked_waits_all_get_the_message_and_a_heartbeat_is_served(tmp_path: Path, pki: PKI) -> None:
    bridge = Bridge(workdir=tmp_path, tls=pki, extra_config=f"[limits]\nparked_waits_per_caller = {WAITERS}\n")
    bridge.start()
    try:
        created = await create_conversation(bridge, "3")
        body = "y" * 45_000
        waits = [
            asyncio.create_task(raw_call(bridge, created["worker_token"], "wait_for_messages", {"timeout_s": 20}))
            for _ in range(WAITERS)
        ]
        await asyncio.sleep(1.0)  # parked
        sent = await raw_call(bridge, created["coordinator_token"], "send_to_partner", {"message": body})
        assert "message_id" in sent, sent
        answers = await asyncio.wait_for(asyncio.gather(*waits), 20)
        assert all(answer == answers[0] for answer in answers)
        assert [m["message"] for m in answers[0]["messages"]] == [body]
        assert await heartbeat(bridge, created["worker_token"]) == 200
    finally:
        bridge.stop()
