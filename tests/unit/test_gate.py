"""The enforce gate (pure): which files the appraise rules cover, and why a covered file would be denied."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima import coverage, keyring
from imaguard.ima.gate import (
    REFUSAL_REASONS,
    Decision,
    FileFacts,
    FileKind,
    FsFacts,
    Uncovered,
    classify,
    covering_rules,
    covers_plain_files,
    elf_shared_object,
    fs_excluded,
    run_gate,
)
from imaguard.ima.policy import parse_policy
from imaguard.ima.xattr import ImaDigest, ImaSignature, OtherForm, XattrType

ROOT = Path(__file__).resolve().parents[2]
EXEC_POLICY = parse_policy((ROOT / "policies" / "appraise-exec.policy").read_text())
EXT4 = FsFacts(0xEF53, "ext4", "8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6")
TMPFS = FsFacts(0x01021994, "tmpfs")
KEY = bytes.fromhex("17b7ae8b")
OTHER_KEY = bytes.fromhex("01020304")
LOADED = frozenset({KEY})


def sig(key: bytes = KEY, version: int = 2) -> ImaSignature:
    xtype = XattrType.DIGSIG if version == 2 else XattrType.VERITY_DIGSIG
    return ImaSignature(HashAlgo.SHA256, key, b"\x01" * 256, version, xtype)


def facts(path: str = "/usr/bin/prog", mode: int = 0o755, fs: FsFacts = EXT4, uid: int = 0, **kw: object) -> FileFacts:
    return FileFacts(path, classify(path, mode), fs, uid, 0, **kw)  # type: ignore[arg-type]


def test_classify() -> None:
    assert classify("/usr/bin/ls", 0o755) == {FileKind.EXECUTABLE}
    assert classify("/usr/lib/x86_64-linux-gnu/libc.so.6", 0o644) == {FileKind.SHARED_OBJECT}
    assert classify("/usr/lib/python3/dist-packages/_foo.cpython-311-x86_64-linux-gnu.so", 0o644) == {
        FileKind.SHARED_OBJECT
    }
    assert classify("/usr/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko.xz", 0o644) == {FileKind.KERNEL_MODULE}
    assert classify("/usr/lib/firmware/iwlwifi.ucode", 0o644) == {FileKind.FIRMWARE}
    assert classify("/boot/vmlinuz-6.1.0-50-amd64", 0o644) == {FileKind.KEXEC_IMAGE}
    assert classify("/etc/passwd", 0o644) == {FileKind.OTHER}
    assert classify("/opt/blob", 0o644, elf_shared_object=True) == {FileKind.SHARED_OBJECT}
    assert classify("/opt/libx.so.old", 0o644) == {FileKind.OTHER}


def test_shared_object_names_as_enroll_signs_them() -> None:
    # sign/plan.py takes libfoo.so.0d.0.0 for a shared object; the gate must too, or it misses what enroll signed.
    assert classify("/usr/lib/x86_64-linux-gnu/libstemmer.so.0d.0.0", 0o644) == {FileKind.SHARED_OBJECT}
    assert classify("/usr/lib/libx.so.old", 0o644) == {FileKind.OTHER}


def elf_header(ei_class: int = 2, ei_data: int = 1, e_type: int = 3, e_machine: int = 62) -> bytes:
    order = "little" if ei_data == 1 else "big"
    return (b"\x7fELF" + bytes([ei_class, ei_data, 1, 0]) + bytes(8) + e_type.to_bytes(2, order)  # type: ignore[arg-type]
            + e_machine.to_bytes(2, order) + bytes(44))  # type: ignore[arg-type]  # fmt: skip


def test_elf_shared_object_header() -> None:
    amd64 = frozenset({62, 3})
    assert elf_shared_object(elf_header(), amd64)
    assert elf_shared_object(elf_header(ei_class=1, e_machine=3), amd64)  # i386 multiarch
    assert elf_shared_object(elf_header(ei_data=2, e_machine=22), frozenset({22}))  # s390x: big-endian
    assert elf_shared_object(elf_header(e_machine=22))  # no machines given: any
    assert not elf_shared_object(elf_header(ei_data=2, e_machine=22), amd64)  # ld.so refuses it unmapped
    assert not elf_shared_object(elf_header(e_type=2), amd64)  # ET_EXEC
    assert not elf_shared_object(elf_header(e_type=1), amd64)  # ET_REL: a .ko, an .o
    assert not elf_shared_object(elf_header(ei_class=3), amd64)
    assert not elf_shared_object(elf_header()[:19], amd64)
    assert not elf_shared_object(b"#!/bin/sh\n" + bytes(60), amd64)


def test_all_signed_allows() -> None:
    files = [facts(xattr=sig(), signature_valid=True), facts("/usr/lib/libz.so.1", 0o644, xattr=sig(), signature_valid=True)]
    result = run_gate(EXEC_POLICY, files, LOADED)
    assert result.decision is Decision.ALLOW
    assert (result.in_scope, result.uncovered) == (2, ())


BPRM_LINE = next(r.line for r in EXEC_POLICY.rules if r.action.value == "appraise" and r.func and r.func.value == "BPRM_CHECK")


@pytest.mark.parametrize(
    ("kw", "reason", "detail"),
    [
        ({}, "no-signature", "no security.ima"),
        ({"xattr": sig(OTHER_KEY), "signature_valid": True}, "unknown-key", "signed with key 01020304, which is not loaded"),
        ({"xattr": sig(), "signature_valid": False}, "bad-signature", "the signature does not verify with key 17b7ae8b"),
        ({"xattr": sig()}, "unchecked-signature", "key 17b7ae8b is loaded but no certificate was given to check it"),
        ({"xattr": ImaDigest(HashAlgo.SHA256, bytes(32)), "digest_matches": True}, "digest-only",
         "security.ima holds a digest-ng hash, the rule requires a signature"),
        ({"xattr": sig(version=3)}, "unsupported-form", "security.ima is a fs-verity value"),
        ({"xattr": OtherForm("sigv1", b"\x03\x01")}, "unsupported-form", "security.ima is a sigv1 value"),
        ({"xattr_error": "malformed"}, "malformed", "security.ima cannot be used (malformed)"),
        ({"xattr_error": "unsupported-fs"}, "unsupported-fs", "security.ima cannot be used (unsupported-fs)"),
    ],
)  # fmt: skip
def test_refusal_reasons(kw: dict[str, object], reason: str, detail: str) -> None:
    result = run_gate(EXEC_POLICY, [facts(**kw), facts("/usr/bin/ok", xattr=sig(), signature_valid=True)], LOADED)
    assert result.decision is Decision.REFUSE
    assert result.uncovered == (Uncovered("/usr/bin/prog", reason, detail, BPRM_LINE),)
    assert reason in REFUSAL_REASONS


def test_hash_is_enough_without_imasig() -> None:
    policy = parse_policy("appraise func=BPRM_CHECK\n")
    digest = ImaDigest(HashAlgo.SHA256, bytes(32))
    assert run_gate(policy, [facts(xattr=digest, digest_matches=True)], LOADED).allowed
    bad = run_gate(policy, [facts(xattr=digest, digest_matches=False)], LOADED)
    assert [u.reason for u in bad.uncovered] == ["bad-digest"]


def test_pseudo_filesystems_and_plain_files_are_out_of_scope() -> None:
    files = [facts(fs=TMPFS), facts("/etc/passwd", 0o644), facts("/proc/self/exe", fs=FsFacts(0x9FA0, "proc"))]
    result = run_gate(EXEC_POLICY, files, LOADED)
    assert (result.decision, result.in_scope) == (Decision.ALLOW, 0)


def test_noexec_mount_leaves_exec_hooks_out() -> None:
    vfat = FsFacts(0x4D44, "vfat", noexec=True)
    assert covering_rules(EXEC_POLICY, facts("/boot/efi/EFI/debian/shimx64.efi", fs=vfat)) == ()
    # A module on a noexec mount is still loaded through MODULE_CHECK.
    assert covering_rules(EXEC_POLICY, facts("/mnt/x.ko", 0o644, fs=vfat))
    exec_vfat = FsFacts(0x4D44, "vfat")
    result = run_gate(EXEC_POLICY, [facts("/boot/efi/x", fs=exec_vfat, xattr_error="unsupported-fs")], LOADED)
    assert [u.reason for u in result.uncovered] == ["unsupported-fs"]


def test_fowner_scoped_rule() -> None:
    # Lab note P2: scope the rule to one owner while testing.
    policy = parse_policy("appraise func=BPRM_CHECK fowner=4242 appraise_type=imasig\n")
    result = run_gate(policy, [facts(uid=0), facts("/opt/lab/echo", uid=4242)], LOADED)
    assert [u.path for u in result.uncovered] == ["/opt/lab/echo"]
    assert result.in_scope == 1


def test_first_match_decides() -> None:
    excluded = parse_policy("dont_appraise fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6\nappraise func=BPRM_CHECK\n")
    assert covering_rules(excluded, facts()) == ()
    covered = parse_policy("appraise func=BPRM_CHECK\ndont_appraise fsname=ext4\n")
    assert [r.line for r in covering_rules(covered, facts())] == [1]
    # A dont_appraise for another hook does not exclude BPRM_CHECK.
    other_hook = parse_policy("dont_appraise func=FILE_CHECK\nappraise func=BPRM_CHECK\n")
    assert [r.line for r in covering_rules(other_hook, facts())] == [2]


def test_unknowable_conditions_are_taken_on_the_safe_side() -> None:
    # uid= depends on the process: an appraise rule with it covers, a dont_appraise rule does not exclude.
    maybe_covers = parse_policy("appraise func=BPRM_CHECK uid=1000\nappraise func=BPRM_CHECK appraise_type=imasig\n")
    assert [r.line for r in covering_rules(maybe_covers, facts())] == [1, 2]
    digest = ImaDigest(HashAlgo.SHA256, bytes(32))
    # The later imasig rule may be the one that decides: a hash is not enough.
    assert [u.reason for u in run_gate(maybe_covers, [facts(xattr=digest, digest_matches=True)], LOADED).uncovered] == [
        "digest-only"
    ]
    not_excluding = parse_policy("dont_appraise obj_type=bin_t\nappraise func=BPRM_CHECK\n")
    assert [r.line for r in covering_rules(not_excluding, facts())] == [2]
    unknown_uuid = parse_policy("appraise fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6 func=BPRM_CHECK\n")
    assert covering_rules(unknown_uuid, facts(fs=FsFacts(0xEF53, "ext4")))


def test_masks() -> None:
    exec_only = parse_policy("appraise func=MMAP_CHECK mask=MAY_EXEC\n")
    assert covering_rules(exec_only, facts("/usr/lib/libz.so.1", 0o644))
    reads = parse_policy("appraise func=FILE_CHECK mask=MAY_READ\n")
    assert covering_rules(reads, facts("/etc/passwd", 0o644))
    writes = parse_policy("appraise func=FILE_CHECK mask=^MAY_WRITE\n")
    assert covering_rules(writes, facts("/etc/passwd", 0o644))
    appends = parse_policy("appraise func=BPRM_CHECK mask=MAY_READ\n")
    assert covering_rules(appends, facts()) == ()


def test_file_check_exec_mask_covers_executables() -> None:
    # Regression: execve opens the program with acc_mode MAY_EXEC and ima_file_check() passes it on,
    # so FILE_CHECK mask=MAY_EXEC appraises every program run; the gate left them out of scope.
    policy = parse_policy("appraise func=FILE_CHECK mask=MAY_EXEC appraise_type=imasig\n")
    result = run_gate(policy, [facts(), facts("/etc/passwd", 0o644)], LOADED)
    assert (result.in_scope, result.uncovered) == (1, (Uncovered("/usr/bin/prog", "no-signature", "no security.ima", 1),))
    assert covering_rules(parse_policy("appraise func=FILE_CHECK mask=^MAY_EXEC\n"), facts())
    # may_open() refuses an exec open on a noexec mount before IMA is asked.
    assert covering_rules(policy, facts(fs=FsFacts(0xEF53, "ext4", noexec=True))) == ()


@pytest.mark.parametrize(("mask", "plain", "program"), [
    ("MAY_READ", True, True),
    ("MAY_WRITE", True, True),
    ("MAY_APPEND", False, False),  # exact: no open(2) has APPEND without READ or WRITE
    ("^MAY_APPEND", True, True),
    ("^MAY_READ", True, True),
    ("MAY_EXEC", False, True),
])  # fmt: skip
def test_file_check_masks_match_as_the_kernel_does(mask: str, plain: bool, program: bool) -> None:
    # ima_match_rules: mask= must equal the hook's mask, ^mask= must share a bit with it.
    policy = parse_policy(f"appraise func=FILE_CHECK mask={mask}\n")
    assert bool(covering_rules(policy, facts("/etc/passwd", 0o644))) is plain
    assert bool(covering_rules(policy, facts())) is program


def test_rules_without_func_cover_every_file() -> None:
    policy = parse_policy("dont_appraise fsmagic=0x1021994\nappraise fowner=0\n")
    assert covers_plain_files(policy)
    assert not covers_plain_files(EXEC_POLICY)
    assert covering_rules(policy, facts("/etc/passwd", 0o644))
    assert covering_rules(policy, facts("/etc/passwd", 0o644, fs=TMPFS)) == ()


def test_modules() -> None:
    module = facts("/usr/lib/modules/6.1.0-50-amd64/kernel/fs/fat/vfat.ko", 0o644)
    assert [r.func.value for r in covering_rules(EXEC_POLICY, module) if r.func] == ["MODULE_CHECK"]


def test_fs_excluded() -> None:
    assert fs_excluded(EXEC_POLICY, TMPFS)
    assert fs_excluded(EXEC_POLICY, FsFacts(0x9FA0, "proc"))
    assert not fs_excluded(EXEC_POLICY, EXT4)
    assert fs_excluded(parse_policy("measure func=BPRM_CHECK\n"), EXT4)
    # A dont_appraise limited to one hook does not exclude the filesystem.
    assert not fs_excluded(parse_policy("dont_appraise fsname=ext4 func=BPRM_CHECK\nappraise\n"), EXT4)


def test_no_appraise_rules_allow() -> None:
    result = run_gate(parse_policy("measure func=BPRM_CHECK\n"), [facts()], LOADED)
    assert (result.decision, result.in_scope, result.appraise_rules) == (Decision.ALLOW, 0, 0)


# --- pure parsers of the adapter --------------------------------------------------------------

MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:5 / /dev rw,nosuid - devtmpfs udev rw,size=1k
24 22 0:21 / /tmp\040dir rw,nosuid,nodev,noexec shared:7 - tmpfs tmpfs rw
"""


