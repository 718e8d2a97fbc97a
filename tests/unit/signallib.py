"""Run a CLI in a child interpreter that sends itself a signal right after its Nth fsync: the file
is written and synced, its rename (or the rest of its set) is not done yet. The signal reaches the
real process with its real dispositions."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import imaguard
import imaguard_keyring

_WRAPPER = textwrap.dedent("""\
    import os, signal, sys
    nth, signame = int(sys.argv[1]), sys.argv[2]
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        real_fsync(fd)
        calls.append(fd)
        if len(calls) == nth:
            os.kill(os.getpid(), getattr(signal, signame))

    os.fsync = fsync
    if os.environ.get("FAKE_PACKAGE_SOURCE"):  # bundle without a package database: one package, no files
        import types
        from imaguard.packages.model import InstalledPackage
        from imaguard_keyring import cli
        source = types.SimpleNamespace(package=lambda name: InstalledPackage(name, "1.0", "amd64"),
                                       files=lambda pkg: iter(()))
        cli.open_source = lambda *a, **k: source
    if os.environ.get("SIGNAL_TOOL") == "imaguard":
        from imaguard.cli.main import main
    else:
        from imaguard_keyring.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT's default dumps core


def run_interrupted(tmp_path: Path, nth: int, signame: str, argv: list[str], *, fake_source: bool = False,
                    tool: str = "imaguard-keyring") -> subprocess.CompletedProcess[str]:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(_WRAPPER)
    paths = [str(Path(imaguard.__file__).parents[1]), str(Path(imaguard_keyring.__file__).parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1"}
    if fake_source:
        env["FAKE_PACKAGE_SOURCE"] = "1"
    if tool == "imaguard":
        env["SIGNAL_TOOL"] = "imaguard"
    return subprocess.run([sys.executable, str(wrapper), str(nth), signame, *argv], capture_output=True,
                          text=True, env=env, cwd=tmp_path, preexec_fn=_no_core, timeout=60, check=False)
