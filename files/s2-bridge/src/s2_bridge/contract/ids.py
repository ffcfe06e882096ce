"""The worker id rule, in one place.

A worker id names a worker in the bridge (create_conversation's `worker_id`), in its
credentials file (`worker_id`, and the file name `s2-worker-ID-credentials.json`) and in the
inventory (`s2_worker_id`). The bridge, the credentials check and the roles all apply this one
rule: the collection's roles read it as `s2_fleet_worker_id_pattern`
(roles/_common/vars/main.yml), and a unit test (tests/test_ids.py) fails when that
copy and `WORKER_ID_PATTERN` differ.
"""

from __future__ import annotations

import re
from typing import Final

WORKER_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
WORKER_ID_RE: Final = re.compile(WORKER_ID_PATTERN)
# The rule in words (the roles' s2_fleet_worker_id_rule), and the fix of every refusal.
WORKER_ID_RULE: Final = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
WORKER_ID_FIX: Final = f"use {WORKER_ID_RULE}"


def is_worker_id(value: str) -> bool:
    # fullmatch: `$` alone would also accept one trailing newline ("3\n").
    return WORKER_ID_RE.fullmatch(value) is not None
