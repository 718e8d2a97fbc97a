"""The report from the lab's real measurement list: classification, signatures, processes, schema."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError, TrustError, UsageError
from imaguard.host.processes import MAPS_LINE_LIMIT, MappedFile, parse_maps
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay
from imaguard.keys.material import load_certificate, load_private_key
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.report.build import build_report
from imaguard.report.envelope import sign_report
from imaguard.report.facts import Mapping, ProcessInfo
from imaguard.report.formats.text import render_text
from imaguard.report.model import HostFacts, read_report
from imaguard.report.paths import usr_aliases
from imaguard.report.verify import verify_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from logbuilder import LogBuilder, sig_v2

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"
KEYS = ROOT / "tests" / "data" / "keys"
HOST = HostFacts("m" * 32, "b", "h", "6.1.0-50-amd64", "#1", "gone", None, (("_ima", "lab: 0a1b", "0a1b2c3d"),))


def _replayed():
    return replay(iter_binary((LAB / "binary_runtime_measurements").read_bytes()))


def _digest_of(replayed, path: bytes) -> bytes:
    return next(e.digest.digest for e in replayed.entries if e.path == path)


@pytest.fixture
def index(tmp_path):
    """tpm2-tools ships the measured /usr/bin/tpm2 (under its dpkg name /bin/tpm2: merged /usr);
    a package owns signed-echo's path with other content; nothing owns unsigned-echo."""
    r = _replayed()
    with DigestIndex.open(tmp_path) as idx:
        idx.replace_package(InstalledPackage("tpm2-tools", "5.4-1", "amd64", "tpm2-tools", "5.4-1", "debian"), [
            PackageFile(b"/bin/tpm2", FileKind.REGULAR, Evidence.REPO_VERIFIED, _digest_of(r, b"/usr/bin/tpm2"),
                        HashAlgo.SHA256)])  # fmt: skip
        idx.replace_package(InstalledPackage("labecho", "1", "amd64", "coreutils", "9.1-1"), [
            PackageFile(b"/opt/imaguard-lab/signed-echo", FileKind.REGULAR, Evidence.LOCAL_DB,
                        hashlib.sha256(b"other").digest(), HashAlgo.SHA256)])  # fmt: skip
        yield idx


def _fid(path: bytes) -> tuple[int, int]:
    """A stand-in (st_dev, st_ino) for the file at ``path``."""
    return 8, int.from_bytes(hashlib.sha256(path).digest()[:4], "big")


def _proc(pid: int, exe: bytes, start: float, maps: tuple[Mapping, ...] = (), *, deleted: bool = False,
          same_file: bool | None = True) -> ProcessInfo:  # fmt: skip
    same = None if deleted else same_file
    return ProcessInfo(pid, exe.rsplit(b"/", 1)[-1].decode(), exe, exe_deleted=deleted, start_time=start,
                       mappings=maps, exe_same_file=same, exe_file_id=_fid(exe) if same else None)  # fmt: skip


def _m(path: bytes, *, deleted: bool = False, same_file: bool | None = True) -> Mapping:
    """A mapping as the host adapter gives it: by default the file at its path here."""
    same = None if deleted else same_file
    return Mapping(path, deleted, same, _fid(path) if same else None)


class Disk:
    """``digest_here`` over contents by path, recording each call (path, file id, algorithm)."""

    def __init__(self, contents: dict[bytes, bytes]) -> None:
        self.contents = contents
        self.calls: list[tuple[bytes, tuple[int, int], str]] = []

    def __call__(self, path: bytes, file_id: tuple[int, int], algo: str) -> bytes | None:
        self.calls.append((path, file_id, algo))
        content = self.contents.get(path)
        return None if content is None or file_id != _fid(path) else hashlib.new(algo, content).digest()


def _report(index, processes=(), **kw):
    return build_report(_replayed(), source="lab", lookup=index, processes=processes, host=HOST,
                        generator="imaguard test", created="2026-11-22T00:00:00Z", **kw)  # fmt: skip


