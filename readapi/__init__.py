"""readapi."""
