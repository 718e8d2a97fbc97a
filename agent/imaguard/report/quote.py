"""Make a TPM quote over PCR 10 with tpm2-tools (I/O): the host's AK, then ``tpm2_quote``.

The attestation key (AK) is a primary key of the endorsement hierarchy made from one fixed
template (RSA-2048, restricted, RSASSA/SHA-256, fixedTPM). A TPM derives a primary key from its
hierarchy's seed and the template alone, so the same TPM gives the same AK every time (until its
endorsement seed is changed, ``TPM2_ChangeEPS``) and nothing is made persistent in it: a fleet
records the AK once (``imaguard report ak``) and pins it (``report verify --ak``); a report whose
quote is signed by another AK is then refused. Its public key also goes into every report. The
TCTI is the caller's ``TPM2TOOLS_TCTI``, else the kernel's resource manager ``device:/dev/tpmrm0``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from imaguard.errors import HostStateError, UnsupportedError
from imaguard.report.tpmquote import Quote, nonce_data, parse_attest

__all__ = ["attestation_key", "make_quote", "tpm_available"]

_TIMEOUT_S = 120  # key generation in a software TPM under emulation takes seconds
_DEVICE = "/dev/tpmrm0"
# The AK's template. Changing any of it makes every TPM's AK another key: a pinned AK would no
# longer match, so it is fixed for good (a new template needs a new name and a migration note).
_AK_TEMPLATE = ["-C", "e", "-g", "sha256", "-G", "rsa2048:rsassa-sha256:null",
                "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"]  # fmt: skip


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


def _check_tools() -> None:
    if not tpm_available():
        raise UnsupportedError(f"no TPM: {_DEVICE} is absent and TPM2TOOLS_TCTI is not set", reason="no-tpm")
    if shutil.which("tpm2_quote") is None:
        raise UnsupportedError("tpm2_quote not found: install tpm2-tools to quote", reason="no-tpm-tools")


def _load_ak(d: Path) -> None:
    """Load the AK into the TPM as ``d/ak.ctx`` and write its public key to ``d/ak.pem``."""
    # Without a resource manager (a TCTI straight to a TPM simulator) transient objects stay
    # loaded after each tool exits: flush them, or the TPM runs out of object slots.
    _flush(d)
    _run(["tpm2_createprimary", *_AK_TEMPLATE, "-c", "ak.ctx"], d)
    _flush(d)
    _run(["tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pem", "-f", "pem"], d)
    _flush(d)


def _flush(d: Path) -> None:
    _run(["tpm2_flushcontext", "--transient-object"], d)


def _flush_quietly(d: Path) -> None:
    """Flush on the way out, never hiding the error that got us there."""
    with contextlib.suppress(HostStateError, UnsupportedError):
        _flush(d)


def attestation_key() -> bytes:
    """The public key (PEM) of this host's AK: what a fleet records to pin its quotes."""
    _check_tools()
    with tempfile.TemporaryDirectory(prefix="imaguard-ak-") as tmp:
        d = Path(tmp)
        try:
            _load_ak(d)
            return (d / "ak.pem").read_bytes()
        finally:
            _flush_quietly(d)


def make_quote(nonce: str, *, bank: str = "sha256") -> Quote:
    """Quote PCR 10 of ``bank`` with the report's nonce; the PCR value is read from the quote's own
    PCR output, so message, signature and value belong together."""
    _check_tools()
    with tempfile.TemporaryDirectory(prefix="imaguard-quote-") as tmp:
        d = Path(tmp)
        try:
            _load_ak(d)
            _run(["tpm2_quote", "-c", "ak.ctx", "-l", f"{bank}:10", "-q", nonce_data(nonce).hex(), "-m", "quote.msg",
                  "-s", "quote.sig", "-f", "plain", "-o", "quote.pcrs", "-F", "values", "-g", "sha256"], d)  # fmt: skip
        finally:
            _flush_quietly(d)
        attest = (d / "quote.msg").read_bytes()
        parse_attest(attest)  # fail here, not in a verifier, if the tools wrote something else
        return Quote(
            attest=attest,
            signature=(d / "quote.sig").read_bytes(),
            ak_public_pem=(d / "ak.pem").read_bytes(),
            pcr_bank=bank,
            pcr_value=(d / "quote.pcrs").read_bytes(),
        )
