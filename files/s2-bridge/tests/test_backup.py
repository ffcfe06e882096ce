"""`s2-bridge backup` and `restore` against the real TLS bridge: a backup taken in the middle of a
burst from four concurrent senders holds every message acknowledged before it began, exactly
once, and a second bridge serves them from the restored file; the refusals name the file and
the fix."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import PKI, Bridge, call, connect, create_conversation, issue_lead, serve_once
from fixtures_client import run_cli
from s2_bridge.contract.tokens import TOKEN_RE
from s2_bridge.server.store.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

SENDERS = 4
AFTER_BACKUP = 15  # each sender goes on for this many sends once the backup has returned
MAX_PER_SENDER = 3000  # a bound, should the backup never return
UNLIMITED = "[limits]\ncalls_per_s = 10000\ncalls_burst = 10000\n"


@dataclass(frozen=True)
class Sent:
    message_id: int
    text: str
    started: float  # time.monotonic() when the send began
    returned: float  # ... and when it returned success
    returned_at: float  # the same instant, wall clock (time.time(), to compare with snapshot_at)


def integrity(path: Path) -> list[str]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()


def message_count(path: Path) -> int:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def one_json_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert not TOKEN_RE.search(done.stdout + done.stderr)
    return json.loads(lines[0])


def refused(done: subprocess.CompletedProcess[str], code: int, *texts: str) -> str:
    """One line on stderr naming what must be there, no traceback, nothing on stdout."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    line = done.stderr.strip()
    assert "Traceback" not in line and len(line.splitlines()) == 1, line
    for text in texts:
        assert text in line, (text, line)
    return line


