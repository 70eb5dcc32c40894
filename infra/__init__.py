"""Infrastructure every app may import and that imports no app: errors and their HTTP shape,
HTTP helpers (client address, trusted proxies), Redis clients and pipelining, per-event-loop
state, database helpers, the failover cache, per-process snapshots, logging, pagination,
OpenAPI helpers and management-command helpers. The layers are checked by import-linter
(`make lint`, contracts in pyproject.toml); docs/architecture.md draws them."""
