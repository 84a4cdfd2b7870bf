"""Benchmarks of the CRM core (not part of the installed package; run from the repo root)."""
