"""Settings for the whole suite.

Hypothesis runs derandomized (the same examples on every run, so CI cannot pass today and fail
tomorrow on an input nobody chose) and without its 200 ms per-example deadline (a loaded or slow
CI machine turned a slow example into a DeadlineExceeded/Flaky failure). Explore new inputs
locally with ``HYPOTHESIS_PROFILE=explore``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
