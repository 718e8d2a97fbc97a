"""What the appraise scenario must show, as functions over the guest's check records.

Each ``expect_*`` raises AssertionError with a message that says what the kernel did instead. The
normal run and the mutated run (``skip-sign``) are judged by the same functions, which is how
test_mutation.py proves that these expectations can fail.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Any

Checks = dict[str, dict[str, Any]]

__all__ = [
    "Checks",
    "audit_records_for",
    "expect_audit_names_refused",
    "expect_ec_refused",
    "expect_keyring_loaded",
    "expect_measured_with_signature",
    "expect_pcr10_extended",
    "expect_policy_loaded_once",
    "expect_signed_runs",
    "expect_tampered_refused",
    "expect_unsigned_refused",
    "replay_pcr10",
]

MARKER = "imaguard-lab-ok"
EACCES = 13


def _get(checks: Checks, name: str) -> dict[str, Any]:
    rec = checks.get(name)
    assert rec is not None, f"the guest recorded no {name!r} check (scenario stopped early?)"
    assert "error" not in rec, f"guest step {name!r} raised: {rec['error']}\n{rec.get('traceback', '')}"
    return rec


def expect_keyring_loaded(checks: Checks) -> None:
    rec = _get(checks, "keyring-load-rsa")
    assert rec["ring"] == rec["ring_again"], "find_or_create_ima_keyring made a second _ima keyring"
    assert rec["ring_description"] == "_ima", f"keyring is named {rec['ring_description']!r}, not _ima"
    assert rec["key_type"] == "asymmetric", f"the cert became a {rec['key_type']!r} key, not asymmetric"
    assert rec["linked"], "the RSA certificate is not linked into _ima"
    assert _get(checks, "trusted-keyring")["trusted_ima_keyring"] is None, "kernel has a trusted .ima keyring"


def expect_ec_refused(checks: Checks) -> None:
    for name in ("ec-cert-precheck", "ec-cert-kernel"):
        rec = _get(checks, name)
        assert rec["refused"], f"{name}: the kernel accepted an EC P-256 certificate (key {rec.get('key')})"
        assert rec["error_class"] == "UnsupportedError", f"{name}: {rec['error_class']}: {rec['message']}"
        assert "CONFIG_CRYPTO_ECDSA" in rec["message"], f"{name}: message does not name ECDSA: {rec['message']}"


def expect_policy_loaded_once(checks: Checks) -> None:
    rec = _get(checks, "policy-load")
    assert rec["written"] == len(rec["rules"]), f"policy: {rec['written']} of {len(rec['rules'])} rules written"
    again = _get(checks, "policy-reload")
    # Debian 12: no CONFIG_IMA_WRITE_POLICY, the policy file disappears after one load (lab P5).
    assert again["refused"], "a second policy load was accepted"
    assert again["reason"] == "policy-already-loaded", f"second load refused with {again['reason']}: {again['message']}"


def expect_signed_runs(checks: Checks) -> None:
    sign = _get(checks, "imaguard-sign")
    rec = _get(checks, "exec-signed")
    ran = not rec["refused"] and rec["errno"] is None
    assert ran, (
        f"the kernel refused the copy imaguard signed ({rec['path']}): errno {rec['errno']} {rec.get('strerror')}"
        + (" — the signing step was skipped (mutation)" if sign.get("skipped") else f"; imaguard sign: {sign}")
    )
    behaved = rec["rc"] == 0 and rec["stdout"] == MARKER
    assert behaved, f"signed copy ran but misbehaved: {rec}"


def expect_unsigned_refused(checks: Checks) -> None:
    rec = _get(checks, "exec-unsigned")
    refused = rec["refused"] and rec["errno"] == EACCES
    assert refused, f"the kernel ran the UNSIGNED copy {rec['path']}: {rec}"


def audit_records_for(checks: Checks, path: str) -> list[str]:
    return [ln for ln in _get(checks, "audit")["type1800"] if f'name="{path}"' in ln]


def expect_tampered_refused(checks: Checks) -> None:
    """The tampered copy carries imaguard's signature and is refused *because the signature fails*."""
    rec = _get(checks, "exec-tampered")
    refused = rec["refused"] and rec["errno"] == EACCES
    assert refused, f"the kernel ran the TAMPERED copy {rec['path']}: {rec}"
    xattr = _get(checks, "tamper")["xattr_after"]
    signed_by_imaguard = bool(xattr) and str(xattr).startswith("0302")  # sig type 0x03, version 2
    assert signed_by_imaguard, (
        f"the tampered copy {rec['path']} carries no imaguard signature (security.ima={xattr!r}), so its refusal "
        "proves nothing about signature checking (was the signing step skipped?)"
    )
    causes = [m.group(1) for ln in audit_records_for(checks, rec["path"]) if (m := re.search(r"cause=(\S+)", ln))]
    assert "invalid-signature" in causes, f"tampered copy refused, but not for an invalid signature: causes {causes}"


