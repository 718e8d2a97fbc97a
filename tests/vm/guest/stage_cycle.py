"""Issue 6 acceptance, the stage cycle with reboots, on the image enrolled by ``imaguard enroll --root``.

One multi-boot run (runner ``max_boots``), each boot picking its part by ``lab.boot=N``:

1. init mode, no policy: ``keys install`` the enrollment certificate, ``policy install --stage log``
   (the gate only warns), ``update-initramfs -u`` (timed); reboot into systemd, ``ima_appraise=log``.
2. systemd, log stage: keys in the keyring and policy loaded at boot (by the initramfs and PID 1,
   not by us), every appraisal failure in the kernel log; ``policy check``; the lab's own files (no
   package ships them) are signed with the local key, as an administrator signs what they built;
   ``policy install --stage enforce`` behind the gate; reboot into systemd, enforce.
3. systemd, enforce: ``systemctl is-system-running``, everyday commands, a tampered and an
   unlabelled copy of a package binary refused; rotation: a second key loaded and installed, every
   file signed by the first re-signed, the first retired (its file removed), ``update-initramfs``,
   the gate again; reboot.
4. systemd, enforce, second key only: the system still runs; a file still signed by the retired key
   is refused.

Facts only, judged on the host (tests/vm/stage_expectations.py). Params: ``key``, ``cert`` (the
enrollment key and certificate), ``key2``, ``cert2`` (the rotation key).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guestlib import ART, close_results, open_results, settled_kmsg
from stage_lib import boot_number, brecord, request_reboot, system_state

WORK = Path("/opt/imaguard-stage")  # ext4 root: appraised like everything else
LAB_STATE = Path("/lab/state")  # the work disk: carries facts from one boot to the next
IMA_WORDS = ["ima_template=ima-sig", "ima_hash=sha256", "sysctl.kernel.printk_ratelimit=0"]
PACKAGE_BINARY = "/usr/bin/echo"
EVERYDAY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ls", ("ls", "-l", "/usr/bin/python3")),
    ("python3", ("python3", "-c", "import ssl, hashlib, ctypes, apt_pkg, cryptography.x509; print('python ok')")),
    ("apt-get", ("apt-get", "--version")),
    ("dpkg", ("dpkg", "-l")),
    ("systemctl", ("systemctl", "status", "--no-pager")),
    ("journalctl", ("journalctl", "-b", "--no-pager", "-n", "5")),
    ("sh-pipeline", ("sh", "-c", "uname -r | sha256sum")),
)


def cli(*args: str, timeout: int = 1800) -> dict[str, Any]:
    """``python3 -m imaguard.cli ARGS --json`` (the lab's /usr/local/bin/imaguard wrapper is unsigned)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-B", "-m", "imaguard.cli", *args, "--json"], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip
    try:
        doc: Any = json.loads(proc.stdout)
    except ValueError:
        doc = None
    return {"argv": list(args), "rc": proc.returncode, "doc": doc, "stdout": None if doc else proc.stdout[-2000:],
            "stderr": proc.stderr[-3000:], "seconds": round(time.monotonic() - start, 1)}  # fmt: skip


def run_fact(argv: tuple[str, ...]) -> dict[str, Any]:
    fact: dict[str, Any] = {"argv": list(argv), "path": os.path.realpath(shutil.which(argv[0]) or argv[0])}
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120)
    except OSError as exc:
        return fact | {"started": False, "errno": exc.errno, "strerror": exc.strerror}
    return fact | {"started": True, "errno": None, "rc": proc.returncode, "stdout": proc.stdout[-400:],
                   "stderr": proc.stderr[-400:]}  # fmt: skip


def kernel_facts(name: str) -> None:
    """What the kernel logged this boot about keys, the policy and appraisal (audit records via printk)."""
    lines = settled_kmsg()
    (ART / f"kmsg-boot{boot_number()}-{name}.txt").write_text("\n".join(lines) + "\n")
    wanted = ("type=1800", "type=1807", "type=1802", "imaguard:", "integrity:", "ima:", "printk limit", "audit:")
    brecord(f"kernel-{name}", lines=[ln for ln in lines if any(w in ln for w in wanted)][-400:],
            policy_file_present=Path("/sys/kernel/security/ima/policy").exists())  # fmt: skip


def everyday() -> None:
    for name, argv in EVERYDAY:
        brecord(f"everyday-{name}", **run_fact(argv))


def keys_and_policy() -> None:
    brecord("keys-show", **cli("keys", "show"))
    brecord("boot-policy", text=Path("/etc/ima/ima-policy").read_text() if Path("/etc/ima/ima-policy").exists()
            else None, cmdline=Path("/proc/cmdline").read_text().split())  # fmt: skip


def update_initramfs() -> None:
    start = time.monotonic()
    proc = subprocess.run(["update-initramfs", "-u"], capture_output=True, text=True, check=False, timeout=1500)
    brecord("update-initramfs", rc=proc.returncode, seconds=round(time.monotonic() - start, 1),
            stderr=proc.stderr[-2000:], stdout=proc.stdout[-1000:])  # fmt: skip


def boot1(p: dict[str, Any]) -> None:
    # --sign-key: the initramfs hook and script are executables too (update-initramfs runs the hook).
    brecord("keys-install", **cli("keys", "install", p["cert"], "--sign-key", p["key"]))
    install = cli("policy", "install", "--stage", "log")
    brecord("policy-install-log", **install)
    gaps = [u["path"] for u in (((install["doc"] or {}).get("gate") or {}).get("uncovered") or [])]
    (LAB_STATE / "gaps.json").write_text(json.dumps(gaps))
    update_initramfs()
    request_reboot("systemd", ["ima_appraise=log", *IMA_WORDS])


