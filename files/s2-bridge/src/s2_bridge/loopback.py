"""The one loopback check: where plain HTTP is allowed (serve --insecure-http, and clients'
http:// bridge URLs). Standard library only: the hook imports it on every prompt."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")
PLAIN_HTTP_FIX = "use https://HOST:PORT/mcp with the fleet CA (plain http:// only to 127.0.0.1, ::1 or localhost)"


def is_loopback_host(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 (also as [::1] or ::ffff:127.x) and localhost."""
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def plain_http_refusal(url: str) -> str | None:
    """Why an http:// bridge URL is refused (its host is not loopback), or None when it is fine
    (https://, or http:// to a loopback host)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return None
    if is_loopback_host(parts.hostname):
        return None
    return f"plain http:// to {parts.hostname or '(no host)'} would send the token in clear text"
