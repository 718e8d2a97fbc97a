"""``python -m imaguard.cli``: same as the ``imaguard`` console script."""

from imaguard.cli.main import entry

entry()
