"""Timelines, time travel, audit: reading history straight from the event store."""