def expect_audit_names_refused(checks: Checks) -> None:
    for name in ("exec-unsigned", "exec-tampered"):
        path = _get(checks, name)["path"]
        lines = audit_records_for(checks, path)
        assert lines, f"no audit type=1800 record names {path}; type=1800 seen: {_get(checks, 'audit')['type1800']}"
        assert all("res=0" in ln for ln in lines), f"audit records for {path} are not denials: {lines}"
    signed = _get(checks, "exec-signed")["path"]
    assert not audit_records_for(checks, signed), f"the signed copy {signed} has an audit denial record"


def expect_measured_with_signature(checks: Checks) -> None:
    """The measurement list has an ima-sig entry for the signed copy carrying imaguard's xattr bytes."""
    sig = _get(checks, "xattrs-after-sign")["signed-echo"]
    assert sig, "the signed copy has no security.ima after imaguard sign"
    entries = [ln.split() for ln in _get(checks, "measurements")["entries"]]
    signed = _get(checks, "exec-signed")["path"]
    mine = [e for e in entries if len(e) >= 5 and e[4] == signed]
    assert mine, f"no measurement entry for {signed}; entries: {entries}"
    assert any(e[2] == "ima-sig" and len(e) >= 6 and e[5] == sig for e in mine), (
        f"no ima-sig entry for {signed} carries imaguard's signature {sig[:24]}…: {mine}"
    )


def expect_pcr10_extended(checks: Checks) -> None:
    pcr = _get(checks, "measurements")["pcr10"]
    for bank, size in (("sha1", 20), ("sha256", 32)):
        value = pcr.get(bank)
        read_ok = bool(value) and len(value) == 2 * size
        assert read_ok, f"PCR 10 {bank} not read: {pcr}"
        assert value != "0" * (2 * size), f"PCR 10 {bank} is all zero: not extended"


def replay_pcr10(binary_log: bytes) -> dict[str, str]:
    """Replay a little-endian ``binary_runtime_measurements`` into PCR 10 (sha1, sha256 banks).

    Test-only helper (the project's parser and replay come with the report issue): enough for
    the ``ima-sig``/``ima-buf``/``ima-ng`` templates the lab produces.
    """
    pcrs = {"sha1": bytes(20), "sha256": bytes(32)}
    off = 0
    while off < len(binary_log):
        pcr_idx, digest = struct.unpack_from("<I20s", binary_log, off)
        off += 24
        (name_len,) = struct.unpack_from("<I", binary_log, off)
        off += 4
        name = binary_log[off : off + name_len]
        off += name_len
        assert name != b"ima", "legacy 'ima' template not handled by this helper"
        (data_len,) = struct.unpack_from("<I", binary_log, off)
        off += 4
        data = binary_log[off : off + data_len]
        off += data_len
        if pcr_idx != 10:
            continue
        violation = digest == bytes(20)
        sha1_x = b"\xff" * 20 if violation else digest
        sha256_x = b"\xff" * 32 if violation else hashlib.sha256(data).digest()
        pcrs["sha1"] = hashlib.sha1(pcrs["sha1"] + sha1_x).digest()
        pcrs["sha256"] = hashlib.sha256(pcrs["sha256"] + sha256_x).digest()
    return {bank: value.hex() for bank, value in pcrs.items()}
