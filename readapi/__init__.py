"""The query routes of the HTTP API: records now and their events, lists, people, history, analytics, notifications."""
