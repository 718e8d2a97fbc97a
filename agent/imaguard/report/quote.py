"""Make a TPM quote over PCR 10 with tpm2-tools (I/O): a fresh AK under the EK, then ``tpm2_quote``.

The AK is created for each quote (``tpm2_createek`` + ``tpm2_createak``: RSA-2048, RSASSA/SHA-256)
and its public key goes into the report; nothing is made persistent in the TPM. The TCTI is the
caller's ``TPM2TOOLS_TCTI``, else the kernel's resource manager ``device:/dev/tpmrm0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from imaguard.errors import HostStateError, UnsupportedError
from imaguard.report.tpmquote import Quote, nonce_data, parse_attest

__all__ = ["make_quote", "tpm_available"]

_TIMEOUT_S = 120  # key generation in a software TPM under emulation takes seconds
_DEVICE = "/dev/tpmrm0"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TPM2TOOLS_TCTI", f"device:{_DEVICE}")
    return env


def tpm_available() -> bool:
    return "TPM2TOOLS_TCTI" in os.environ or Path(_DEVICE).exists()


def _run(argv: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=_TIMEOUT_S,
                              check=False)  # fmt: skip
    except FileNotFoundError as exc:
        raise UnsupportedError(f"{argv[0]} not found: install tpm2-tools to quote", reason="no-tpm-tools") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostStateError(f"{argv[0]} timed out after {_TIMEOUT_S} s", reason="tpm-error") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise HostStateError(f"{argv[0]} failed (exit {proc.returncode}): {' / '.join(tail)}", reason="tpm-error")


def make_quote(nonce: str, *, bank: str = "sha256") -> Quote:
    """Quote PCR 10 of ``bank`` with the report's nonce; the PCR value is read from the quote's own
    PCR output, so message, signature and value belong together."""
    if not tpm_available():
        raise UnsupportedError(f"no TPM: {_DEVICE} is absent and TPM2TOOLS_TCTI is not set", reason="no-tpm")
    if shutil.which("tpm2_quote") is None:
        raise UnsupportedError("tpm2_quote not found: install tpm2-tools to quote", reason="no-tpm-tools")
    with tempfile.TemporaryDirectory(prefix="imaguard-quote-") as tmp:
        d = Path(tmp)
        # Without a resource manager (a TCTI straight to a TPM simulator) transient objects stay
        # loaded after each tool exits: flush them, or the TPM runs out of object slots.
        flush = ["tpm2_flushcontext", "--transient-object"]
        _run(flush, d)
        _run(["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], d)
        _run(flush, d)
        _run(["tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
              "-u", "ak.pem", "-f", "pem", "-n", "ak.name"], d)  # fmt: skip
        _run(flush, d)
        _run(["tpm2_quote", "-c", "ak.ctx", "-l", f"{bank}:10", "-q", nonce_data(nonce).hex(), "-m", "quote.msg",
              "-s", "quote.sig", "-f", "plain", "-o", "quote.pcrs", "-F", "values", "-g", "sha256"], d)  # fmt: skip
        attest = (d / "quote.msg").read_bytes()
        parse_attest(attest)  # fail here, not in a verifier, if the tools wrote something else
        return Quote(
            attest=attest,
            signature=(d / "quote.sig").read_bytes(),
            ak_public_pem=(d / "ak.pem").read_bytes(),
            pcr_bank=bank,
            pcr_value=(d / "quote.pcrs").read_bytes(),
        )