def test_parse_mountinfo() -> None:
    assert coverage.parse_mountinfo(MOUNTINFO) == (
        coverage.Mount("/", "ext4", noexec=False),
        coverage.Mount("/dev", "devtmpfs", noexec=False),
        coverage.Mount("/tmp dir", "tmpfs", noexec=True),
    )
    with pytest.raises(FormatError, match="line 1"):
        coverage.parse_mountinfo("garbage\n")


def test_mount_of_takes_the_deepest_and_of_stacked_mounts_the_top_one() -> None:
    mounts = coverage.parse_mountinfo(MOUNTINFO + "25 24 0:30 / /tmp\\040dir rw,relatime - ext4 /dev/vdb rw\n"
                                      "26 22 0:31 / /mnt rw - fuse.sshfs host:/ rw\n")
    assert coverage.mount_of("/tmp dir/x", mounts) == coverage.Mount("/tmp dir", "ext4", noexec=False)  # not the hidden tmpfs
    assert coverage.mount_of("/usr/bin", mounts) == coverage.Mount("/", "ext4", noexec=False)
    assert coverage.mount_of("/mnt/a", mounts) == coverage.Mount("/mnt", "fuse.sshfs", noexec=False)
    # fsname= compares the superblock's type: FUSE mounts show as fuse.SUBTYPE in mountinfo.
    assert [coverage.fs_type_name(t) for t in ("fuse.sshfs", "fuseblk", "ext4")] == ["fuse", "fuseblk", "ext4"]


