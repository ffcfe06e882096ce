"""Exit codes shared by every command; systemd units rely on AUTH_REFUSED and CONFIG_ERROR."""

from typing import Final

OK: Final = 0
UNEXPECTED: Final = 1
USAGE: Final = 2
UNREACHABLE: Final = 69  # one-shot commands only; daemons back off instead
AUTH_REFUSED: Final = 77  # token expired, revoked or refused: restarting cannot help
CONFIG_ERROR: Final = 78  # bad config or credentials file: restarting cannot help
