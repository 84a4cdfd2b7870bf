"""The event store: the PostgreSQL recorder (group commit, idempotency, reservations, hash chain) and the admission rules it shares with the in-memory one."""
