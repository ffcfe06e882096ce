"""One-shot commands (check-messages, status, admin): run one async job, map bridge failures
to the contract's exit codes, and say what went wrong in one line on stderr."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from s2_bridge.agent.client import AuthRefused, BridgeUnavailable, ToolCallError
from s2_bridge.contract import exitcodes


def run_command(name: str, main: Callable[[], Awaitable[int]]) -> int:
    """Exit code of `main()`; 69 when the bridge is unreachable, 77 when it refuses the token,
    1 when it refuses the request itself (the line carries the bridge's field and fix)."""
    try:
        return asyncio.run(main())
    except BridgeUnavailable as exc:
        problem = f"bridge unreachable: {exc}; fix: check that the bridge runs and bridge_url/ca_file are right"
        code = exitcodes.UNREACHABLE
    except AuthRefused as exc:
        problem = f"token refused: {exc}; fix: install current credentials (expired, rotated or revoked)"
        code = exitcodes.AUTH_REFUSED
    except ToolCallError as exc:
        problem = f"the bridge refused the request: {exc}"
        code = exitcodes.UNEXPECTED
    print(f"s2-bridge {name}: {problem}", file=sys.stderr)
    return code
