"""Kernel IMA formats (pure) and interfaces (I/O)."""
