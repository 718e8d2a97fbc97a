"""A software TPM (swtpm) on free TCP ports for the tests that quote or read PCRs (no root)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def free_port_pair() -> int:
    """A free port whose successor is free too: the swtpm TCTI finds the control channel at port + 1."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports")


def start_swtpm(state: Path, timeout: float = 30) -> tuple[subprocess.Popen[bytes], str]:
    """swtpm with its state in ``state``, and its TCTI string. Started again on new ports when it
    exits at once: the ports were free when picked, but are released before swtpm binds them and
    can be taken in between; only an answer while our swtpm is alive counts (not whoever took the
    port). ``timeout`` seconds to come up on a loaded machine."""
    for _ in range(5):
        port = free_port_pair()
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server", f"type=tcp,port={port}",
             "--ctrl", f"type=tcp,port={port + 1}", "--flags", "startup-clear,not-need-init"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        tcti = f"swtpm:host=127.0.0.1,port={port}"
        deadline = time.monotonic() + timeout
        while subprocess.run(["tpm2_getcap", "properties-fixed"], env={"TPM2TOOLS_TCTI": tcti},
                             capture_output=True, check=False).returncode != 0:  # fmt: skip
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("swtpm did not come up")
            time.sleep(0.1)
        else:
            if proc.poll() is None:
                return proc, tcti
    raise AssertionError("swtpm exited at start five times")
