"""Boot one lab scenario: qcow2 overlay, swtpm TPM 2.0, QEMU, work disk in and out.

A run is one boot, or several (``RunSpec.max_boots``): the same overlay, swtpm state and work disk
across boots. QEMU runs with ``-no-reboot``, so a guest reboot or power-off ends QEMU; before it
does, the guest writes ``/lab/out/next.json`` (``{"action": "reboot", "mode": ..., "cmdline": [...]}``)
to ask for another boot, and the runner boots again with the guest's own ``/boot/initrd.img-*``,
read from the overlay (``qemu-img convert`` + ``debugfs``), so an ``update-initramfs`` in the guest
takes effect as on real hardware. Modes: ``init`` (PID 1 = the lab's init script) and ``systemd``
(PID 1 = systemd; the step runs in ``imaguard-lab.service``, pulled in by ``systemd.wants=``).

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

__all__ = [
    "DEFAULT_CMDLINE",
    "MODES",
    "REPO",
    "BootRecord",
    "RunResult",
    "RunSpec",
    "alive",
    "detect_accel",
    "remove_run",
    "run",
]

REPO = Path(__file__).resolve().parents[3]
DEFAULT_CMDLINE: tuple[str, ...] = ("ima_appraise=enforce", "ima_template=ima-sig", "ima_hash=sha256")
_BASE_CMDLINE = (
    "root=/dev/vda",
    "rw",
    "rootfstype=ext4",
    "console=ttyS0",
    "panic=-1",
)
# PID 1 per mode. systemd: the image has no systemd-sysv (no /sbin/init), so init= names it; the
# lab's unit is in the image but started only when the kernel command line asks for it.
MODES: dict[str, tuple[str, ...]] = {
    "init": ("init=/usr/local/sbin/imaguard-lab-init",),
    "systemd": ("init=/lib/systemd/systemd", "systemd.wants=imaguard-lab.service", "systemd.show_status=error"),
}
_NEXT = "next.json"  # the guest's request for another boot, in /lab/out


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
    mode: str = "init"  # PID 1 of the first boot: init | systemd (MODES); later boots: the guest says
    max_boots: int = 1  # more boots are made only when the guest asks (/lab/out/next.json)


@dataclass(frozen=True, slots=True)
class BootRecord:
    """One boot of a run: how it was booted and how it ended."""

    number: int  # 1-based; the guest reads it as lab.boot=N
    mode: str
    cmdline: tuple[str, ...]  # the IMA part (RunSpec.cmdline or the guest's request)
    initrd_sha256: str  # the initrd QEMU loaded: the image's, or the guest's own after update-initramfs
    out_dir: Path | None  # /lab/out as it was after this boot
    status: int | None
    wall_s: float
    timed_out: bool
    panicked: bool
    serial_log: Path
    next: dict[str, Any] | None  # what the guest asked for at the end of this boot


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
    boots: list[BootRecord] = field(default_factory=list)

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


@dataclass(frozen=True, slots=True)
class _Boot:
    """What differs between the boots of one run."""

    number: int
    mode: str
    cmdline: tuple[str, ...]
    initrd: Path
    serial: Path


def _qemu_cmd(spec: RunSpec, image: Image, *, run_dir: Path, sock: Path | None, accel: str, boot: _Boot) -> list[str]:
    overlay, work, serial = run_dir / "overlay.qcow2", run_dir / "work.img", boot.serial
    append = [*_BASE_CMDLINE, *MODES[boot.mode], f"lab.timeout={spec.timeout_s}", f"lab.boot={boot.number}"]
    append += boot.cmdline
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
        "-initrd", str(boot.initrd),
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
    state = run_dir / "tpm"  # kept across the boots of a run, like a real TPM's NV storage
    state.mkdir(exist_ok=True)
    sock = run_dir / "swtpm.sock"
    sock.unlink(missing_ok=True)
    log = (run_dir / "swtpm.log").open("ab")
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


def _boot(spec: RunSpec, image: Image, run_dir: Path, *, accel: str, boot: _Boot) -> tuple[list[int], bool]:
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
        cmd = _qemu_cmd(spec, image, run_dir=run_dir, sock=sock, accel=accel, boot=boot)
        with (run_dir / "qemu.log").open("ab") as qlog:
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


def _collect(run_dir: Path, dest: Path) -> tuple[Path | None, int | None, list[dict[str, Any]]]:
    """Read the guest's /out back into ``dest/out``: (out dir, guest exit status, result records)."""
    try:
        out_dir = read_out(run_dir / "work.img", dest)
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