def test_key_id_from_description() -> None:
    # /proc/keys names an x509 key "CN: <SKID hex>"; IMA matches the SKID's last 4 bytes.
    assert coverage.key_id_from_description("imaguard lab: 5a1b9c2d7e3f40112233445566778899aabbccdd") == bytes.fromhex(
        "aabbccdd"
    )
    assert coverage.key_id_from_description("no skid") is None
    assert coverage.key_id_from_description("x: zz") is None


# /proc/keys as security/keys/proc.c prints it (type cut to 9 characters): a key in each IMA keyring.
PROC_KEYS_BOTH = """\
0a3a6a1d I--Q---     1 perm 1f0b0000     0     0 keyring   _ima: 1
1b9e4c27 I------     1 perm 1f030000     0     0 asymmetri stale lab key: 9d1c0e2aa7cd27be2f0bd1c4ef44cfc611111111: X509.rsa 11111111 []
33c6aa05 I------     1 perm 1f0b0000     0     0 keyring   .ima: 1
44d7bb16 I------     1 perm 1f030000     0     0 asymmetri fleet IMA key: 9d1c0e2aa7cd27be2f0bd1c4ef44cfc622222222: X509.rsa 22222222 []
"""
LINKS = {0x0A3A6A1D: (0x1B9E4C27,), 0x33C6AA05: (0x44D7BB16,)}