def test_entries_are_classified_and_signatures_checked_with_the_given_certificate(index):
    report = _report(index, certificates=[load_certificate(LAB / "ima-rsa.cert.der")])
    got = [(e.path, str(e.klass), [p.name for p in e.packages], str(e.signature)) for e in report.entries]
    assert got == [
        (b"boot_aggregate", "boot-aggregate", [], "unsigned"),
        (b"_ima", "buffer", [], "not-recorded"),
        (b"/usr/bin/tpm2", "package", ["tpm2-tools"], "unsigned"),
        # The signature verifies with the certificate given as trusted (--ima-cert).
        (b"/opt/imaguard-lab/signed-echo", "modified", ["labecho"], "verified"),
        (b"/opt/imaguard-lab/unsigned-echo", "unknown", [], "unsigned"),
        (b"/opt/imaguard-lab/tampered-echo", "unknown", [], "bad-signature"),
    ]
    tpm2 = report.entries[2].packages[0]
    assert (tpm2.path, tpm2.source_name, tpm2.evidence) == (b"/bin/tpm2", "tpm2-tools", "repo-verified")
    assert report.entries[3].signature_key_id == report.entries[5].signature_key_id
    doc = report.to_json()
    assert doc["log"]["replay"]["pcr10"] == json.loads((LAB / "pcr10.json").read_text())
    assert doc["counts"]["entries"] == {"package": 1, "modified": 1, "unknown": 2, "boot-aggregate": 1,
                                        "buffer": 1, "violation": 0}  # fmt: skip


def test_processes_take_the_class_of_their_last_log_entry(index):
    procs = [
        _proc(1, b"/usr/sbin/init", 10.0),
        _proc(50, b"/usr/bin/tpm2", 20.0, (_m(b"/usr/bin/tpm2"), _m(b"/usr/lib/libc.so.6"))),
        _proc(51, b"/opt/imaguard-lab/unsigned-echo", 21.0),
        _proc(52, b"/opt/imaguard-lab/signed-echo", 22.0),
        _proc(53, b"/usr/bin/late", 30.0),
        ProcessInfo(2, "kthreadd", None, exe_deleted=False, start_time=1.0, mappings=()),
    ]
    report = _report(index, procs)
    got = {p.pid: (str(p.klass), p.exe.reason, [m.reason for m in p.mappings]) for p in report.processes}
    assert got == {
        1: ("not-measured", "started-before-policy", []),
        50: ("package", "", ["not-measured-by-policy"]),  # libc: the lab policy has no MMAP_CHECK rule
        51: ("unknown", "", []),
        52: ("modified", "", []),
        53: ("not-measured", "not-measured-by-policy", []),
    }
    assert report.processes[1].exe.entry == 2


def test_text_view_puts_what_needs_a_look_first(index):
    procs = [
        _proc(50, b"/usr/bin/tpm2", 20.0, (_m(b"/usr/bin/tpm2"),)),
        _proc(51, b"/opt/imaguard-lab/unsigned-echo", 21.0),
        _proc(52, b"/opt/imaguard-lab/signed-echo", 22.0),
        _proc(53, b"/usr/bin/late", 30.0),
    ]
    text = render_text(_report(index, procs)).splitlines()
    pcr = json.loads((LAB / "pcr10.json").read_text())
    assert text[:9] == [
        "host        h  kernel 6.1.0-50-amd64  boot b",
        "ima policy  gone",
        "ima keys    _ima 0a1b2c3d (lab: 0a1b)",
        "log         lab: 6 entries, 0 violations; templates ima-buf 1, ima-sig 5",
        f"replay      PCR 10 sha1 {pcr['sha1']}, sha256 {pcr['sha256']}",
        "quote       none",
        "entries     package 1, modified 1, unknown 2, boot-aggregate 1, buffer 1",
        "signatures  logged-key 1, bad-signature 1, unsigned 3, not-recorded 1",
        "processes   package 1, modified 1, unknown 1, not-measured 1",
    ]
    assert text[9:] == [
        "",
        "Processes not traced to a package, or only by weak evidence (class, pid, name, file, why):",
        "  unknown           51  unsigned-echo   /opt/imaguard-lab/unsigned-echo",
        "  modified          52  signed-echo     /opt/imaguard-lab/signed-echo  "
        "path of labecho=1/amd64 (source coreutils 9.1-1), other content",
        "  not-measured      53  late            /usr/bin/late  not-measured-by-policy",
        "",
        "Measured files not traced to a package, or with a bad signature (class, entry, path):",
        "  modified     #3      /opt/imaguard-lab/signed-echo  path of labecho=1/amd64 (source coreutils 9.1-1)"
        "  signature logged-key",
        "  unknown      #4      /opt/imaguard-lab/unsigned-echo",
        "  unknown      #5      /opt/imaguard-lab/tampered-echo  signature bad-signature",
        "",
        "Processes (pid, name, class, package of the executable):",
        "       50  tpm2            package      tpm2-tools=5.4-1/amd64 (source tpm2-tools 5.4-1)",
        "       51  unsigned-echo   unknown",
        "       52  signed-echo     modified",
        "       53  late            not-measured",
    ]


