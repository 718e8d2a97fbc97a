"""Processes as the report sees them, in situations only root can set up: another mount namespace."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imaguard.host.processes import list_processes

pytestmark = pytest.mark.root


def test_a_process_whose_path_names_another_file_in_its_mount_namespace_is_not_the_file_here(tmp_path):
    """Regression (review repro_ns.py): in a private mount namespace another file is bind-mounted
    over /usr/bin/sleep and run; its exe reads /usr/bin/sleep, which here is the package's file."""
    evil = tmp_path / "evil-sleep"
    shutil.copy("/usr/bin/sleep", evil)
    with evil.open("ab") as f:
        f.write(b"\0not the package's sleep\0")
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount --bind {evil} /usr/bin/sleep && exec /usr/bin/sleep 30"])  # fmt: skip
    try:
        for _ in range(100):
            if Path(f"/proc/{child.pid}/exe").readlink() == Path("/usr/bin/sleep"):
                break
            time.sleep(0.05)
        me = next(p for p in list_processes() if p.pid == child.pid)
        assert (me.exe, me.exe_deleted, me.exe_same_file) == (b"/usr/bin/sleep", False, False)
        (mapped,) = [m for m in me.mappings if m.path == b"/usr/bin/sleep"]
        assert mapped.same_file is False  # map_files links to the running file, not the path's
        libc = next(m for m in me.mappings if b"/libc.so" in m.path)
        assert libc.same_file is True  # the namespace alone does not decide: same inode, same file
        # The one running here from the same path is the file at it.
        here = subprocess.Popen(["/usr/bin/sleep", "30"])
        try:
            time.sleep(0.2)
            assert next(p for p in list_processes() if p.pid == here.pid).exe_same_file is True
        finally:
            here.kill()
            here.wait()
    finally:
        child.kill()
        child.wait()