def _no_describe(serial: int) -> str:
    raise AssertionError(f"key {serial:08x} is in /proc/keys: no keyctl describe needed")


def test_only_the_keyring_the_kernel_verifies_against_counts() -> None:
    """Regression: keys in _ima counted although a kernel with .ima (CONFIG_INTEGRITY_TRUSTED_KEYRING)
    never looks there (security/integrity/digsig.c keyring_name)."""
    keys = keyring.parse_proc_keys(PROC_KEYS_BOTH)
    found = coverage.ima_keyring_keys(keys, LINKS.__getitem__, _no_describe)
    assert found == coverage.KernelKeys(".ima", frozenset({bytes.fromhex("22222222")}))
    without_trusted = tuple(k for k in keys if k.description != ".ima")  # no CONFIG_INTEGRITY_TRUSTED_KEYRING
    found = coverage.ima_keyring_keys(without_trusted, LINKS.__getitem__, _no_describe)
    assert found == coverage.KernelKeys("_ima", frozenset({bytes.fromhex("11111111")}))
    # .ima exists but is empty: nothing verifies, even with keys in _ima
    assert coverage.ima_keyring_keys(keys, {0x0A3A6A1D: (0x1B9E4C27,), 0x33C6AA05: ()}.__getitem__,
                                     _no_describe) == coverage.KernelKeys(".ima", frozenset())  # fmt: skip
    assert coverage.ima_keyring_keys(keys[1:2], LINKS.__getitem__, _no_describe) is None
    # a linked key /proc/keys does not show (not ours to view) is named by keyctl describe
    hidden = coverage.ima_keyring_keys(keys[2:3], LINKS.__getitem__, lambda _s: "hidden: aabbccdd00112233")
    assert hidden == coverage.KernelKeys(".ima", frozenset({bytes.fromhex("00112233")}))


