"""The bridge: `s2-bridge serve` (HTTP app, MCP tools, service, SQLite store, routing, tasks,
retention) and its offline companions `backup` and `restore`."""
