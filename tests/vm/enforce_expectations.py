"""What the enrolled-image scenario (issue 5 item 6) must show, over the guest's check records.

As in expectations.py, each ``expect_*`` raises AssertionError saying what the kernel did instead;
the normal run and the ``skip-enroll`` mutation (the unenrolled base image under the same policy)
are judged by the same functions, which is how test_enroll_enforce.py proves they can fail.
"""

from __future__ import annotations

import re
from typing import Any

from expectations import Checks

__all__ = [
    "EVERYDAY",
    "REFUSED_EXECS",
    "expect_everyday_runs",
    "expect_exec_refused",
    "expect_keyring_and_policy",
    "expect_labelled_copy_runs",
    "expect_measured_files_labelled",
    "expect_mmap_refused",
    "expect_no_other_denials",
]

EACCES = 13
EVERYDAY = ("ls", "python3", "apt-get", "dpkg", "systemctl", "sh-pipeline")
# check name -> the audit cause the kernel must give
REFUSED_EXECS = {
    "exec-tampered-copy": "invalid-signature",
    "exec-unlabelled-copy": "IMA-signature-required",
    "exec-unpackaged-script": "IMA-signature-required",
    "exec-lab-wrapper": "IMA-signature-required",
}
MARKER = "imaguard-lab-ok"


def _get(checks: Checks, name: str) -> dict[str, Any]:
    rec = checks.get(name)
    assert rec is not None, f"the guest recorded no {name!r} check (scenario stopped early?)"
    assert "error" not in rec, f"guest step {name!r} raised: {rec['error']}\n{rec.get('traceback', '')}"
    return rec


def _skipped_enroll(checks: Checks) -> str:
    if checks.get("start", {}).get("mutation") == "skip-enroll":
        return " — the image was not enrolled (mutation skip-enroll)"
    return ""


def _causes(checks: Checks, path: str) -> list[str]:
    lines = [ln for ln in _get(checks, "audit")["type1800"] if f'name="{path}"' in ln]
    return [m.group(1) for ln in lines if (m := re.search(r"cause=(\S+)", ln))]


def expect_keyring_and_policy(checks: Checks) -> None:
    assert _get(checks, "keyring-load")["linked"], "the enrollment certificate is not linked into _ima"
    assert _get(checks, "guest-keys")["files"] == ["ima-rsa.cert.der", "ima-rsa.cert.pem"], (
        "the guest must get the certificate only, never the signing key"
    )
    rec = _get(checks, "policy-load")
    assert rec["written"] == len(rec["rules"]), f"policy: {rec['written']} of {len(rec['rules'])} rules written"
    for rule in ("appraise func=BPRM_CHECK uid=0", "appraise func=MMAP_CHECK mask=MAY_EXEC uid=0"):
        assert any(r.startswith(rule) for r in rec["rules"]), f"policy lacks {rule!r}: {rec['rules']}"


def expect_everyday_runs(checks: Checks, name: str) -> dict[str, Any]:
    """The command started (no EACCES); its exit code is returned to the caller to judge or record."""
    rec = _get(checks, f"run-{name}")
    assert rec["started"], (
        f"{name}: {' '.join(rec['argv'])} was refused: errno {rec['errno']} {rec.get('strerror')}{_skipped_enroll(checks)}"
    )
    return rec


def expect_labelled_copy_runs(checks: Checks) -> None:
    rec = _get(checks, "run-labelled-copy")
    assert rec["started"], f"a labelled copy of a package binary was refused: {rec}{_skipped_enroll(checks)}"
    assert rec["rc"] == 0, f"labelled copy ran but failed: {rec}"
    assert rec["stdout"].strip() == MARKER, f"labelled copy ran but printed {rec['stdout']!r}"


def expect_exec_refused(checks: Checks, name: str) -> None:
    rec = _get(checks, name)
    assert not rec["started"], f"{name}: the kernel RAN {rec['argv'][0]} (exit {rec.get('rc')})"
    assert rec["errno"] == EACCES, f"{name}: refused with errno {rec['errno']}, not EACCES: {rec}"
    if name == "exec-tampered-copy":
        xattr = _get(checks, "prepared")["tampered-copy"]["xattr"]
        signed = bool(xattr) and str(xattr).startswith("0302")  # sig type 0x03, version 2
        assert signed, (
            f"the tampered copy carries no enrollment signature (security.ima={xattr!r}), so its refusal proves "
            f"nothing about a changed byte{_skipped_enroll(checks)}"
        )
    path = rec["path"]
    causes = _causes(checks, path)
    want = REFUSED_EXECS[name]
    assert want in causes, f"{name}: no audit type=1800 cause={want} names {path}; causes {causes}"


def expect_mmap_refused(checks: Checks) -> None:
    good = _get(checks, "mmap-labelled-lib")
    mapped = not good["mmap_refused"] and good["dlopen_ok"]
    assert mapped, (
        f"a labelled copy of a package library could not be mapped executable: {good}{_skipped_enroll(checks)}"
    )
    bad = _get(checks, "mmap-unlabelled-lib")
    refused = bad["mmap_refused"] and bad["mmap_errno"] == EACCES
    assert refused, f"unlabelled library mapped PROT_EXEC: {bad}"
    assert not bad["dlopen_ok"], f"dlopen of the unlabelled library succeeded: {bad}"
    assert "IMA-signature-required" in _causes(checks, bad["path"]), f"no audit record for {bad['path']}"


def _deliberate(checks: Checks) -> set[str]:
    paths = {_get(checks, n)["path"] for n in REFUSED_EXECS}
    paths.add(_get(checks, "mmap-unlabelled-lib")["path"])
    return paths


def expect_no_other_denials(checks: Checks) -> None:
    """Every appraisal denial in the kernel log is one of the deliberate ones: the guest kept working."""
    deliberate = _deliberate(checks)
    others = [
        ln
        for ln in _get(checks, "audit")["type1800"]
        if not (m := re.search(r'name="([^"]*)"', ln)) or m.group(1) not in deliberate
    ]
    assert not others, f"{len(others)} other appraisal denials{_skipped_enroll(checks)}: {others[:10]}"


def expect_measured_files_labelled(checks: Checks) -> None:
    """Every file measured under the policy (exec or exec-mmap) carried a signature, except the deliberate ones."""
    rec = _get(checks, "measurements")
    deliberate = _deliberate(checks)
    # boot_aggregate is the TPM's entry, not a file
    unlabelled = sorted({path for path, has_sig in rec["files"] if not has_sig} - deliberate - {"boot_aggregate"})
    assert rec["ima_sig_entries"] > 0, "no ima-sig measurements"
    assert not unlabelled, f"measured without a signature: {unlabelled[:20]}{_skipped_enroll(checks)}"