def sign(key: str, cert: str, paths: list[str]) -> dict[str, Any]:
    if not paths:
        return {"rc": 0, "argv": [], "doc": None, "seconds": 0.0}
    return cli("sign", "--key", key, "--cert", cert, *paths)


def boot2(p: dict[str, Any]) -> None:
    brecord("system", **system_state())
    keys_and_policy()
    kernel_facts("log-boot")
    everyday()
    # What the gate of boot 1 listed (tests/vm/stage_expectations.py says exactly which files those
    # are and why): reviewed, and signed with the local key, as an administrator signs what they trust.
    gaps = json.loads((LAB_STATE / "gaps.json").read_text())
    brecord("sign-gaps", files=gaps, **sign(p["key"], p["cert"], gaps))
    install = cli("policy", "install", "--stage", "enforce")
    brecord("policy-install-enforce", **install)
    if install["rc"] == 0:  # else the next boot would enforce the log stage's policy: stop here
        request_reboot("systemd", IMA_WORDS)


def xattr_hex(path: Path | str) -> str | None:
    try:
        return os.getxattr(path, "security.ima").hex()
    except OSError as exc:
        return None if exc.errno == errno.ENODATA else f"error {exc.errno}"


def refused_copies() -> None:
    WORK.mkdir(exist_ok=True)
    tampered, unlabelled = WORK / "echo-tampered", WORK / "echo-unlabelled"
    shutil.copy2(PACKAGE_BINARY, tampered)  # copy2 carries security.ima
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    shutil.copyfile(PACKAGE_BINARY, unlabelled)
    unlabelled.chmod(0o755)
    for path in (tampered, unlabelled):
        brecord(f"exec-{path.name}", xattr=xattr_hex(path), **run_fact((str(path), "hello")))
        path.unlink()  # the gate of the rotation step must not see them


def signed_by(key_id_hex: str) -> list[str]:
    """Regular files on the root filesystem whose security.ima is a v2 signature by ``key_id_hex``."""
    found: list[str] = []
    root_dev = Path("/").stat().st_dev
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if (Path(top) / d).lstat().st_dev == root_dev]
        for name in files:
            path = str(Path(top) / name)
            try:
                value = os.getxattr(path, "security.ima", follow_symlinks=False)
            except OSError:
                continue
            if len(value) > 7 and value[0] == 3 and value[1] == 2 and value[3:7].hex() == key_id_hex:
                found.append(path)
    return found


def key_id(cert: str) -> str:
    from imaguard.keys import load_certificate  # noqa: PLC0415 - only this boot needs it

    return load_certificate(Path(cert)).key_id.hex()


def boot3(p: dict[str, Any]) -> None:
    brecord("system", **system_state())
    keys_and_policy()
    everyday()
    refused_copies()
    kernel_facts("enforce-boot")
    # Rotation: the new key goes into the kernel and /etc/keys/ima first, then every file is
    # re-signed, then the old key is retired; a copy keeps the old signature to prove the retirement.
    old, new = key_id(p["cert"]), key_id(p["cert2"])
    # The first key's signature of echo, kept on the work disk (no file here may keep it: the gate
    # would refuse); boot 4 puts it back on a copy of echo, which the kernel must then refuse.
    (LAB_STATE / "echo-old-signature").write_text(xattr_hex(PACKAGE_BINARY) or "")
    load = cli("keys", "load", p["cert2"])
    brecord("rotate-keys-load", **load)
    if load["rc"] != 0:  # re-signing for a key the kernel does not have would lock this boot out
        return
    brecord("rotate-keys-install", **cli("keys", "install", p["cert2"], "--sign-key", p["key2"]))
    start = time.monotonic()
    files = signed_by(old)
    walk_s = round(time.monotonic() - start, 1)
    result = sign(p["key2"], p["cert2"], files)
    brecord("rotate-resign", old=old, new=new, files=len(files), walk_seconds=walk_s,
            **{k: v for k, v in result.items() if k != "doc"},
            summary=(result["doc"] or {}).get("summary"))  # fmt: skip
    brecord("rotate-left-on-old-key", files=signed_by(old))
    retired = Path(f"/etc/keys/ima/imaguard-{old}.der")
    brecord("rotate-retire", path=str(retired), existed=retired.exists())
    retired.unlink(missing_ok=True)
    update_initramfs()
    # No second gate here (~2-3 min under TCG): the walk above found no file left on the old key,
    # and boot 4 proves the rest by running under enforce with the new key alone.
    brecord("exec-after-resign", **run_fact(("ls", "/")))
    request_reboot("systemd", IMA_WORDS)


def boot4(p: dict[str, Any]) -> None:
    brecord("system", **system_state())
    keys_and_policy()
    everyday()
    copy = WORK / "echo-old-key"
    shutil.copyfile(PACKAGE_BINARY, copy)
    copy.chmod(0o755)
    os.setxattr(copy, "security.ima", bytes.fromhex((LAB_STATE / "echo-old-signature").read_text()))
    brecord("exec-echo-old-key", xattr=xattr_hex(copy), echo_xattr=xattr_hex(PACKAGE_BINARY),
            **run_fact((str(copy), "hello")))  # fmt: skip
    kernel_facts("rotated-boot")


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    open_results()
    try:
        n = boot_number()
        LAB_STATE.mkdir(exist_ok=True)
        brecord("boot-start", pid1=Path("/proc/1/comm").read_text().strip(), uptime=Path("/proc/uptime").read_text())
        {1: boot1, 2: boot2, 3: boot3, 4: boot4}[n](params)
        brecord("boot-end", uptime=Path("/proc/uptime").read_text())
    finally:
        close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