def test_usr_merged_aliases():
    assert usr_aliases(b"/usr/bin/ls") == (b"/usr/bin/ls", b"/bin/ls")
    assert usr_aliases(b"/lib64/ld.so") == (b"/lib64/ld.so", b"/usr/lib64/ld.so")
    assert usr_aliases(b"/usr/share/x") == (b"/usr/share/x",)
    assert usr_aliases(b"/usr/local/bin/x") == (b"/usr/local/bin/x",)


def test_maps_keep_executable_file_mappings_once():
    maps = (b"55d0-55d1 r--p 00000000 fe:01 12 /usr/bin/cat\n"
            b"55d1-55d2 r-xp 00001000 fe:01 12 /usr/bin/cat\n"
            b"55d3-55d4 r-xp 00003000 fe:01 12 /usr/bin/cat\n"
            b"7f00-7f01 r-xp 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            b"7f01-7f02 r-xp 00000000 fe:01 98 /tmp/a b (deleted)\n"
            b"7f02-7f03 r-xp 00000000 00:00 0 \n"
            b"7ffd-7ffe r-xp 00000000 00:00 0 [vdso]\n")  # fmt: skip
    dev = os.makedev(0xFE, 1)
    assert parse_maps(maps.splitlines(keepends=True)) == (
        (MappedFile(b"/usr/bin/cat", False, 0x55D1, 0x55D2, dev, 12),
         MappedFile(b"/usr/lib/x86_64-linux-gnu/libc.so.6", False, 0x7F00, 0x7F01, dev, 99),
         MappedFile(b"/tmp/a b", True, 0x7F01, 0x7F02, dev, 98)),
        False)  # fmt: skip


def _paths(found: tuple[tuple[MappedFile, ...], bool]) -> tuple[list[bytes], bool]:
    return [m.path for m in found[0]], found[1]


def test_maps_past_a_huge_prefix_are_still_found_and_a_bound_is_reported():
    """Regression: maps was read up to 16 MiB and silently cut, so 6000 long non-executable
    mappings hid an executable one after them. Lines are streamed now; only a bound says truncated."""
    long = b"/tmp/" + b"d" * 3800
    filler = (b"7f%010x-7f%010x r--p 00000000 fe:01 5 %s\n" % (n, n + 1, long) for n in range(6000))
    evil = [b"7fff0000-7fff1000 r-xp 00000000 fe:01 7 /tmp/evil.so\n"]
    assert _paths(parse_maps(itertools.chain(filler, evil))) == ([b"/tmp/evil.so"], False)
    three = [b"1-2 r-xp 0 fe:01 %d /lib/l%d.so\n" % (n, n) for n in range(3)]
    assert _paths(parse_maps(three, limit=2)) == ([b"/lib/l0.so", b"/lib/l1.so"], True)
    assert _paths(parse_maps(three[:2], limit=2)) == ([b"/lib/l0.so", b"/lib/l1.so"], False)
    # A line cut by the line bound (readline's limit, no newline) ends the scan, reported.
    assert _paths(parse_maps([three[0], b"1-2 r-xp 0 fe:01 9 /" + b"x" * MAPS_LINE_LIMIT])) == ([b"/lib/l0.so"], True)


def test_build_refuses_a_log_that_was_not_replayed(index):
    with pytest.raises(TypeError, match="needs a ReplayedLog"):
        build_report(list(iter_binary((LAB / "binary_runtime_measurements").read_bytes())),  # type: ignore[arg-type]
                     source="x", lookup=index, processes=(), host=HOST, generator="g", created="c")  # fmt: skip


