"""Read models built from the event log (read tables, analytics, publishers)."""
