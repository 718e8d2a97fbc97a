"""Exports of the report's data for other tools (Keylime runtime policy, TCG CEL JSON)."""
