"""``python -m imaguard``: same as the ``imaguard`` console script."""

from imaguard.cli.main import entry

entry()
