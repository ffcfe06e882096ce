"""The one loopback check: where plain HTTP is allowed (serve --insecure-http, and clients'
http:// bridge URLs), and the one bridge_url check of the files that name a bridge (credentials
files, admin.toml). Standard library only (and errors.py): the hook imports it on every prompt."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from s2_bridge.contract.errors import ConfigError

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


def check_bridge_url(path: str, url: str, ca_file: str | None, ca_path: str | None = None) -> None:
    """A bridge_url (and its ca_file) from the file `path` (the ca_file from `ca_path`, when another
    file set it): http(s) only, plain http:// to a loopback host only, https:// with an existing CA."""
    if not url.startswith(("https://", "http://")):
        raise ConfigError(path, "bridge_url", f"{url!r} is not an http(s) URL", "use https://HOST:PORT/mcp")
    refusal = plain_http_refusal(url)
    if refusal:
        raise ConfigError(path, "bridge_url", refusal, PLAIN_HTTP_FIX)
    if url.startswith("https://"):
        if not ca_file:
            raise ConfigError(path, "ca_file", "is missing for an https bridge_url", "set ca_file to the fleet CA file")
        if not Path(ca_file).is_file():
            raise ConfigError(
                ca_path or path, "ca_file", f"{ca_file} does not exist", "install the fleet CA there or fix the path"
            )
