"""The keepalive daemon against a real bridge: heartbeats, backoff while the bridge is down,
recovery without a restart, exit 77 on a refused token, credentials reread on rotation."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import Bridge, call, connect, create_conversation
from fixtures_client import Daemon, admin_call, as_coordinator, worker_health, write_worker_credentials
from s2_bridge.contract.credentials import load_credentials

pytestmark = pytest.mark.anyio

INTERVAL = 0.3


def start_keepalive(credentials: Path, interval: float = INTERVAL) -> Daemon:
    return Daemon(["--log-level", "DEBUG", "keepalive", "--credentials", str(credentials), "--interval", str(interval)])


async def test_heartbeats_back_off_while_bridge_is_down_and_recover_without_restart(
    bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(bridge, "1")
    creds = write_worker_credentials(bridge, created, tmp_path / "s2-worker-1-credentials.json")
    daemon = start_keepalive(creds)
    try:
        await daemon.wait_for(r"INFO .*heartbeating for worker 1 \(")
        health = await worker_health(bridge, "1")
        assert health["health"] == "healthy"
        assert health["heartbeat_age_s"] < 10

        bridge.stop()
        down_at, _ = await daemon.wait_for(r"WARNING .*unreachable")
        await daemon.wait_for(r"retry 4 in", timeout=60)
        down_for = time.monotonic() - down_at
        retries = daemon.matching(r"DEBUG .*heartbeat failed", since=down_at)
        # Without backoff the daemon would retry every 0.3 s; with it, far fewer times.
        assert len(retries) < max(6, down_for / INTERVAL / 2), daemon.text()
        delays = [float(line.rsplit(" in ", 1)[1].split()[0]) for _, line in retries]
        assert max(delays) > INTERVAL, delays
        assert all(d <= 60.0 for d in delays)
        # One line for the outage, not one per retry.
        assert len(daemon.matching(r"WARNING .*unreachable")) == 1

        bridge.start()
        await daemon.wait_for(r"INFO .*reachable again", timeout=90, since=down_at)
        assert daemon.running()
        health = await worker_health(bridge, "1")
        assert health["health"] == "healthy"
        assert health["heartbeat_age_s"] < 10
        assert len(daemon.matching(r"WARNING .*unreachable")) == 1
        assert created["worker_token"] not in daemon.text()
    finally:
        assert await daemon.terminate() == 0


async def test_unread_count_is_logged_only_when_it_changes_and_messages_stay_unread(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(plain_bridge, "2")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    daemon = start_keepalive(creds)
    try:
        await daemon.wait_for(r"INFO .*0 unread message")
        await as_coordinator(created, plain_bridge, "send_to_partner", message="first task", action_type="question")
        await daemon.wait_for(r"INFO .*1 unread message")
        started = time.monotonic()
        await daemon.wait_for(r"heartbeat ok, unread 1", since=started + 1.0)  # several more heartbeats
        assert len(daemon.matching(r"INFO .*unread message")) == 2
        # The keepalive never consumed it: the worker still finds it unread.
        inbox = await load_and_check(plain_bridge, creds)
        assert [m["message"] for m in inbox["messages"]] == ["first task"]
    finally:
        assert await daemon.terminate() == 0


async def load_and_check(bridge: Bridge, creds: Path) -> dict:
    token = load_credentials(str(creds)).token
    async with connect(bridge, token) as worker:
        return await call(worker, "check_messages")


async def test_revoked_conversation_ends_the_keepalive_with_exit_77(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "3")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    daemon = start_keepalive(creds)
    await daemon.wait_for(r"heartbeating for worker 3")
    await admin_call(plain_bridge, "revoke_conversation", conversation_id=created["conversation_id"])
    assert await daemon.wait_exit(timeout=30) == 77
    errors = daemon.matching(r"^ERROR ")
    assert len(errors) == 1, daemon.text()
    assert "refused" in errors[0][1]
    assert str(creds) in errors[0][1]
    assert created["worker_token"] not in daemon.text()


async def test_rotated_credentials_are_reread_without_a_restart(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "4")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    daemon = start_keepalive(creds)
    try:
        await daemon.wait_for(r"heartbeating for worker 4")
        rotated = await admin_call(plain_bridge, "rotate_conversation", conversation_id=created["conversation_id"])
        assert rotated["worker_token"] != created["worker_token"]
        write_worker_credentials(plain_bridge, rotated, creds)
        changed_at, _ = await daemon.wait_for(r"INFO .*credentials file changed")
        await daemon.wait_for(r"heartbeat ok", since=changed_at)
        before = await worker_health(plain_bridge, "4")
        await daemon.wait_for(r"heartbeat ok", since=time.monotonic() + 0.5)
        after = await worker_health(plain_bridge, "4")
        assert after["last_heartbeat_at"] >= before["last_heartbeat_at"]
        assert after["heartbeat_age_s"] < 10
        assert daemon.running()
        assert not daemon.matching(r"^ERROR ")
        for token in (created["worker_token"], rotated["worker_token"]):
            assert token not in daemon.text()
    finally:
        assert await daemon.terminate() == 0


async def test_a_bad_new_credentials_file_is_reported_and_the_old_one_kept(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(plain_bridge, "5")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    daemon = start_keepalive(creds)
    try:
        await daemon.wait_for(r"heartbeating for worker 5")
        creds.write_text('{"conversation_id": "conv_0123456789abcdef"}')  # truncated by a bad edit
        error_at, line = await daemon.wait_for(r"ERROR .*unusable")
        assert str(creds) in line
        assert "worker_id" in line  # the first missing field is named
        await daemon.wait_for(r"heartbeat ok", since=error_at + 1.0)
        assert daemon.running()
        assert len(daemon.matching(r"ERROR .*unusable")) == 1  # reported once, not every beat
    finally:
        assert await daemon.terminate() == 0


async def test_sigint_stops_cleanly(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "6")
    daemon = start_keepalive(write_worker_credentials(plain_bridge, created, tmp_path / "c.json"))
    await daemon.wait_for(r"heartbeating for worker 6")
    daemon.process.send_signal(signal.SIGINT)
    assert await daemon.wait_exit() == 0
    assert "Traceback" not in daemon.text()


async def test_keepalive_started_before_the_bridge_waits_for_it(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "7")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    plain_bridge.stop()
    daemon = start_keepalive(creds)
    try:
        down_at, _ = await daemon.wait_for(r"WARNING .*unreachable")
        await daemon.wait_for(r"retry 2 in", timeout=60)
        plain_bridge.start()
        await daemon.wait_for(r"INFO .*heartbeating for worker 7", timeout=90, since=down_at)
        assert (await worker_health(plain_bridge, "7"))["health"] == "healthy"
    finally:
        assert await daemon.terminate() == 0
