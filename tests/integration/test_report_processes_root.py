"""Processes as the report sees them, in situations only root can set up: another mount namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
        # Wait for the exec *and* for the dynamic loader to map libc (asserted on below): a fixed
        # number of polls of the exe alone could list the child before libc was mapped.
        deadline = time.monotonic() + 30
        while not (Path(f"/proc/{child.pid}/exe").readlink() == Path("/usr/bin/sleep")
                   and b"/libc.so" in Path(f"/proc/{child.pid}/maps").read_bytes()):  # fmt: skip
            assert time.monotonic() < deadline, "the namespaced sleep did not start within 30 s"
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


def test_running_digests_hash_the_running_file_and_nothing_else(tmp_path):
    """A path logged with several contents is traced by the running file's digest; the host side
    hashes the file at the path only while it is still the running inode."""
    import hashlib  # noqa: PLC0415

    from imaguard.host.processes import RunningDigests  # noqa: PLC0415
    from imaguard.ima.measurements import iter_binary  # noqa: PLC0415
    from imaguard.ima.replay import replay  # noqa: PLC0415
    from imaguard.report.build import build_report  # noqa: PLC0415
    from imaguard.report.model import HostFacts  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from logbuilder import LogBuilder  # noqa: PLC0415

    tool = tmp_path / "tool"
    shutil.copy("/usr/bin/sleep", tool)
    content = tool.read_bytes()
    child = subprocess.Popen([str(tool), "30"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/exe").readlink() != tool:
            assert time.monotonic() < deadline, "the tool did not start within 30 s"
            time.sleep(0.05)
        me = next(p for p in list_processes() if p.pid == child.pid)
        st = tool.stat()
        assert (me.exe_same_file, me.exe_file_id) == (True, (st.st_dev, st.st_ino))
        digests = RunningDigests()
        path = bytes(tool)
        assert digests(path, me.exe_file_id, "sha256") == hashlib.sha256(content).digest()
        assert digests(path, me.exe_file_id, "sha1") == hashlib.sha1(content).digest()
        # The container's file of the same path was logged last: the running file's entry decides.
        b = LogBuilder()
        b.boot_aggregate()
        b.file(path, content, template="ima-ng")
        b.file(path, b"another namespace's file at this path", template="ima-ng")

        class Nothing:
            def lookup_full(self, digest: bytes) -> list:
                return []

            def lookup_path(self, path: bytes) -> list:
                return []

        host = HostFacts("m" * 32, "b", "h", "6.1", "#1", "gone", None, ())
        report = build_report(replay(iter_binary(b.binary())), source="b", lookup=Nothing(), processes=[me],
                              host=host, generator="g", created="c", digest_here=RunningDigests())  # fmt: skip
        assert (report.processes[0].exe.entry, str(report.processes[0].klass)) == (1, "unknown")
        # Another file renamed over the path (an upgrade): never hashed in the running one's place.
        other = tmp_path / "other"
        other.write_bytes(content)
        other.replace(tool)
        assert RunningDigests()(path, me.exe_file_id, "sha256") is None
        assert RunningDigests()(path, me.exe_file_id, "no-such-algo") is None
        assert RunningDigests()(b"/nonexistent", me.exe_file_id, "sha256") is None
    finally:
        child.kill()
        child.wait()
