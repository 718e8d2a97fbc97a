"""Host adapters on this very host: a real child process with its executable and libraries; identity."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from imaguard.host.identity import read_identity
from imaguard.host.processes import list_processes


def test_a_running_child_is_listed_with_its_exe_and_libc():
    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        procs = {p.pid: p for p in list_processes()}
        me = procs[child.pid]
        assert me.exe == os.fsencode(os.path.realpath(f"/proc/{child.pid}/exe"))
        assert me.name == "sleep"
        assert any(b"/libc.so" in m.path for m in me.mappings)
        assert me.exe in [m.path for m in me.mappings]  # the executable is mapped executable too
        assert abs(me.start_time - time.time()) < 60
        # Kernel threads have no executable.
        assert procs[2].exe is None
        assert procs[os.getpid()].exe == os.fsencode(os.path.realpath(sys.executable))
    finally:
        child.kill()
        child.wait()


def test_identity_names_this_boot():
    ident = read_identity()
    assert ident.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert ident.kernel_release == os.uname().release
    if Path("/etc/machine-id").exists():
        assert ident.machine_id == Path("/etc/machine-id").read_text().strip()