def test_report_round_trips_and_verifies_its_replay(index):
    data = _report(index).to_bytes()
    back = read_report(data, "r.json")
    assert back.schema_version == 2
    assert back.pcr10["sha256"].hex() == json.loads((LAB / "pcr10.json").read_text())["sha256"]
    result = verify_report(data, certs=(), nonce=None, source="r.json")
    assert result.checks == ("schema-version", "entries", "replay", "summary")
    # One extended digest changed: no longer the hash of the entry's template data.
    doc = json.loads(data)
    doc["entries"][3]["extended"]["sha256"] = "00" * 32
    with pytest.raises(TrustError, match=r"entry 3 states extended sha256 '0{64}', its template data says") as err:
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert err.value.reason == "entry-mismatch"
    # The stated PCR 10 changed: the entries no longer replay to it.
    doc = json.loads(data)
    doc["log"]["replay"]["pcr10"]["sha256"] = "00" * 32
    with pytest.raises(TrustError, match=r"entries replay to PCR 10 sha256 de9fde44[0-9a-f]{56}, but it claims 0{64}") as err:
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert err.value.reason == "replay-mismatch"


def test_verify_refuses_other_versions_and_missing_quotes(index):
    doc = _report(index).to_json()
    with pytest.raises(TrustError, match="the report was made without a nonce, not for 'n1'") as err:
        verify_report(json.dumps(doc).encode(), certs=(), nonce="n1", source="r")
    assert err.value.reason == "wrong-nonce"
    doc["nonce"] = "n1"
    with pytest.raises(TrustError, match="has no TPM quote, so the nonce proves nothing"):
        verify_report(json.dumps(doc).encode(), certs=(), nonce="n1", source="r")
    doc["schema_version"] = 1  # before logged-only certificates became `logged-key`
    with pytest.raises(FormatError, match="report schema version 1, this imaguard reads 2"):
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r")


def test_signed_report_verifies_and_any_changed_byte_fails(index):
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    key = load_private_key(KEYS / "ima-test-rsa2048.key", cert=cert)
    signed = sign_report(_report(index).to_bytes(), key, cert)
    result = verify_report(signed, certs=(cert,), nonce=None, source="s")
    assert result.checks[:2] == ("signature", "payload-type")
    env = json.loads(signed)
    payload = bytearray(base64.b64decode(env["payload"]))
    payload[200] ^= 1
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(TrustError, match="no signature verifies") as err:
        verify_report(json.dumps(env).encode(), certs=(cert,), nonce=None, source="s")
    assert err.value.reason == "bad-envelope-signature"
    with pytest.raises(UsageError, match="the report is signed; give the signer's certificate"):
        verify_report(signed, certs=(), nonce=None, source="s")
    with pytest.raises(TrustError, match="not signed, but --cert asks for a signed one"):
        verify_report(_report(index).to_bytes(), certs=(cert,), nonce=None, source="s")


def test_builder_log_violations_templates_and_the_last_measurement_wins(tmp_path):
    b = LogBuilder()
    b.boot_aggregate()
    b.file("/usr/bin/tool", b"v1", template="ima-ng")
    b.violation("/var/log/x")
    b.file("/usr/bin/tool", b"v2-changed", template="ima-ng")  # measured again after a change
    b.file("/usr/bin/other", b"o", sig=sig_v2(b"\1\2\3\4", b"\0" * 256))
    b.file("/usr/bin/sha512", b"s", sig=sig_v2(b"\1\2\3\4", b"\0" * 256, algo_id=6))
    with DigestIndex.open(tmp_path) as idx:
        idx.replace_package(InstalledPackage("tool", "2", "amd64"), [
            PackageFile(b"/usr/bin/tool", FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(b"v1").digest(),
                        HashAlgo.SHA256)])  # fmt: skip
        report = build_report(replay(iter_binary(b.binary())), source="b", lookup=idx, host=HOST, generator="g",
                              created="c", processes=[_proc(9, b"/usr/bin/tool", 5.0)],
                              digest_here=Disk({b"/usr/bin/tool": b"v2-changed"}))  # fmt: skip
    got = [(str(e.klass), str(e.signature)) for e in report.entries]
    assert got == [("boot-aggregate", "not-recorded"), ("package", "not-recorded"), ("violation", "unsigned"),
                   ("modified", "not-recorded"), ("unknown", "unknown-key"), ("unknown", "unsupported-form")]  # fmt: skip
    assert report.entries[2].extended == (b"\xff" * 20, b"\xff" * 32)
    assert report.entries[5].signature_detail == "signed over sha512, the log has sha256 digest"
    # The running tool is the changed file: the entry with its content (here the last) decides.
    (proc,) = report.processes
    assert (str(proc.klass), proc.exe.entry) == ("modified", 3)
    assert verify_report(report.to_bytes(), certs=(), nonce=None, source="b").checks == ("schema-version", "entries",
                                                                                         "replay", "summary")