async def read_all(bridge: Bridge, token: str) -> list[dict[str, Any]]:
    """Every message this token's inbox holds, oldest first (after_id paging; nothing acked)."""
    found: list[dict[str, Any]] = []
    after = 0
    async with connect(bridge, token) as client:
        while True:
            page = await call(client, "wait_for_messages", after_id=after, timeout_s=0)
            assert "error" not in page, page
            if not page["messages"]:
                return found
            found += page["messages"]
            after = page["messages"][-1]["id"]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, in milliseconds; nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def test_backup_mid_burst_restores_every_acknowledged_message_once(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "first").mkdir()
    first = Bridge(workdir=tmp_path / "first", tls=pki, extra_config=UNLIMITED)
    first.start()
    second = Bridge(workdir=tmp_path / "second", tls=pki)
    try:
        lead = await issue_lead(first)
        workers = [await create_conversation(first, str(n)) for n in range(1, SENDERS + 1)]
        backups = tmp_path / "backups"
        backups.mkdir(mode=0o700)
        backup_file = backups / "bridge-mid-burst.db"
        sent: list[Sent] = []
        window: dict[str, float] = {}
        outcome: dict[str, subprocess.CompletedProcess[str]] = {}

        async def sender(created: dict[str, Any]) -> None:
            async with connect(first, created["worker_token"]) as client:
                extra = AFTER_BACKUP
                for n in range(MAX_PER_SENDER):
                    text = f"burst w{created['worker_id']} #{n}"
                    started = time.monotonic()
                    result = await call(client, "send_to_partner", message=text)
                    assert "error" not in result, result
                    sent.append(Sent(result["message_id"], text, started, time.monotonic(), time.time()))
                    if "end" in window:
                        extra -= 1
                        if extra <= 0:
                            return

        async def take_backup() -> None:
            while len(sent) < 60:  # the burst is under way
                await anyio.sleep(0.005)
            window["start"] = time.monotonic()
            args = ("backup", "--config", str(first.config_path), "--output", str(backup_file))
            outcome["backup"] = await anyio.to_thread.run_sync(lambda: run_cli(*args))
            window["end"] = time.monotonic()

        async with anyio.create_task_group() as group:
            for created in workers:
                group.start_soon(sender, created)
            group.start_soon(take_backup)

        made = one_json_line(outcome["backup"])
        # acknowledged before the backup command started, and before its snapshot began (a superset)
        before = {s.message_id: s for s in sent if s.returned < window["start"]}
        snapshot_at = datetime.fromisoformat(made["snapshot_at"]).timestamp()
        before_snapshot = {s.message_id: s for s in sent if s.returned_at < snapshot_at}
        assert set(before) <= set(before_snapshot)
        by_id = {s.message_id: s for s in sent}
        assert len(by_id) == len(sent)  # every send got its own id
        # the burst went on while the backup ran: sends returned after it was done
        assert sum(s.started > window["end"] for s in sent) >= SENDERS * (AFTER_BACKUP - 1)
        assert made["path"] == str(backup_file)
        assert made["bytes"] == backup_file.stat().st_size > 0
        assert made["schema_version"] == SCHEMA_VERSION
        assert made["integrity_check"] == "ok"
        assert len(before_snapshot) <= made["messages"] <= len(sent)
        assert made["newest_message_id"] >= max(before_snapshot)
        assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600
        assert sorted(p.name for p in backups.iterdir()) == [backup_file.name]  # no temporary file left
        assert integrity(backup_file) == ["ok"]

        # A second `serve` on the same database, and a restore into it, are refused while the
        # first bridge holds the lock; neither touches the database.
        lock = Path(f"{first.db_path}.lock")
        other = tmp_path / "other-port.toml"
        other.write_text(first.config_path.read_text().replace(f"port = {first.port}", f"port = {first.port + 1}"))
        serve = serve_once(other)
        assert serve.returncode == 1, serve.stderr
        assert str(lock) in serve.stderr and "systemctl stop s2-bridge.service" in serve.stderr
        line = refused(
            run_cli("restore", "--config", str(first.config_path), "--from", str(backup_file)),
            1,
            str(first.db_path),
            str(lock),
            "fix: stop the bridge first (systemctl stop s2-bridge.service)",
        )
        assert "restore" in line
        assert not list(first.db_path.parent.glob("*before-restore*"))

        # Restore into a fresh data directory and serve it with a second bridge.
        second.workdir.mkdir()
        second.write_config()
        restored = one_json_line(run_cli("restore", "--config", str(second.config_path), "--from", str(backup_file)))
        assert restored["restored"] == str(second.db_path) and restored["kept"] == []
        assert (restored["messages"], restored["newest_message_id"]) == (made["messages"], made["newest_message_id"])
        assert stat.S_IMODE(second.db_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{second.db_path}.lock").stat().st_mode) == 0o600
        second.start()
        served = await read_all(second, lead["lead_token"])  # the lead's inbox: every worker message
        ids = Counter(m["id"] for m in served)
        assert all(ids[i] == 1 for i in before_snapshot), [i for i in before_snapshot if ids[i] != 1]
        assert max(ids.values()) == 1 and len(served) == made["messages"]
        assert set(ids) <= set(by_id)  # nothing that was not sent
        assert all(m["message"] == by_id[m["id"]].text for m in served)
        assert integrity(second.db_path) == ["ok"]

        # Restore over a database: the bridge stopped, the old one is kept, never replayed.
        first.stop()
        over = one_json_line(run_cli("restore", "--config", str(first.config_path), "--from", str(backup_file)))
        kept = Path(over["kept"][0])
        assert kept.name.startswith("bridge.db.before-restore-") and kept.parent == first.db_path.parent
        assert message_count(kept) == len(sent)  # every send, the ones after the backup too
        assert message_count(first.db_path) == made["messages"]
        assert not Path(f"{first.db_path}-wal").exists() and not Path(f"{first.db_path}-shm").exists()
        assert integrity(first.db_path) == ["ok"] and integrity(kept) == ["ok"]

        during = [s.returned - s.started for s in sent if window["start"] <= s.started <= window["end"]]
        outside = [s.returned - s.started for s in sent if s.started > window["end"] or s.returned < window["start"]]
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(
            f"\nbackup: {made['messages']} of {len(sent)} messages ({len(before)} acknowledged before the command "
            f"started, {len(before_snapshot)} before its snapshot), {made['bytes']} bytes, {made['seconds']} s "
            f"({made['copy_seconds']} s copying); sends during it p50 {percentile(during, 0.5):.1f} ms "
            f"p99 {percentile(during, 0.99):.1f} ms (n={len(during)}), outside it p50 "
            f"{percentile(outside, 0.5):.1f} ms p99 {percentile(outside, 0.99):.1f} ms "
            f"(n={len(outside)}); load average {load}"
        )
    finally:
        second.stop()
        first.stop()


async def test_restore_refuses_damaged_and_newer_files_and_backup_never_overwrites(
    bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(bridge, "3")
    async with connect(bridge, created["coordinator_token"]) as coordinator:
        for n in range(30):
            assert "error" not in await call(coordinator, "send_to_partner", message=f"m{n} " + "x" * 2000)
    out = tmp_path / "out.db"
    backup = ("backup", "--config", str(bridge.config_path), "--output", str(out))
    first = one_json_line(run_cli(*backup))
    assert first["messages"] == 30
    before = out.read_bytes()
    refused(run_cli(*backup), 1, str(out), "already exists", "--force")
    assert out.read_bytes() == before
    assert one_json_line(run_cli(*backup, "--force"))["messages"] == 30
    refused(run_cli(*backup[:-1], str(tmp_path / "no-such-dir" / "b.db")), 1, "no-such-dir", "mkdir")

    # A data directory holding a database the refusals must leave alone.
    target = Bridge(workdir=tmp_path / "target", tls=None)
    target.workdir.mkdir()
    target.write_config()
    target.db_path.parent.mkdir(mode=0o700)
    shutil.copyfile(out, target.db_path)
    live = target.db_path.read_bytes()

    def restore(source: Path) -> subprocess.CompletedProcess[str]:
        return run_cli("restore", "--config", str(target.config_path), "--from", str(source))

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(before[: len(before) // 2])
    refused(restore(truncated), 78, str(truncated), "fix: it is damaged", "restore another backup")

    newer = tmp_path / "newer.db"
    shutil.copyfile(out, newer)
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    refused(
        restore(newer),
        78,
        str(newer),
        "schema_version",
        f"is {SCHEMA_VERSION + 1}, newer than this runtime's {SCHEMA_VERSION}",
        "fix: install the s2-bridge release that wrote it",
    )
    refused(restore(tmp_path / "missing.db"), 78, str(tmp_path / "missing.db"), "no such file")

    assert target.db_path.read_bytes() == live
    assert sorted(p.name for p in target.db_path.parent.iterdir()) == ["bridge.db", "bridge.db.lock"]
