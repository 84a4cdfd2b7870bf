"""The command routes of the HTTP API: every POST and PATCH under /api/v1."""
