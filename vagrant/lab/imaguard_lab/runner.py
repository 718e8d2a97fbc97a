"""Boot one lab scenario: qcow2 overlay, swtpm TPM 2.0, QEMU, work disk in and out.

Every process the runner starts gets its own session (process group); on timeout or any error the
runner kills exactly those groups, by id, and reaps them. QEMU runs with ``-no-reboot`` and the
guest kernel with ``panic=-1``, so a panic ends QEMU at once instead of hanging.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import Image
from .labkeys import make_keys
from .recipe import cache_root
from .workdisk import make_work_disk, read_out

__all__ = ["DEFAULT_CMDLINE", "REPO", "RunResult", "RunSpec", "alive", "detect_accel", "remove_run", "run"]

REPO = Path(__file__).resolve().parents[3]
DEFAULT_CMDLINE: tuple[str, ...] = ("ima_appraise=enforce", "ima_template=ima-sig", "ima_hash=sha256")
_BASE_CMDLINE = (
    "root=/dev/vda",
    "rw",
    "rootfstype=ext4",
    "console=ttyS0",
    "panic=-1",
    "init=/usr/local/sbin/imaguard-lab-init",
)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to boot: the guest script ``tests/vm/guest/<entry>`` with ``params``."""

    entry: str
    params: dict[str, object] = field(default_factory=dict)
    cmdline: tuple[str, ...] = DEFAULT_CMDLINE
    timeout_s: int = 300  # for the guest script; the whole run gets _BOOT_ALLOWANCE_S more
    memory_mib: int = 1024
    smp: int = 2
    tpm: bool = True
    accel: str = "auto"  # tcg | kvm | auto (auto: KVM only if a probe boot proves it works)
    quiet_kernel: bool = True
    boot_allowance_s: int = 120  # TCG takes 22-33 s from QEMU start to the guest init (lab notes)


@dataclass
class RunResult:
    run_dir: Path
    out_dir: Path | None
    serial_log: Path
    status: int | None  # the guest script's exit status; None if it never reported one
    results: list[dict[str, Any]]  # JSON records from the guest
    wall_s: float
    timed_out: bool
    panicked: bool
    started_pids: list[int]
    accel: str

    def serial_tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    def checks(self) -> dict[str, dict[str, Any]]:
        """The guest's check records by name (the last record of a name wins)."""
        return {str(r["check"]): r for r in self.results if "check" in r}

    def problem(self) -> str | None:
        """A one-paragraph reason the run itself failed (not the checks), with the serial tail."""
        if self.timed_out:
            why = "timed out (killed)"
        elif self.panicked:
            why = "guest kernel panicked"
        elif self.status is None:
            why = "guest reported no exit status"
        else:
            return None
        return f"lab run {why}; last lines of {self.serial_log}:\n{self.serial_tail()}"


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Stop ``proc``'s own process group (it was started with start_new_session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    else:
        # the leader exited; children in its group (none expected) must not outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _probe_done(log: Path) -> bool:
    return log.exists() and "VFS: Unable to mount root" in log.read_text(errors="replace")


def detect_accel(image: Image, *, probe_timeout_s: float = 25.0) -> str:
    """``kvm`` if /dev/kvm boots this kernel to userspace, else ``tcg``; the answer is cached.

    A broken KVM (nested PVM here) hangs right after "Probing EDD", so only a probe boot tells.
    """
    cache = cache_root() / "accel-probe.json"
    # Keyed by host kernel and guest kernel, not the image: image-only rebuilds keep the answer.
    key = f"{os.uname().release}|{hashlib.sha256(image.kernel.read_bytes()).hexdigest()[:16]}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    accel = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with tempfile.TemporaryDirectory(prefix="imaguard-kvm-probe-") as tmp:
            log = Path(tmp) / "serial.log"
            cmd = [
                "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "512", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", f"file:{log}", "-kernel", str(image.kernel),
                "-append", "console=ttyS0 panic=-1 earlyprintk=serial",
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + probe_timeout_s
            # No initrd and no root: reaching the VFS panic proves the kernel ran in long mode.
            try:
                while time.monotonic() < deadline and proc.poll() is None and not _probe_done(log):
                    time.sleep(0.5)
            finally:
                _kill_group(proc)
            if _probe_done(log):
                accel = "kvm"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel}))
    return accel


