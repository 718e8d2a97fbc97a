"""Guest side of issue 5 item 6: the enrolled image under an enforcing policy for every root exec and mmap.

The image was labelled on the host by ``imaguard enroll --root`` (vagrant/lab/imaguard_lab/enrolled.py);
/lab/keys holds only its certificate. Steps: load the certificate into ``_ima``; prepare the files
that must be refused (a package binary with one byte changed, unpackaged programs, an unlabelled
copy of a package library) and their labelled controls; load the policy; run everyday commands;
try the refused files; read the kernel log and the measurement list. Facts only, judged on the
host (tests/vm/enforce_expectations.py). Usage: ``python3 enforce_enrolled.py /lab/params.json``.

Params: ``mutation`` (null | "skip-enroll": the host booted the *unenrolled* base image; recorded
here so the host can say so). Everything this script needs after the policy is imported before it:
with a broken enrollment, a lazy import of a C extension would itself be refused.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from guestlib import ART, KEYS, close_results, open_results, record, settled_kmsg, step

from imaguard.ima import keyring, securityfs

# Every import (and so every C extension mapped) happens above, before the policy is loaded.

WORK = Path("/opt/imaguard-lab")
PACKAGE_BINARY = "/usr/bin/echo"  # coreutils
PACKAGE_LIBRARY = "/usr/lib/x86_64-linux-gnu/libz.so.1"  # zlib1g: a shared object nothing here has loaded
LAB_WRAPPER = "/usr/local/bin/imaguard"  # put into the image by the lab build; no package ships it
MARKER = "imaguard-lab-ok"

RULES = (
    "measure func=KEY_CHECK keyrings=_ima",
    "measure func=BPRM_CHECK template=ima-sig",
    "measure func=MMAP_CHECK mask=MAY_EXEC template=ima-sig",
    "appraise func=BPRM_CHECK uid=0 appraise_type=imasig",
    "appraise func=MMAP_CHECK mask=MAY_EXEC uid=0 appraise_type=imasig",
)

# (name, argv): everyday commands that must still run; output is not judged, only that they started
# and what they returned. systemctl is expected to exit non-zero (PID 1 is the lab's init script).
EVERYDAY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ls", ("ls", "-l", "/usr/bin/python3")),
    ("python3", ("python3", "-c", "import ssl, hashlib, ctypes, apt_pkg, cryptography.x509; print('python ok')")),
    ("apt-get", ("apt-get", "--version")),
    ("dpkg", ("dpkg", "-l")),  # execs dpkg-query: a nested exec
    ("systemctl", ("systemctl", "status", "--no-pager")),
    ("sh-pipeline", ("sh", "-c", "uname -r | sha256sum")),
)


def xattr_hex(path: Path | str) -> str | None:
    try:
        return os.getxattr(path, "security.ima").hex()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        return f"error {exc.errno}"


def run_fact(argv: tuple[str, ...], *, cwd: str = "/") -> dict[str, Any]:
    """Did the program start? (PermissionError/EACCES = refused by the kernel) and what it returned."""
    # the kernel's audit record names the file it appraised: the symlink's target
    # "path": what the kernel's audit record names, the symlink's target
    fact: dict[str, Any] = {"argv": list(argv), "path": os.path.realpath(shutil.which(argv[0]) or argv[0])}
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120, cwd=cwd)
    except OSError as exc:
        return fact | {"started": False, "refused": exc.errno == errno.EACCES, "errno": exc.errno,
                       "strerror": exc.strerror, "exception": type(exc).__name__}  # fmt: skip
    return fact | {"started": True, "refused": False, "errno": None, "rc": proc.returncode,
                   "stdout": proc.stdout[-600:], "stderr": proc.stderr[-600:]}  # fmt: skip


def mmap_exec_fact(path: Path) -> dict[str, Any]:
    """mmap the file PROT_READ|PROT_EXEC (MMAP_CHECK, MAY_EXEC) and dlopen it."""
    fact: dict[str, Any] = {"path": str(path), "xattr": xattr_hex(path)}
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
    except OSError as exc:
        fact |= {"mmap_refused": exc.errno == errno.EACCES, "mmap_errno": exc.errno}
    else:
        m.close()
        fact |= {"mmap_refused": False, "mmap_errno": None}
    finally:
        os.close(fd)
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        fact |= {"dlopen_ok": False, "dlopen_error": str(exc)}
    else:
        fact |= {"dlopen_ok": True}
    return fact


def flip_last_byte(path: Path) -> None:
    # The last byte of an ELF is in the section headers: the file would still run if it were allowed.
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    mutation = params.get("mutation")
    open_results()
    record("start", kernel=os.uname().release, mutation=mutation, cmdline=Path("/proc/cmdline").read_text().strip())
    cert_der = KEYS / "ima-rsa.cert.der"
    record("guest-keys", files=sorted(p.name for p in KEYS.iterdir()))
    step("securityfs-mount", lambda: {"mounted_now": securityfs.ensure_mounted()})

    def load_cert() -> dict[str, Any]:
        ring = keyring.find_or_create_ima_keyring()
        serial = keyring.add_certificate(cert_der.read_bytes(), ring)
        return {"ring": ring, "key": serial, "linked": serial in keyring.keyring_links(ring),
                "key_description": keyring.describe_key(serial).description}  # fmt: skip

    step("keyring-load", load_cert)

    # Labels of what the policy will appraise first; an unenrolled image shows None here.
    step("labels", lambda: {p: xattr_hex(p) for p in ("/usr/bin/ls", "/usr/bin/python3.11", "/usr/bin/systemctl",
                                                       PACKAGE_BINARY, PACKAGE_LIBRARY, LAB_WRAPPER)})  # fmt: skip

    WORK.mkdir(parents=True, exist_ok=True)
    files = {
        # copy2 copies security.ima too: a labelled copy runs, the same copy with one byte changed not.
        "labelled-copy": WORK / "labelled-echo",
        "tampered-copy": WORK / "tampered-echo",
        # a package binary's bytes at a path no package ships, without a label
        "unlabelled-copy": WORK / "unlabelled-echo",
        # a local admin script, executable, from no package
        "unpackaged-script": WORK / "site-hello",
    }
    shutil.copy2(PACKAGE_BINARY, files["labelled-copy"])
    shutil.copy2(PACKAGE_BINARY, files["tampered-copy"])
    flip_last_byte(files["tampered-copy"])
    shutil.copyfile(PACKAGE_BINARY, files["unlabelled-copy"])
    files["unlabelled-copy"].chmod(0o755)
    files["unpackaged-script"].write_text(f"#!/bin/sh\necho {MARKER}\n")
    files["unpackaged-script"].chmod(0o755)
    libs = {"labelled-lib": WORK / "labelled-libz.so", "unlabelled-lib": WORK / "unlabelled-libz.so"}
    shutil.copy2(PACKAGE_LIBRARY, libs["labelled-lib"])
    shutil.copyfile(PACKAGE_LIBRARY, libs["unlabelled-lib"])
    record("prepared", **{name: {"path": str(p), "xattr": xattr_hex(p)} for name, p in {**files, **libs}.items()},
           lab_wrapper={"path": LAB_WRAPPER, "xattr": xattr_hex(LAB_WRAPPER)})  # fmt: skip

    (ART / "policy.txt").write_text("\n".join(RULES) + "\n")

    def audit_unthrottled() -> dict[str, Any]:
        # Without auditd, audit records go through printk_ratelimit() (10 per 5 s): the policy load
        # alone logs 6, so the denials would be dropped at random. Raise the burst (a file write).
        burst = Path("/proc/sys/kernel/printk_ratelimit_burst")
        before = burst.read_text().strip()
        burst.write_text("10000\n")
        return {"printk_ratelimit_burst": [before, burst.read_text().strip()]}

    step("audit-unthrottled", audit_unthrottled)

    def policy() -> dict[str, Any]:
        return {"rules": list(RULES), "written": securityfs.write_policy(RULES)}

    loaded = step("policy-load", policy)
    if "error" in loaded:
        record("done", stopped="policy not loaded")
        close_results()
        return 1

    for name, argv in EVERYDAY:
        step(f"run-{name}", lambda argv=argv: run_fact(argv))
    step("run-labelled-copy", lambda: run_fact((str(files["labelled-copy"]), MARKER)))

    step("exec-tampered-copy", lambda: run_fact((str(files["tampered-copy"]), MARKER)))
    step("exec-unlabelled-copy", lambda: run_fact((str(files["unlabelled-copy"]), MARKER)))
    step("exec-unpackaged-script", lambda: run_fact((str(files["unpackaged-script"]),)))
    step("exec-lab-wrapper", lambda: run_fact((LAB_WRAPPER, "--help")))
    step("mmap-labelled-lib", lambda: mmap_exec_fact(libs["labelled-lib"]))
    step("mmap-unlabelled-lib", lambda: mmap_exec_fact(libs["unlabelled-lib"]))

    def audit() -> dict[str, Any]:
        lines = settled_kmsg()
        (ART / "kmsg.txt").write_text("\n".join(lines) + "\n")
        return {"type1800": [ln for ln in lines if "type=1800" in ln],
                "integrity": [ln for ln in lines if "integrity" in ln.lower()][-20:]}  # fmt: skip

    step("audit", audit)

    def measurements() -> dict[str, Any]:
        text = securityfs.read_measurements(securityfs.ASCII_MEASUREMENTS).decode(errors="replace")
        (ART / "ascii_runtime_measurements").write_text(text)
        entries = [ln.split() for ln in text.splitlines()]
        sigs = [e for e in entries if len(e) >= 5 and e[2] == "ima-sig"]
        return {
            "entries": len(entries),
            "ima_sig_entries": len(sigs),
            # (path, carries a signature): the host checks every exec/mmap measured was labelled
            "files": sorted({(e[4], len(e) >= 6) for e in sigs}),
        }

    step("measurements", measurements)
    record("done")
    close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
