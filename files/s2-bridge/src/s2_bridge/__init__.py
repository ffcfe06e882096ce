"""S2 fleet bridge runtime: MCP bridge server, keepalive, watchdog and helper commands."""

__version__ = "0.1.0"