def _guest_initrd(image: Image, run_dir: Path, number: int) -> Path:
    """The initrd the guest's own /boot holds now (after its update-initramfs, if any).

    No qemu-nbd here: the overlay is flattened to a sparse raw file (~1 s) and debugfs reads the
    file from it, never mounting a guest-written filesystem.
    """
    raw = run_dir / "overlay.raw"
    dest = run_dir / f"initrd-{number}.img"
    try:
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(run_dir / "overlay.qcow2"), str(raw)], check=True,
            capture_output=True,
        )  # fmt: skip
        listing = subprocess.run(["debugfs", "-R", "ls -p /boot", str(raw)], capture_output=True, text=True,
                                 check=False)  # fmt: skip
        # ls -p: /inode/mode/uid/gid/name/size/
        names = sorted(f[5] for f in (ln.split("/") for ln in listing.stdout.splitlines()) if len(f) > 6
                       and f[5].startswith("initrd.img-"))  # fmt: skip
        if len(names) != 1:
            raise RuntimeError(f"expected one /boot/initrd.img-* on the guest disk, found {names}: {listing.stderr}")
        proc = subprocess.run(["debugfs", "-R", f"dump /boot/{names[0]} {dest}", str(raw)], capture_output=True,
                              text=True, check=False)  # fmt: skip
    finally:
        raw.unlink(missing_ok=True)
    if proc.returncode != 0 or not dest.is_file() or dest.stat().st_size == 0:
        raise RuntimeError(f"cannot read /boot/{names[0]} from the guest disk: {proc.stderr.strip()}")
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _next_request(out_dir: Path | None) -> dict[str, Any] | None:
    """The guest's ``next.json``, validated: a reboot request with a known mode, or None."""
    if out_dir is None or not (out_dir / _NEXT).is_file():
        return None
    try:
        req = json.loads((out_dir / _NEXT).read_text())
    except ValueError:
        return None
    if not isinstance(req, dict) or req.get("action") != "reboot" or req.get("mode") not in MODES:
        return None
    if not all(isinstance(w, str) for w in req.get("cmdline", [])):
        return None
    return req


def run(spec: RunSpec, image: Image, *, run_dir: Path | None = None, keys_dir: Path | None = None) -> RunResult:
    """Boot ``image`` with a fresh overlay, run ``spec`` (one boot, or more when the guest asks and
    ``spec.max_boots`` allows), power off, and return what came back."""
    if spec.mode not in MODES:
        raise ValueError(f"unknown boot mode {spec.mode!r} (known: {', '.join(MODES)})")
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
    boots: list[BootRecord] = []
    started: list[int] = []
    boot = _Boot(1, spec.mode, spec.cmdline, image.initrd, run_dir / "serial.log")
    wall = 0.0
    results: list[dict[str, Any]] = []
    try:
        while True:
            start = time.monotonic()
            pids, timed_out = _boot(spec, image, run_dir, accel=accel, boot=boot)
            boot_wall = time.monotonic() - start
            wall += boot_wall
            started += pids
            # Boot 1 of a single-boot run reads back into run_dir/out, as always; later ones keep each
            # boot's /lab/out apart (boot-N/out), the last one also being RunResult.out_dir.
            dest = run_dir if spec.max_boots == 1 else run_dir / f"boot-{boot.number}"
            out_dir, status, results = _collect(run_dir, dest)
            text = boot.serial.read_text(errors="replace") if boot.serial.exists() else ""
            request = _next_request(out_dir)
            if out_dir is not None:
                (out_dir / _NEXT).unlink(missing_ok=True)
            panicked = "Kernel panic" in text
            boots.append(BootRecord(boot.number, boot.mode, boot.cmdline, _sha256(boot.initrd), out_dir, status,
                                    round(boot_wall, 1), timed_out, panicked, boot.serial, request))  # fmt: skip
            if request is None or timed_out or boot.number >= spec.max_boots:
                break
            _clear_next(run_dir)
            number = boot.number + 1
            boot = _Boot(number, str(request["mode"]), tuple(request.get("cmdline", spec.cmdline)),
                         _guest_initrd(image, run_dir, number), run_dir / f"serial-{number}.log")  # fmt: skip
    finally:
        # The overlay is the only large file; nothing needs it after the run.
        overlay.unlink(missing_ok=True)
    last = boots[-1]
    summary = {
        "entry": spec.entry,
        "params": spec.params,
        "status": last.status,
        "wall_s": round(wall, 1),
        "timed_out": any(b.timed_out for b in boots),
        "panicked": any(b.panicked for b in boots),
        "accel": accel,
        "boots": [
            {"number": b.number, "mode": b.mode, "cmdline": list(b.cmdline), "initrd_sha256": b.initrd_sha256,
             "status": b.status, "wall_s": b.wall_s, "timed_out": b.timed_out, "panicked": b.panicked,
             "next": b.next}
            for b in boots
        ],
    }  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, last.out_dir, last.serial_log, last.status, results, wall, bool(summary["timed_out"]),
                     bool(summary["panicked"]), started, accel, boots)  # fmt: skip


def _clear_next(run_dir: Path) -> None:
    """Remove next.json from the work disk, so a boot that asks for nothing is the last one."""
    subprocess.run(["debugfs", "-w", "-R", f"rm /out/{_NEXT}", str(run_dir / "work.img")], capture_output=True,
                   check=False)  # fmt: skip


def remove_run(result: RunResult) -> None:
    shutil.rmtree(result.run_dir, ignore_errors=True)
