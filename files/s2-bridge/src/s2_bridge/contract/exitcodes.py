"""Exit codes shared by every command; systemd units and `s2-bridge supervise` rely on NO_RESTART."""

from typing import Final

OK: Final = 0
UNEXPECTED: Final = 1
USAGE: Final = 2
UNREACHABLE: Final = 69  # one-shot commands only; daemons back off instead
AUTH_REFUSED: Final = 77  # token expired, revoked or refused: restarting cannot help
CONFIG_ERROR: Final = 78  # bad config or credentials file: restarting cannot help

# Restarting cannot help: s2-keepalive.service's RestartPreventExitStatus=77 78 and the codes
# after which `s2-bridge supervise` stops (exiting with the same code).
NO_RESTART: Final = frozenset({AUTH_REFUSED, CONFIG_ERROR})
