"""Sinks of the streaming job: Postgres (staged, set-based merge) and Elasticsearch (versioned bulk)."""