def test_a_certificate_only_the_log_shows_does_not_make_a_signature_verified(tmp_path):
    """Any user can have a key measured: `keyctl newring _ima @u` and a key added to it match
    `measure func=KEY_CHECK keyrings=_ima` by keyring *name*. A signature that verifies only with
    such a logged certificate is `logged-key`; `verified` needs a certificate given as trusted."""
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    key = load_private_key(KEYS / "ima-test-rsa2048.key", cert=cert)
    content = b"attacker's program"
    signature = key.sign(hashlib.sha256(content).digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    b = LogBuilder()
    b.boot_aggregate()
    b.buf("_ima", cert.der)  # the user's own keyring named _ima
    b.file("/home/u/evil", content, sig=sig_v2(cert.key_id, signature))
    b.file("/home/u/evil2", b"x", sig=sig_v2(cert.key_id, signature))
    with DigestIndex.open(tmp_path) as idx:
        def statuses(certificates):
            report = build_report(replay(iter_binary(b.binary())), source="b", lookup=idx, processes=(), host=HOST,
                                  generator="g", created="c", certificates=certificates)  # fmt: skip
            return [(str(e.signature), e.signature_detail) for e in report.entries[2:]]

        assert statuses(()) == [
            ("logged-key", f"{cert.subject}: a certificate only the log shows, not one given as trusted"),
            ("bad-signature", f"signature does not verify with key {cert.key_id.hex()} (RSA-2048)"),
        ]
        assert statuses([cert])[0] == ("verified", cert.subject)


def _two_files_one_path(tmp_path, path: bytes, procs, digest_here=None):
    """The log measured another file at ``path`` first, then the package's file: the last entry
    for the path is ``package`` (what a path-only match gave every process running from it)."""
    b = LogBuilder()
    b.boot_aggregate()
    b.file(path, b"evil")
    b.file(path, b"genuine")
    with DigestIndex.open(tmp_path) as idx:
        idx.replace_package(InstalledPackage("coreutils", "9.1-1", "amd64", "coreutils", "9.1-1"), [
            PackageFile(path, FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(b"genuine").digest(),
                        HashAlgo.SHA256)])  # fmt: skip
        return build_report(replay(iter_binary(b.binary())), source="b", lookup=idx, host=HOST, generator="g",
                            created="c", processes=procs, digest_here=digest_here)  # fmt: skip


def test_a_running_file_that_is_not_the_file_at_its_path_does_not_take_the_path_class(tmp_path):
    """Regression (review repro_del.py, repro_ns.py): a deleted exe, or one in another mount
    namespace (a bind mount over /usr/bin/sleep), inherited the class of the path's last entry."""
    sleep = b"/usr/bin/sleep"
    report = _two_files_one_path(tmp_path, sleep, [
        _proc(10, sleep, 5.0),  # the file at the path: traced
        _proc(11, sleep, 5.0, deleted=True),  # replaced since it started
        _proc(12, sleep, 5.0, same_file=False),  # another file (another mount namespace)
        _proc(13, sleep, 5.0, same_file=None),  # could not compare
        _proc(14, b"/usr/bin/tool", 5.0, (_m(sleep, deleted=True), _m(b"/usr/lib/x.so", same_file=False))),
    ], Disk({sleep: b"genuine"}))  # fmt: skip
    got = {p.pid: (str(p.klass), p.exe.entry, p.exe.reason, [r.name for r in p.exe.packages], p.exe.deleted)
           for p in report.processes}  # fmt: skip
    assert got == {
        10: ("package", 2, "", ["coreutils"], False),
        11: ("untraced", None, "file-replaced-since-start", ["coreutils"], True),  # owners of the path: a hint
        12: ("untraced", None, "running-file-not-at-path", [], False),
        13: ("untraced", None, "running-file-unchecked", [], False),
        14: ("not-measured", None, "not-measured-by-policy", [], False),
    }
    maps = [(m.path, str(m.klass), m.reason) for m in report.processes[4].mappings]
    assert maps == [(sleep, "untraced", "file-replaced-since-start"),
                    (b"/usr/lib/x.so", "untraced", "running-file-not-at-path")]  # fmt: skip
    assert report.to_json()["counts"]["processes"] == {"package": 1, "modified": 0, "unknown": 0, "not-measured": 1,
                                                       "untraced": 3}  # fmt: skip
    # A replaced file whose path the log never shows stays not-measured, as documented.
    (lone,) = _report(LogIndex(), [_proc(9, b"/opt/x", 5.0, deleted=True)]).processes
    assert (str(lone.klass), lone.exe.reason) == ("not-measured", "file-replaced-since-start")


def test_a_path_logged_with_several_contents_is_traced_by_the_running_file_digest(tmp_path):
    """Regression: the log names files by path in the measuring process's mount namespace, so a
    container's own /usr/bin/sleep ("genuine" here, logged last) and the host's tampered one
    ("evil", logged first) share a path; the host's process running "evil" took the path's last
    entry and was reported as the package. The running file is hashed and traced by content."""
    sleep, lib = b"/usr/bin/sleep", b"/usr/lib/libc.so.6"
    procs = [_proc(10, sleep, 5.0), _proc(11, b"/usr/bin/tool", 5.0, (_m(sleep),)), _proc(12, sleep, 5.0, (_m(lib),))]

    def classes(report):
        return [(p.pid, str(p.klass), p.exe.entry, p.exe.reason) for p in report.processes]

    disk = Disk({sleep: b"evil"})
    report = _two_files_one_path(tmp_path / "a", sleep, procs, disk)
    assert classes(report)[0] == (10, "modified", 1, "")  # the evil entry: coreutils owns the path
    assert [(str(m.klass), m.entry) for m in report.processes[1].mappings] == [("modified", 1)]
    # Asked for each running file at such a path (RunningDigests hashes each file once); lib,
    # logged with one content or none, is never hashed.
    assert disk.calls == [(sleep, _fid(sleep), "sha256")] * 3
    genuine = _two_files_one_path(tmp_path / "b", sleep, procs, Disk({sleep: b"genuine"}))
    assert classes(genuine)[0] == (10, "package", 2, "")
    # Content in no entry (changed in place since), a file no longer the running one (another
    # inode by now: Disk gives None), or no way to hash: no entry is the running file's evidence.
    for n, digest_here in enumerate((Disk({sleep: b"third"}), Disk({}), None)):
        report = _two_files_one_path(tmp_path / f"c{n}", sleep, procs[:1], digest_here)
        assert classes(report) == [(10, "untraced", None, "running-digest-not-logged")]


class LogIndex:
    """A digest index that knows nothing."""

    def lookup_full(self, digest: bytes) -> list:
        return []

    def lookup_path(self, path: bytes) -> list:
        return []


def test_a_process_whose_executable_cannot_be_read_is_kept_untraced_and_shown(index):
    """Regression: processes with exe None and an error (access-denied) were dropped from the
    report; only kernel threads (no exe, no error) are left out."""
    procs = [
        _proc(50, b"/usr/bin/tpm2", 20.0),
        ProcessInfo(77, "hidden", None, exe_deleted=False, start_time=0.0, mappings=(), error="access-denied"),
        ProcessInfo(2, "kthreadd", None, exe_deleted=False, start_time=1.0, mappings=()),
    ]
    report = _report(index, procs)
    assert [p.pid for p in report.processes] == [50, 77]
    hidden = report.to_json()["processes"][1]
    assert hidden == {"pid": 77, "name": "hidden", "start_time": 0.0, "class": "untraced", "error": "access-denied",
                      "exe": {"path": "", "class": "untraced", "entry": None, "packages": [],
                              "reason": "executable-unreadable"}, "mappings": []}  # fmt: skip
    assert report.counts()["processes"]["untraced"] == 1
    text = render_text(report).splitlines()
    assert "processes   package 1, untraced 1" in text
    assert "  untraced          77  hidden          ?  access-denied" in text


def test_a_memfd_executable_or_mapping_is_fileless_not_a_replaced_file(tmp_path):
    """Regression: /memfd:NAME (deleted) was reported file-replaced-since-start (and, had the log
    an entry named like it, would have taken that entry's class)."""
    memfd = b"/memfd:payload"
    report = _two_files_one_path(tmp_path, memfd, [
        _proc(20, memfd, 5.0, deleted=True),
        _proc(21, b"/usr/bin/node", 5.0, (_m(b"/memfd:jit", deleted=True),)),
    ])  # fmt: skip
    exe = report.processes[0].exe
    assert (str(exe.klass), exe.entry, exe.reason, exe.packages, exe.deleted) == ("untraced", None, "memfd", (), False)
    (jit,) = report.processes[1].mappings
    assert (str(jit.klass), jit.reason) == ("untraced", "memfd")
    assert "  untraced          20  memfd:payload   /memfd:payload  memfd" in render_text(report).splitlines()


def test_text_view_shows_weak_evidence_and_replaced_executables(tmp_path):
    """Regression (review repro_md5.py): a process matched only through a dpkg MD5 entry
    (local-db) read like a repo-verified one, and a replaced exe was not among what needs a look."""
    b = LogBuilder()
    b.boot_aggregate()
    b.file("/usr/bin/foo", b"whatever", algo="md5", template="ima-ng")
    b.file("/usr/bin/bar", b"bar")
    with DigestIndex.open(tmp_path) as idx:
        idx.replace_package(InstalledPackage("foo", "1", "amd64", "foo", "1"), [
            PackageFile(b"/usr/bin/foo", FileKind.REGULAR, Evidence.LOCAL_DB, hashlib.md5(b"whatever").digest(),
                        HashAlgo.MD5, evidence_reason="dpkg-md5sums")])  # fmt: skip
        idx.replace_package(InstalledPackage("bar", "2", "amd64", "bar", "2"), [
            PackageFile(b"/usr/bin/bar", FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(b"bar").digest(),
                        HashAlgo.SHA256)])  # fmt: skip
        procs = [_proc(9, b"/usr/bin/foo", 5.0), _proc(10, b"/usr/bin/bar", 5.0),
                 _proc(11, b"/usr/bin/bar", 5.0, deleted=True)]  # fmt: skip
        report = build_report(replay(iter_binary(b.binary())), source="b", lookup=idx, processes=procs, host=HOST,
                              generator="g", created="c")  # fmt: skip
    text = render_text(report).splitlines()
    start = text.index("Processes not traced to a package, or only by weak evidence (class, pid, name, file, why):")
    assert text[start + 1:start + 3] == [
        "  package            9  foo             /usr/bin/foo  foo=1/amd64 (source foo 1), evidence local-db only",
        "  untraced          11  bar             /usr/bin/bar  file-replaced-since-start",
    ]
    assert text[-3:] == [
        "        9  foo             package      foo=1/amd64 (source foo 1)  evidence local-db",
        "       10  bar             package      bar=2/amd64 (source bar 2)",
        "       11  bar             untraced",
    ]


def test_text_view_keeps_a_forged_process_name_on_its_line(index):
    """Regression (review): any process can name itself (prctl PR_SET_NAME, or argv[0], which psutil
    uses when the 15-byte name is cut) with a newline and a whole fake line after it."""
    forged = "aaaaaaaaaaaaaaa\n      1  sshd            package      openssh-server 1:9.2p1-2+deb12u3"
    proc = ProcessInfo(60, forged, b"/usr/bin/late", exe_deleted=False, start_time=30.0, mappings=(),
                       exe_same_file=True, exe_file_id=_fid(b"/usr/bin/late"))  # fmt: skip
    text = render_text(_report(index, [proc]))
    assert "\n      1  sshd" not in text
    assert ("  not-measured      60  aaaaaaaaaaaaaaa\\n      1  sshd            package      openssh-server "
            "1:9.2p1-2+deb12u3 /usr/bin/late  not-measured-by-policy") in text.splitlines()
