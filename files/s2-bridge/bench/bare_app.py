#!/usr/bin/env python3
"""The "bare" reference endpoint for bench_bridge.py: a raw ASGI app on the same HTTP stack as the
bridge (uvicorn with uvloop + httptools), with no framework, no authentication and no MCP, doing
the same kind of SQLite write as a heartbeat: one UPSERT into a presence table of a WAL file
(synchronous=NORMAL).

`POST /` with header `x-worker: <n>` upserts the row of worker n and answers `{"ok": true}`.
`GET /healthz` answers `{"ok": true}` without touching the database.

Run: python bare_app.py --port PORT --db FILE [--cert-file F --key-file F]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import uvicorn
from s2_bridge.server.store.sqlite_schema import PRESENCE_TABLE

UPSERT = (
    "INSERT INTO presence(conversation_id, side, last_heartbeat) VALUES (?, ?, ?)"
    " ON CONFLICT(conversation_id, side) DO UPDATE SET last_heartbeat=excluded.last_heartbeat"
)
OK_BODY = b'{"ok": true}'
OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(OK_BODY)).encode())]


class BareApp:
    def __init__(self, db_path: str) -> None:
        if not Path(db_path).exists():
            os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(PRESENCE_TABLE)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.db.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # read (and drop) the request body
            message = await receive()
            more = bool(message.get("more_body"))
        if scope["method"] == "POST":
            worker = b""
            for name, value in scope["headers"]:
                if name == b"x-worker":
                    worker = value
                    break
            self.db.execute(UPSERT, ("w" + worker.decode("latin-1"), "worker", time.time()))
        await send({"type": "http.response.start", "status": 200, "headers": OK_HEADERS})
        await send({"type": "http.response.body", "body": OK_BODY})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    args = parser.parse_args()
    if args.host != "127.0.0.1":
        parser.error("the bare app listens on 127.0.0.1 only")
    tls: dict[str, Any] = {}
    if args.cert_file:
        tls = {"ssl_certfile": args.cert_file, "ssl_keyfile": args.key_file}
    # The same settings as s2_bridge.server.serve.uvicorn_config; loop/http "auto" picks uvloop and
    # httptools there, so name them here to be sure both run on the same stack.
    uvicorn.run(
        BareApp(args.db),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        backlog=4096,
        **tls,
    )


if __name__ == "__main__":
    main()
