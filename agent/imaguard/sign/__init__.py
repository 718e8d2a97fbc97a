"""Signing: per-file engine, parallel runner, and (later) enrollment plan/apply."""