def _qemu_cmd(spec: RunSpec, image: Image, *, run_dir: Path, sock: Path | None, accel: str) -> list[str]:
    overlay, work, serial = run_dir / "overlay.qcow2", run_dir / "work.img", run_dir / "serial.log"
    append = [*_BASE_CMDLINE, f"lab.timeout={spec.timeout_s}", *spec.cmdline]
    if spec.quiet_kernel:
        append.append("quiet")
    cmd = [
        "qemu-system-x86_64",
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(spec.memory_mib),
        "-smp", str(spec.smp),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", " ".join(append),
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={work},if=virtio,format=raw",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if sock is not None:
        cmd += [
            "-chardev", f"socket,id=chrtpm,path={sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip
    return cmd


def _start_swtpm(run_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    state = run_dir / "tpm"
    state.mkdir()
    sock = run_dir / "swtpm.sock"
    log = (run_dir / "swtpm.log").open("wb")
    proc = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={state}",
            "--ctrl", f"type=unixio,path={sock}",
            "--flags", "startup-clear",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc)
            raise RuntimeError(f"swtpm did not start; see {run_dir / 'swtpm.log'}")
        time.sleep(0.05)
    return proc, sock


_KEEP_RUNS = 20  # run directories kept for post-mortems; older ones are removed


def _new_run_dir() -> Path:
    runs = cache_root() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-_KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=runs))


def _boot(spec: RunSpec, image: Image, run_dir: Path, *, accel: str) -> tuple[list[int], bool]:
    """Start swtpm and QEMU, wait for power-off or the time limit; always stop both."""
    started: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    timed_out = False
    try:
        sock = None
        if spec.tpm:
            swtpm, sock = _start_swtpm(run_dir)
            procs.append(swtpm)
            started.append(swtpm.pid)
        cmd = _qemu_cmd(spec, image, run_dir=run_dir, sock=sock, accel=accel)
        with (run_dir / "qemu.log").open("wb") as qlog:
            qemu = subprocess.Popen(
                cmd, stdout=qlog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        procs.append(qemu)
        started.append(qemu.pid)
        try:
            qemu.wait(timeout=spec.timeout_s + spec.boot_allowance_s)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        # Also on KeyboardInterrupt or an error starting QEMU: nothing we started may survive.
        for proc in reversed(procs):
            _kill_group(proc)
    return started, timed_out


def _collect(run_dir: Path) -> tuple[Path | None, int | None, list[dict[str, Any]]]:
    """Read the guest's /out back: (out dir, guest exit status, result records)."""
    try:
        out_dir = read_out(run_dir / "work.img", run_dir)
    except RuntimeError:
        return None, None, []
    status: int | None = None
    status_file = out_dir / "exit-status"
    if status_file.is_file():
        status = int(status_file.read_text().strip() or "-1")
    results: list[dict[str, Any]] = []
    results_file = out_dir / "results.jsonl"
    if results_file.is_file():
        results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    return out_dir, status, results


def run(spec: RunSpec, image: Image, *, run_dir: Path | None = None, keys_dir: Path | None = None) -> RunResult:
    """Boot ``image`` with a fresh overlay, run ``spec``, power off, and return what came back."""
    run_dir = run_dir or _new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    accel = detect_accel(image) if spec.accel == "auto" else spec.accel
    overlay = run_dir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs_img), "-F", "raw", str(overlay)],
        check=True,
    )
    if keys_dir is None:
        keys_dir = make_keys(run_dir / "keys").directory
    make_work_disk(run_dir / "work.img", repo=REPO, keys_dir=keys_dir, entry=spec.entry, params=spec.params)
    start = time.monotonic()
    started, timed_out = _boot(spec, image, run_dir, accel=accel)
    wall = time.monotonic() - start
    out_dir, status, results = _collect(run_dir)
    serial = run_dir / "serial.log"
    panicked = serial.exists() and "Kernel panic" in serial.read_text(errors="replace")
    summary = {
        "entry": spec.entry,
        "params": spec.params,
        "status": status,
        "wall_s": round(wall, 1),
        "timed_out": timed_out,
        "panicked": panicked,
        "accel": accel,
    }
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    # The overlay is the only large file; nothing needs it after the run.
    overlay.unlink(missing_ok=True)
    return RunResult(run_dir, out_dir, serial, status, results, wall, timed_out, panicked, started, accel)


def remove_run(result: RunResult) -> None:
    shutil.rmtree(result.run_dir, ignore_errors=True)
