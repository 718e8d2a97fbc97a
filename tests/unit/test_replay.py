"""PCR replay: the lab kernel's lists against the TPM's values, violations, other PCRs, compare()."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaguard.errors import FormatError
from imaguard.ima.measurements import iter_ascii, iter_binary
from imaguard.ima.replay import PcrMismatch, compare, replay, replay_binary
from logbuilder import LogBuilder
from vm.expectations import replay_pcr10

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
# Every real capture: (directory, binary byte order). Each holds the TPM's PCR 10 read around the list.
CAPTURES = sorted(p.parent for p in LAB.rglob("pcr10.json"))


def _tpm(capture: Path) -> dict[str, dict[int, bytes]]:
    values = json.loads((capture / "pcr10.json").read_text())
    return {bank: {10: bytes.fromhex(v)} for bank, v in values.items()}


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_replay_of_real_lists_equals_the_tpm_in_both_banks(capture):
    tpm = _tpm(capture)
    binary = replay(iter_binary((capture / "binary_runtime_measurements").read_bytes()))
    ascii_log = replay(iter_ascii((capture / "ascii_runtime_measurements").read_bytes()))
    for r in (binary, ascii_log):
        assert {bank: r.pcr(10, bank) for bank in ("sha1", "sha256")} == {b: v[10] for b, v in tpm.items()}
        assert compare(r, tpm) == []
    assert binary.entries == ascii_log.entries
    assert binary.boot_aggregate is not None
    assert binary.boot_aggregate is binary.entries[0]  # type: ignore[index]


def test_replay_agrees_with_the_vm_tests_independent_helper():
    log = (LAB / "binary_runtime_measurements").read_bytes()
    r = replay(iter_binary(log))
    assert replay_pcr10(log) == {"sha1": r.pcr(10, "sha1").hex(), "sha256": r.pcr(10, "sha256").hex()}


def _extend(pcr: bytes, value: bytes, algo: str) -> bytes:
    return hashlib.new(algo, pcr + value).digest()


def test_violations_extend_all_ones_in_every_bank():
    b = LogBuilder()
    first = b.file("/usr/bin/a", b"a")
    b.violation("/etc/busy")
    r = replay(iter_binary(b.binary()))
    sha1 = _extend(_extend(bytes(20), first.template_digest, "sha1"), b"\xff" * 20, "sha1")
    sha256 = _extend(_extend(bytes(32), hashlib.sha256(first.template_data).digest(), "sha256"), b"\xff" * 32, "sha256")
    assert (r.pcr(10, "sha1"), r.pcr(10, "sha256")) == (sha1, sha256)
    assert (r.count, r.violations) == (2, 1)
    assert r.boot_aggregate is None


def test_ima_template_banks_hash_the_name_padded_to_256_bytes():
    b = LogBuilder()
    e = b.ima("/sbin/init", b"init")
    r = replay(iter_binary(b.binary()), banks=("sha1", "sha256", "sha512"))
    padded = e.fields[0] + b"/sbin/init".ljust(256, b"\x00")
    assert e.template_digest == hashlib.sha1(padded).digest()
    assert r.pcr(10, "sha256") == _extend(bytes(32), hashlib.sha256(padded).digest(), "sha256")
    assert r.pcr(10, "sha512") == _extend(bytes(64), hashlib.sha512(padded).digest(), "sha512")


def test_other_pcrs_are_replayed_apart_and_pcr10_is_always_reported():
    b = LogBuilder()
    e = b.file("/usr/bin/a", b"a", pcr=11)
    r = replay(iter_binary(b.binary()), keep_entries=False)
    assert r.entries is None
    assert r.pcr(10, "sha1") == bytes(20)
    assert r.pcr(11, "sha1") == _extend(bytes(20), e.template_digest, "sha1")
    assert sorted(r.pcrs["sha256"]) == [10, 11]


def test_per_bank_lists_replay_from_their_own_digests():
    b = LogBuilder()
    b.boot_aggregate()
    b.file("/usr/bin/a", b"a")
    b.violation("/tmp/x", template="ima-ng")
    sha1 = replay(iter_binary(b.binary()))
    per_bank = b"".join(
        e.to_binary().replace(e.template_digest, bytes(32) if e.is_violation else hashlib.sha256(e.template_data).digest(), 1)
        for e in b.entries
    )
    sha256_file = replay(iter_binary(per_bank, bank="sha256"))
    assert sha256_file.pcrs == sha1.pcrs
    assert replay(iter_ascii(b"".join(e.to_ascii() for e in iter_binary(per_bank, bank="sha256")))).pcrs == sha1.pcrs


def test_compare_names_each_differing_bank():
    r = replay(iter_binary((LAB / "binary_runtime_measurements").read_bytes()))
    tpm = _tpm(LAB)
    tpm["sha256"][10] = bytes(32)
    (m,) = compare(r, tpm)
    assert m == PcrMismatch("sha256", 10, r.pcr(10, "sha256"), bytes(32))
    assert str(m) == (f"PCR 10 sha256: log replays to {r.pcr(10, 'sha256').hex()}, TPM has {'00' * 32}")
    assert compare(r, {"sha256": tpm["sha256"] | {10: r.pcr(10, "sha256")}}) == []  # no sha1 bank: skipped
    nothing_common = compare(r, {"sha384": {10: bytes(48)}})
    assert [(m.bank, m.tpm) for m in nothing_common] == [("sha1", None), ("sha256", None)]


def test_a_bank_hashlib_cannot_compute_is_refused():
    with pytest.raises(FormatError, match="cannot replay the 'md4' bank"):
        replay([], banks=("md4",))


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_the_unrolled_default_banks_equal_the_general_rule(capture):
    log = (capture / "binary_runtime_measurements").read_bytes()
    default = replay(iter_binary(log))  # ("sha1", "sha256"): the unrolled path
    general = replay(iter_binary(log), banks=("sha256", "sha1"))
    assert (general.pcrs, general.violations, general.count) == (default.pcrs, default.violations, default.count)


def test_expected_pcr_values_are_matched_on_the_way():
    log = (LAB / "binary_runtime_measurements").read_bytes()
    tpm = {bank: v[10] for bank, v in _tpm(LAB).items()}
    assert replay(iter_binary(log), expect=tpm).matched == {"sha1": 6, "sha256": 6}
    assert replay_binary(log, expect=tpm).matched == {"sha1": 6, "sha256": 6}
    zero = {"sha1": bytes(20), "sha256": bytes(32)}
    assert replay(iter_binary(log), expect=zero).matched == {"sha1": 0, "sha256": 0}
    assert replay(iter_binary(log), expect={"sha256": bytes(32) + b"x"}).matched == {}
