"""Guest scenario for measurement-list captures (``lab capture --scenario measure-log``).

Makes the kernel log what the parser must handle with whatever template the kernel command line
chose (``ima_template=``, ``ima_template_fmt=``, ``ima_canonical_fmt``): executables (BPRM_CHECK),
files read by root (FILE_CHECK) including a name with spaces, and one open-writers violation (a
measured read while a writer holds the file open: zero digest in the log, 0xff extended). Then
it saves the binary and ASCII lists around a PCR 10 read, and runs ``imaguard log --pcr-from-tpm``. Usage: ``python3 measure_log.py PARAMS``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from guestlib import ART, close_results, open_results, record, step

from imaguard.ima import securityfs

WORK = Path("/opt/imaguard-log")
OWNER = 4243  # FILE_CHECK measures only files of this owner: no noise from Python's own reads


def pcr10() -> dict[str, str]:
    proc = subprocess.run(
        ["tpm2_pcrread", "sha1:10+sha256:10"],
        capture_output=True, text=True, check=True, env={**os.environ, "TPM2TOOLS_TCTI": "device:/dev/tpmrm0"},
    )  # fmt: skip
    banks: dict[str, str] = {}
    bank = None
    for line in proc.stdout.splitlines():
        if m := re.match(r"^\s*(sha1|sha256)\s*:\s*$", line):
            bank = m.group(1)
        elif (m := re.match(r"^\s*10\s*:\s*0x([0-9A-Fa-f]+)\s*$", line)) and bank:
            banks[bank] = m.group(1).lower()
    return banks


def main() -> int:
    open_results()
    securityfs.ensure_mounted()
    record("start", kernel=os.uname().release, cmdline=Path("/proc/cmdline").read_text().strip())
    WORK.mkdir(parents=True, exist_ok=True)
    files = {"plain": WORK / "data.txt", "spaced": WORK / "name with spaces.txt", "violation": WORK / "busy.txt"}
    for name, path in files.items():
        path.write_text(f"imaguard measurement capture: {name}\n")
        os.chown(path, OWNER, OWNER)

    rules = [
        "measure func=BPRM_CHECK",
        f"measure func=FILE_CHECK mask=MAY_READ fowner={OWNER}",
    ]
    (ART / "policy.txt").write_text("\n".join(rules) + "\n")
    step("policy-load", lambda: {"written": securityfs.write_policy(rules)})
    # tpm2_pcrread is measured once now, so the PCR read below adds nothing to the list.
    step("tpm-warmup", lambda: {"pcr10": pcr10()})

    def execs() -> dict[str, Any]:
        out = {}
        for tool in ("/usr/bin/true", "/usr/bin/id"):
            out[tool] = subprocess.run([tool], capture_output=True, check=False).returncode
        return out

    step("exec", execs)
    step("read", lambda: {name: files[name].read_text() for name in ("plain", "spaced")})

    def violation() -> dict[str, Any]:
        # ima_rdwr_violation_check: a measured open for read while a writer has the file open.
        writer = files["violation"].open("a")
        try:
            text = files["violation"].read_text()
        finally:
            writer.close()
        return {"read": text, "violations": securityfs.read_counter("violations")}

    step("violation", violation)

    def measurements() -> dict[str, Any]:
        # list, PCR, list again: equal lists mean the PCR matches exactly this list.
        before = securityfs.read_measurements()
        banks = pcr10()
        after = securityfs.read_measurements()
        ascii_log = securityfs.read_measurements(securityfs.ASCII_MEASUREMENTS)
        (ART / "binary_runtime_measurements").write_bytes(after)
        (ART / "ascii_runtime_measurements").write_bytes(ascii_log)
        (ART / "pcr10.json").write_text(json.dumps(banks, indent=2, sort_keys=True) + "\n")
        return {"pcr10": banks, "log_stable": before == after, "binary_bytes": len(after),
                "count": securityfs.read_counter(), "violations": securityfs.read_counter("violations")}  # fmt: skip

    step("measurements", measurements)

    def imaguard_log() -> dict[str, Any]:
        # imaguard's own path on the real kernel and TPM: PCR 10 read first, then the list.
        proc = subprocess.run(
            ["imaguard", "log", "--pcr-from-tpm", "--summary", "--json"], capture_output=True, text=True, check=False,
            timeout=300, env={**os.environ, "TPM2TOOLS_TCTI": "device:/dev/tpmrm0"},
        )  # fmt: skip
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        return {"rc": proc.returncode, "doc": doc, "stderr": proc.stderr[-2000:]}

    step("imaguard-log", imaguard_log)
    (ART / "kernel.txt").write_text(f"{os.uname().release} {os.uname().version}\n" + Path("/proc/cmdline").read_text())
    record("done")
    close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
