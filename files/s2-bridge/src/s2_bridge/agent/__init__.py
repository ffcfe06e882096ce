"""What runs beside an agent or for the admin: the MCP client, `mcp-proxy`, `hook`, `keepalive`,
`supervise`, `watchdog`, `status`, `admin`, `check-messages`, `codex-trust-hooks`. Imports no
`s2_bridge.server` module."""