def test_appraise_algos_denies_a_file_whose_security_ima_algorithm_is_left_out() -> None:
    """Regression (audit): process_measurement (6.1) denies "denied-hash-algorithm" after a pass."""
    policy = parse_policy("appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512\n")
    result = run_gate(policy, [facts(xattr=sig(), signature_valid=True)], LOADED)
    assert result.uncovered == (Uncovered(
        "/usr/bin/prog", "denied-hash-algo",
        "security.ima is a sha256 signature, the rule allows only appraise_algos=sha512", 1),)  # fmt: skip
    assert "denied-hash-algo" in REFUSAL_REASONS
    allowed = parse_policy("appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512,sha256\n")
    assert run_gate(allowed, [facts(xattr=sig(), signature_valid=True)], LOADED).allowed
    # A hash is held to it too (its algorithm byte), and a failing signature is reported as such first.
    hashed = parse_policy("appraise func=BPRM_CHECK appraise_algos=sha512\n")
    digest = ImaDigest(HashAlgo.SHA256, bytes(32))
    assert [u.reason for u in run_gate(hashed, [facts(xattr=digest, digest_matches=True)], LOADED).uncovered] == [
        "denied-hash-algo"
    ]
    assert [u.reason for u in run_gate(policy, [facts(xattr=sig(), signature_valid=False)], LOADED).uncovered] == [
        "bad-signature"
    ]


def test_verity_rule_needs_a_v3_signature() -> None:
    """Regression (audit): xattr_verify (6.1) fails a v2 signature or a hash: "verity-signature-required"."""
    policy = parse_policy("appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n")
    result = run_gate(policy, [facts(xattr=sig(), signature_valid=True)], LOADED)
    assert [(u.reason, u.rule_line) for u in result.uncovered] == [("needs-sigv3", 1)]
    assert "needs-sigv3" in REFUSAL_REASONS
    digest = ImaDigest(HashAlgo.SHA256, bytes(32))
    assert [u.reason for u in run_gate(policy, [facts(xattr=digest, digest_matches=True)], LOADED).uncovered] == [
        "needs-sigv3"
    ]
    # Another rule that may decide, with a plain imasig: the verity rule is the one blamed.
    both = parse_policy("appraise func=BPRM_CHECK uid=1000 appraise_type=imasig\n"
                        "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n")  # fmt: skip
    result = run_gate(both, [facts(xattr=sig(), signature_valid=True)], LOADED)
    assert [(u.reason, u.rule_line) for u in result.uncovered] == [("needs-sigv3", 2)]
