"""`s2-bridge keepalive`: one worker's heartbeat daemon.

Heartbeats every --interval (+-10% jitter) over the lean /v1/heartbeat route. While the
bridge is unreachable it backs off (full jitter, capped) and logs only the transitions
(down, up), never every retry. It never reads messages: it only reports the unread count,
and only when that count changes. A refused token ends it with exit 77; a changed
credentials file is picked up without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

from s2_bridge.agent.client import AuthRefused, BridgeClient, BridgeUnavailable
from s2_bridge.agent.daemon import run_until_signal
from s2_bridge.contract import exitcodes
from s2_bridge.contract.backoff import Backoff, jittered
from s2_bridge.contract.credentials import CredentialsWatcher

log = logging.getLogger("s2_bridge.keepalive")

BACKOFF_CAP_S = 60.0
INTERVAL_JITTER = 0.1


class Keepalive:
    """The heartbeat loop and its little state machine: starting -> up <-> down."""

    def __init__(
        self,
        watcher: CredentialsWatcher,
        interval_s: float,
        *,
        backoff_cap_s: float = BACKOFF_CAP_S,
        rng: random.Random | None = None,
    ) -> None:
        self.watcher = watcher
        self.interval_s = interval_s
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        # Retry first at about the normal cadence, then slower; never slower than the cap.
        self.backoff = Backoff(base=interval_s, cap=max(backoff_cap_s, interval_s), rng=self.rng)
        self.state = "starting"
        self.ever_up = False
        self.down_since = 0.0
        self.last_unread: int | None = None
        self.refused_once = False

    async def run(self) -> int:
        while True:
            async with BridgeClient.for_credentials(self.watcher.current) as bridge:
                exit_code = await self._beat(bridge)
            if exit_code is not None:
                return exit_code
            # Otherwise the credentials changed: reconnect with the new token and CA.

    async def _beat(self, bridge: BridgeClient) -> int | None:
        """Heartbeat until the credentials change (None) or the daemon must exit (its code)."""
        while True:
            if self._reload_if_changed():
                return None
            refusal: str | None = None
            try:
                result = await bridge.heartbeat()
            except BridgeUnavailable as exc:
                delay = self._on_down(bridge, str(exc))
            except AuthRefused as exc:
                refusal = str(exc)
                delay = self.interval_s
            else:
                delay = self._on_up(bridge, result)
            if refusal is not None:
                if self._reload_if_changed():
                    return None
                if self.refused_once:
                    log.error("%s", self._refusal_line(refusal))
                    return exitcodes.AUTH_REFUSED
                # A rotation refuses the old token a moment before the new file lands:
                # look once more, one interval later, before giving up for good.
                self.refused_once = True
                log.warning("token refused (%s); checking once more in %.1f s", refusal, delay)
            await asyncio.sleep(delay)

    def _reload_if_changed(self) -> bool:
        if not self.watcher.refresh(log):
            return False
        self.refused_once = False
        return True

    def _on_down(self, bridge: BridgeClient, reason: str) -> float:
        if self.state != "down":
            log.warning(
                "bridge %s unreachable (%s); retrying with backoff up to %.0f s",
                bridge.bridge_url,
                reason,
                self.backoff.cap,
            )
            self.state = "down"
            self.down_since = time.monotonic()
        delay = self.backoff.next_delay()
        log.debug("heartbeat failed (%s); retry %d in %.2f s", reason, self.backoff.attempt, delay)
        return delay

    def _on_up(self, bridge: BridgeClient, result: dict[str, Any]) -> float:
        creds = self.watcher.current
        if self.state == "down":
            log.info(
                "bridge reachable again after %d failed attempts (%.0f s)",
                self.backoff.attempt,
                time.monotonic() - self.down_since,
            )
        if not self.ever_up:
            self.ever_up = True
            log.info(
                "heartbeating for worker %s (%s) to %s every %g s",
                creds.worker_id,
                creds.worker_role,
                bridge.bridge_url,
                self.interval_s,
            )
        self.state = "up"
        self.refused_once = False
        self.backoff.reset()
        unread = result.get("unread")
        log.debug("heartbeat ok, unread %s", unread)
        if unread != self.last_unread:
            log.info("%s unread message(s) for worker %s", unread, creds.worker_id)
            self.last_unread = unread if isinstance(unread, int) else None
        return jittered(self.interval_s, INTERVAL_JITTER, self.rng)

    def _refusal_line(self, reason: str) -> str:
        creds = self.watcher.current
        if creds.expired(datetime.now(UTC)):
            why = f"its credentials expired at {creds.expires_at.isoformat()}"
        else:
            why = "the conversation was revoked or its tokens rotated"
        return (
            f"the bridge refused worker {creds.worker_id}'s token ({reason}): {why}; "
            f"install current credentials in {creds.path}; exiting {exitcodes.AUTH_REFUSED}"
        )


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        log.error("--interval must be greater than 0, got %s; pass e.g. --interval 15", args.interval)
        return exitcodes.USAGE
    watcher = CredentialsWatcher(args.credentials)  # a bad first file: ConfigError, exit 78
    return run_until_signal(Keepalive(watcher, args.interval).run, log)
