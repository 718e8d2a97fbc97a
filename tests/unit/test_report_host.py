"""Host adapters on this very host: a real child process with its executable and libraries; identity."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imaguard.host.identity import read_identity
from imaguard.host.processes import list_processes


def test_a_running_child_is_listed_with_its_exe_and_libc():
    child = subprocess.Popen(["sleep", "30"])
    try:
        # Popen returns once the child has exec'd, but the dynamic loader maps libc after that:
        # wait for it instead of sleeping a fixed time (0.2 s was not enough on a loaded machine).
        deadline = time.monotonic() + 30
        while b"/libc.so" not in Path(f"/proc/{child.pid}/maps").read_bytes():
            assert time.monotonic() < deadline, "sleep did not map libc within 30 s"
            time.sleep(0.01)
        procs = {p.pid: p for p in list_processes()}
        me = procs[child.pid]
        assert me.exe == os.fsencode(os.path.realpath(f"/proc/{child.pid}/exe"))
        assert me.name == "sleep"
        assert any(b"/libc.so" in m.path for m in me.mappings)
        assert me.exe in [m.path for m in me.mappings]  # the executable is mapped executable too
        # The running files are the files at their paths here (device and inode compared).
        assert me.exe_same_file is True
        assert all(m.same_file for m in me.mappings)
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


# The child maps one file executable, then thousands of long-path read-only mappings after it
# (mmap places them lower, so maps lists the executable one last): about 23 MiB of maps text.
_FILLER = """
import mmap, os, sys, time
base = sys.argv[1]
with open(base + "/code.bin", "wb") as f:
    f.write(b"\\0" * 4096)
code = open(base + "/code.bin", "rb")
exe_map = mmap.mmap(code.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)
deep = base + "/" + "/".join(["d" * 250] * 15)
os.makedirs(deep)
fd = os.open(deep + "/f", os.O_RDWR | os.O_CREAT)
os.write(fd, b"\\0" * 4096)
keep = [mmap.mmap(fd, 4096, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE) for _ in range(6000)]
print("ready", flush=True)
time.sleep(60)
"""


def test_an_executable_mapping_after_a_huge_maps_prefix_is_found(tmp_path):
    """Regression: /proc/PID/maps was read up to 16 MiB and silently cut."""
    child = subprocess.Popen([sys.executable, "-c", _FILLER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        me = next(p for p in list_processes() if p.pid == child.pid)
        assert me.error == ""
        assert os.fsencode(tmp_path / "code.bin") in [m.path for m in me.mappings]
    finally:
        child.kill()
        child.wait()


def test_an_exe_replaced_since_it_started_is_marked_deleted_not_the_file_at_its_path(tmp_path):
    """Regression (review repro_del.py): the replaced exe was matched to the log by path alone."""
    tool = tmp_path / "tool"
    shutil.copy("/usr/bin/sleep", tool)
    child = subprocess.Popen([str(tool), "30"])
    try:
        time.sleep(0.2)
        other = tmp_path / "tool.new"
        shutil.copy("/usr/bin/sleep", other)
        other.replace(tool)  # another file at the path now, as a package upgrade does
        me = next(p for p in list_processes() if p.pid == child.pid)
        assert (me.exe, me.exe_deleted, me.exe_same_file) == (os.fsencode(tool), True, None)
        (mapped,) = [m for m in me.mappings if m.path == os.fsencode(tool)]
        assert (mapped.deleted, mapped.same_file) == (True, None)
    finally:
        child.kill()
        child.wait()


_AS_NOBODY = """
from imaguard.host.processes import list_processes
print(" ".join(f"{p.pid}:{p.exe is None}:{p.error}" for p in list_processes()))
"""


def test_unreadable_executables_are_listed_with_their_error_and_kernel_threads_are_not():
    """A reporter that may not read other users' /proc/PID/exe gets access-denied for them; kernel
    threads (PF_KTHREAD) are told apart by their stat flags and left out, as with root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the listing as nobody")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                          _AS_NOBODY], capture_output=True, text=True, check=True, cwd="/").stdout  # fmt: skip
    seen = dict(item.split(":", 1) for item in out.split())
    assert seen["1"] == "True:access-denied"
    assert "2" not in seen  # kthreadd


_FILELESS = """
import mmap, os, sys
code = os.memfd_create("jit")
os.write(code, b"\\xc3" * 4096)
jit = mmap.mmap(code, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)
fd = os.memfd_create("payload")
with open(sys.argv[1], "rb") as f:
    os.write(fd, f.read())
os.execve(fd, ["payload", "30"], {})
"""


def test_a_memfd_executable_is_listed_under_its_memfd_name():
    """Fileless execution (fexecve of a memfd) shows /memfd:NAME (deleted); the report calls it memfd."""
    child = subprocess.Popen([sys.executable, "-c", _FILELESS, "/usr/bin/sleep"])
    try:
        deadline = time.monotonic() + 30  # python's start-up alone can take seconds on a loaded machine
        while not Path(f"/proc/{child.pid}/exe").readlink().name.startswith("memfd:"):
            assert time.monotonic() < deadline, "the child did not exec its memfd within 30 s"
            time.sleep(0.05)
        me = next(p for p in list_processes() if p.pid == child.pid)
        assert (me.exe, me.exe_deleted) == (b"/memfd:payload", True)
        assert b"/memfd:payload" in [m.path for m in me.mappings]
    finally:
        child.kill()
        child.wait()
