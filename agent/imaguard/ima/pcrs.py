"""Read PCR values from the TPM with ``tpm2_pcrread`` (tpm2-tools), for comparison with a replay."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from imaguard.errors import FormatError, HostStateError, UnsupportedError

__all__ = ["parse_pcrread", "read_pcrs"]

_BANK = re.compile(r"^\s*(sha1|sha256|sha384|sha512|sm3_256)\s*:\s*$")
_VALUE = re.compile(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")
_TIMEOUT = 30


def parse_pcrread(text: str) -> dict[str, dict[int, bytes]]:
    """Parse ``tpm2_pcrread`` output (``sha256:`` then ``  10: 0x…`` lines) into bank -> index -> value."""
    out: dict[str, dict[int, bytes]] = {}
    bank: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if m := _BANK.match(line):
            bank = m.group(1)
            out.setdefault(bank, {})
        elif (m := _VALUE.match(line)) and bank is not None:
            out[bank][int(m.group(1))] = bytes.fromhex(m.group(2))
        elif line.strip():
            raise FormatError(f"tpm2_pcrread output line {n} is not understood: {line.strip()[:60]!r}")
    return {bank: values for bank, values in out.items() if values}


def read_pcrs(
    banks: Sequence[str] = ("sha1", "sha256"), indexes: Sequence[int] = (10,), *, tcti: str | None = None
) -> dict[str, dict[int, bytes]]:
    """PCR values of the TPM (``/dev/tpmrm0`` unless ``tcti`` or ``TPM2TOOLS_TCTI`` says otherwise).

    A bank the TPM does not have is absent from the result (tpm2_pcrread prints nothing for it).
    """
    tool = shutil.which("tpm2_pcrread")
    if tool is None:
        raise UnsupportedError("tpm2_pcrread is not installed (Debian package tpm2-tools)", reason="no-tpm-tools")
    if not (tcti or os.environ.get("TPM2TOOLS_TCTI")) and not Path("/dev/tpmrm0").exists():
        raise UnsupportedError("no TPM: /dev/tpmrm0 does not exist", reason="no-tpm")
    env = dict(os.environ)
    if tcti:
        env["TPM2TOOLS_TCTI"] = tcti
    elif "TPM2TOOLS_TCTI" not in env:
        env["TPM2TOOLS_TCTI"] = "device:/dev/tpmrm0"
    selection = "+".join(f"{bank}:{','.join(str(i) for i in indexes)}" for bank in banks)
    try:
        proc = subprocess.run(
            [tool, selection], capture_output=True, text=True, env=env, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostStateError(f"tpm2_pcrread failed: {exc}", reason="tpm-unreadable") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise HostStateError(f"tpm2_pcrread {selection} failed: {detail[0]}", reason="tpm-unreadable")
    return parse_pcrread(proc.stdout)
