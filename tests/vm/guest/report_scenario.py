"""Guest side of the report scenario (issue 7): trace running processes to packages, quote, sign.

Runs as PID 1's child in the lab VM (init mode, swtpm TPM). Inputs in /lab/keys: the lab keys and
the digest index of this image's packages built on the host (``index/index.sqlite``). psutil is
the image's own python3-psutil, as on an enrolled host.

Order matters for the Keylime peer check, which needs a log before and after an unpackaged exec:
1. before any measure rule: make a tampered copy of a package binary *at its package path*
   (/usr/bin/sleep, one byte appended) and an unpackaged binary in /usr/bin (a copy of sleep with
   other bytes appended), so no file is written while measured (no violations);
2. load ``measure`` rules for BPRM_CHECK and MMAP_CHECK (ima-sig template);
3. start a python3 sleeper, warm up tpm2 tools, make the Keylime policy with ``imaguard report
   --format keylime-policy``; snapshot the log (``before``);
4. start the unpackaged and the tampered binaries (sleepers); snapshot the log (``after``);
5. ``imaguard report --nonce N --sign KEY --cert C`` (TPM quote), ``imaguard report ak`` (the AK
   that signed it, for the host to pin), and the CEL export.
The host judges everything (tests/vm/test_report_vm.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guestlib import ART, KEYS, close_results, open_results, record, step

from imaguard.ima import securityfs

INDEX = KEYS / "index"
TAMPERED = Path("/usr/bin/sleep")
UNPACKAGED = Path("/usr/bin/lab-unpackaged-sleep")
PY_SLEEPER = "import time; time.sleep(900)"


def imaguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imaguard.cli", *args], capture_output=True, text=True,
                          check=False, timeout=600)  # fmt: skip


def snapshot(name: str) -> dict[str, Any]:
    ascii_log = securityfs.read_measurements(securityfs.ASCII_MEASUREMENTS)
    binary = securityfs.read_measurements()
    (ART / f"ascii_runtime_measurements.{name}").write_bytes(ascii_log)
    (ART / f"binary_runtime_measurements.{name}").write_bytes(binary)
    return {"entries": ascii_log.count(b"\n"), "bytes": len(binary)}


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    nonce = str(params["nonce"])
    open_results()
    record("start", kernel=os.uname().release, python=sys.version.split()[0])
    step("securityfs-mount", lambda: {"mounted_now": securityfs.ensure_mounted()})

    def prepare() -> dict[str, Any]:
        shutil.copy2(TAMPERED, UNPACKAGED)
        with UNPACKAGED.open("ab") as f:
            f.write(b"\0imaguard-lab unpackaged\0")
        with TAMPERED.open("ab") as f:
            f.write(b"\0imaguard-lab tampered\0")
        versions = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Source}\\n",
                                   "python3.11-minimal", "coreutils"], capture_output=True, text=True, check=True)  # fmt: skip
        return {"dpkg": versions.stdout.splitlines(), "python3": os.path.realpath("/usr/bin/python3")}

    step("prepare", prepare)
    rules = ["measure func=BPRM_CHECK template=ima-sig", "measure func=MMAP_CHECK mask=MAY_EXEC template=ima-sig"]
    (ART / "policy.txt").write_text("\n".join(rules) + "\n")
    step("policy-load", lambda: {"written": securityfs.write_policy(rules)})

    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> int:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc.pid

    step("python-sleeper", lambda: {"pid": start(["/usr/bin/python3", "-c", PY_SLEEPER])})
    step("tpm-warmup", lambda: {"rc": subprocess.run(["tpm2_pcrread", "sha256:10"], capture_output=True,
                                                       check=False).returncode})  # fmt: skip

    def policy() -> dict[str, Any]:
        out = ART / "keylime-policy.json"
        proc = imaguard("report", "--format", "keylime-policy", "--index", str(INDEX),
                        "--cert", str(KEYS / "ima-rsa.cert.der"), "-o", str(out))  # fmt: skip
        return {"rc": proc.returncode, "stderr": proc.stderr[-2000:]}

    step("keylime-policy", policy)
    # Every tool the later steps exec is measured now, so "before" differs from "after" only by the sleepers.
    step("warm-imaguard", lambda: {"rc": imaguard("report", "--help").returncode})
    step("snapshot-before", lambda: snapshot("before"))
    step("unpackaged-sleeper", lambda: {"pid": start([str(UNPACKAGED), "900"])})
    step("tampered-sleeper", lambda: {"pid": start([str(TAMPERED), "900"])})
    time.sleep(1)  # let both execs complete before the snapshot
    step("snapshot-after", lambda: snapshot("after"))

    def report() -> dict[str, Any]:
        t0 = time.monotonic()
        proc = imaguard("report", "--nonce", nonce, "--sign", str(KEYS / "ima-rsa.key.pem"),
                        "--cert", str(KEYS / "ima-rsa.cert.der"), "--index", str(INDEX),
                        "-o", str(ART / "report.json"))  # fmt: skip
        return {"rc": proc.returncode, "stderr": proc.stderr[-3000:], "seconds": round(time.monotonic() - t0, 1)}

    step("report", report)

    def ak() -> dict[str, Any]:  # after the report: its tpm2 tools' execs must not land between its reads
        proc = imaguard("report", "ak", "-o", str(ART / "ak.pem"))
        return {"rc": proc.returncode, "stderr": proc.stderr[-2000:]}

    step("ak", ak)

    def cel() -> dict[str, Any]:
        proc = imaguard("report", "--format", "cel", "--index", str(INDEX), "--no-processes",
                        "--file", str(ART / "binary_runtime_measurements.after"), "-o", str(ART / "cel.json"))  # fmt: skip
        return {"rc": proc.returncode, "stderr": proc.stderr[-2000:]}

    step("cel", cel)
    step("pids", lambda: {"sleepers": [p.pid for p in procs], "alive": [p.poll() is None for p in procs]})
    for p in procs:
        p.kill()
        p.wait()
    record("done")
    close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
