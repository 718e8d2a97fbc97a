"""Guest side of the first lab scenario (issue 3 item 4); runs as root inside the lab VM.

It records *facts* (what the kernel did) as JSON lines in /lab/out/results.jsonl, one record per
check; the host-side tests (tests/vm/expectations.py) judge them, so a mutated run is judged by
exactly the same expectations. Usage: ``python3 appraise.py /lab/params.json``.

Params: ``mutation`` (null | "skip-sign": test-only, proves the tests can fail), ``fowner``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guestlib import ART, KEYS, close_results, open_results, record, settled_kmsg, step

from imaguard.errors import ImaguardError
from imaguard.ima import keyring, securityfs

WORK = Path("/opt/imaguard-lab")
SOURCE_BINARY = "/usr/bin/echo"  # from coreutils: a package binary that prints its argument
MARKER = "imaguard-lab-ok"


def imaguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["imaguard", *args], capture_output=True, text=True, check=False)


def exec_fact(path: Path) -> dict[str, Any]:
    try:
        proc = subprocess.run([str(path), MARKER], capture_output=True, text=True, check=False, timeout=60)
    except OSError as exc:
        return {"path": str(path), "refused": exc.errno == errno.EACCES, "errno": exc.errno, "strerror": exc.strerror}
    return {"path": str(path), "refused": False, "errno": None, "rc": proc.returncode, "stdout": proc.stdout.strip()}


def pcr10() -> dict[str, str]:
    proc = subprocess.run(
        ["tpm2_pcrread", "sha1:10+sha256:10"],
        capture_output=True, text=True, check=True, env={**os.environ, "TPM2TOOLS_TCTI": "device:/dev/tpmrm0"},
    )  # fmt: skip
    banks: dict[str, str] = {}
    bank = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^\s*(sha1|sha256)\s*:\s*$", line)
        if m:
            bank = m.group(1)
            continue
        m = re.match(r"^\s*10\s*:\s*0x([0-9A-Fa-f]+)\s*$", line)
        if m and bank:
            banks[bank] = m.group(1).lower()
    return banks


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    mutation = params.get("mutation")
    fowner = int(params.get("fowner", 4242))
    open_results()
    record("start", kernel=os.uname().release, mutation=mutation, python=sys.version.split()[0])

    key = KEYS / "ima-rsa.key.pem"
    cert_der = KEYS / "ima-rsa.cert.der"
    ec_der = KEYS / "ima-ec-p256.cert.der"

    step(
        "securityfs-mount",
        lambda: {"mounted_now": securityfs.ensure_mounted(), "ima_dir": Path(securityfs.IMA_DIR).is_dir()},
    )

    def trusted() -> dict[str, Any]:
        found = keyring.trusted_ima_keyring(keyring.read_proc_keys())
        return {"trusted_ima_keyring": None if found is None else found.description}

    step("trusted-keyring", trusted)

    state: dict[str, Any] = {}

    def load_rsa() -> dict[str, Any]:
        ring = keyring.find_or_create_ima_keyring()
        again = keyring.find_or_create_ima_keyring()
        serial = keyring.add_certificate(cert_der.read_bytes(), ring)
        state["ring"] = ring
        desc = keyring.describe_key(serial)
        listing = [k for k in keyring.read_proc_keys() if k.serial in (ring, serial)]
        return {
            "ring": ring, "ring_again": again, "key": serial, "linked": serial in keyring.keyring_links(ring),
            "key_type": desc.type, "key_description": desc.description,
            "ring_description": keyring.describe_key(ring).description,
            "proc_keys": [f"{k.serial:08x} {k.type} {k.description}: {k.summary}" for k in listing],
        }  # fmt: skip

    step("keyring-load-rsa", load_rsa)

    def ec(check_kernel: bool) -> Callable[[], dict[str, Any]]:
        def attempt() -> dict[str, Any]:
            ring = state.get("ring") or keyring.find_or_create_ima_keyring()
            try:
                serial = keyring.add_certificate(ec_der.read_bytes(), ring, check_kernel=check_kernel)
            except ImaguardError as exc:
                return {"refused": True, "error_class": type(exc).__name__, "reason": exc.reason, "message": str(exc),
                        "kernel_ecdsa_support": keyring.kernel_ecdsa_support()}  # fmt: skip
            return {"refused": False, "key": serial}

        return attempt

    step("ec-cert-precheck", ec(True))
    step("ec-cert-kernel", ec(False))

    # Three copies of a package binary, owned by the uid the appraise rule is scoped to (lab P2).
    WORK.mkdir(parents=True, exist_ok=True)
    signed, unsigned, tampered = (WORK / f"{n}-echo" for n in ("signed", "unsigned", "tampered"))
    for path in (signed, unsigned, tampered):
        shutil.copy2(SOURCE_BINARY, path)
        os.chown(path, fowner, fowner)

    def sign() -> dict[str, Any]:
        if mutation == "skip-sign":
            return {"skipped": True, "mutation": mutation}
        proc = imaguard("sign", "--key", str(key), "--cert", str(cert_der), str(signed), str(tampered))
        return {"skipped": False, "rc": proc.returncode, "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}

    step("imaguard-sign", sign)

    def xattrs() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        for path in (signed, unsigned, tampered):
            try:
                facts[path.name] = os.getxattr(path, "security.ima").hex()
            except OSError as exc:
                facts[path.name] = None if exc.errno == errno.ENODATA else f"error {exc.errno}"
        return facts

    step("xattrs-after-sign", xattrs)
    # Change one byte of the signed copy (its last byte: ELF section headers, so it would still run).
    with tampered.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))
    step("tamper", lambda: {"path": str(tampered), "xattr_after": xattrs()[tampered.name]})

    def verify() -> dict[str, Any]:
        ok = imaguard("verify", "--cert", str(cert_der), str(signed))
        bad = imaguard("verify", "--cert", str(cert_der), str(tampered))
        return {"signed_rc": ok.returncode, "tampered_rc": bad.returncode, "signed_out": (ok.stdout + ok.stderr)[-800:],
                "tampered_out": (bad.stdout + bad.stderr)[-800:]}  # fmt: skip

    step("imaguard-verify", verify)

    def evmctl() -> dict[str, Any]:
        proc = subprocess.run(
            ["evmctl", "ima_verify", "--key", str(cert_der), str(signed)], capture_output=True, text=True, check=False
        )
        return {"rc": proc.returncode, "out": (proc.stdout + proc.stderr)[-800:]}

    step("evmctl-verify", evmctl)

    rules = [
        "measure func=KEY_CHECK keyrings=_ima",
        "measure func=BPRM_CHECK template=ima-sig",
        f"appraise func=BPRM_CHECK fowner={fowner} appraise_type=imasig",
    ]
    (ART / "policy.txt").write_text("\n".join(rules) + "\n")

    def policy() -> dict[str, Any]:
        n = securityfs.write_policy(rules)
        return {"rules": rules, "written": n, "policy_file_gone": not (Path(securityfs.IMA_DIR) / "policy").exists()}

    step("policy-load", policy)

    def second_policy() -> dict[str, Any]:
        try:
            securityfs.write_policy(rules)
        except ImaguardError as exc:
            return {"refused": True, "reason": exc.reason, "message": str(exc)}
        return {"refused": False}

    step("policy-reload", second_policy)
    # Exec tpm2_pcrread once under the measure rule, so reading PCR 10 later adds no measurement (lab P9).
    step("tpm-warmup", lambda: {"pcr10": pcr10()})

    step("exec-signed", lambda: exec_fact(signed))
    step("exec-unsigned", lambda: exec_fact(unsigned))
    step("exec-tampered", lambda: exec_fact(tampered))

    def audit() -> dict[str, Any]:
        lines = settled_kmsg()
        (ART / "kmsg.txt").write_text("\n".join(lines) + "\n")
        return {
            "type1800": [ln for ln in lines if "type=1800" in ln],
            "integrity": [ln for ln in lines if "integrity" in ln.lower()][-20:],
        }

    step("audit", audit)

    def measurements() -> dict[str, Any]:
        # log, PCR, log again: equal logs mean the PCR matches exactly this log (lab P9).
        before = securityfs.read_measurements()
        banks = pcr10()
        after = securityfs.read_measurements()
        ascii_log = securityfs.read_measurements(securityfs.ASCII_MEASUREMENTS)
        (ART / "binary_runtime_measurements").write_bytes(after)
        (ART / "ascii_runtime_measurements").write_bytes(ascii_log)
        (ART / "pcr10.json").write_text(json.dumps(banks, indent=2, sort_keys=True) + "\n")
        ours = [ln for ln in ascii_log.decode(errors="replace").splitlines() if str(WORK) in ln or " _ima " in ln]
        return {"pcr10": banks, "log_stable": before == after, "binary_bytes": len(after), "entries": ours,
                "count": securityfs.read_counter(), "violations": securityfs.read_counter("violations")}  # fmt: skip

    step("measurements", measurements)
    shutil.copy2(cert_der, ART / "ima-rsa.cert.der")
    shutil.copy2(ec_der, ART / "ima-ec-p256.cert.der")
    (ART / "kernel.txt").write_text(f"{os.uname().release} {os.uname().version}\n" + Path("/proc/cmdline").read_text())
    record("done")
    close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
