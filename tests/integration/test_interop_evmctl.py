"""Interoperability with Debian's evmctl (ima-evm-utils 1.4), both ways (issue 2, acceptance 1).

Matrix: RSA-2048, RSA-4096, EC P-256, EC P-384, each with sha256 and sha512. evmctl wants the certificate in
DER for ``ima_verify --key``; imaguard reads PEM or DER (both are exercised).
"""

from __future__ import annotations

import os

import pytest
from rootlib import KEY_KINDS, flip_one_byte, get_ima, run, write_file

pytestmark = pytest.mark.root

ALGOS = ["sha256", "sha512"]
ALGO_IDS = {"sha256": 4, "sha512": 6}  # include/uapi/linux/hash_info.h
# Content larger than one 1 MiB read chunk, not a multiple of it, so hashing crosses a chunk edge.
CONTENT = os.urandom((1 << 20) + 4097)

CASES = [(k, a) for k in KEY_KINDS for a in ALGOS]
matrix = pytest.mark.parametrize("case", CASES, ids=[f"{k}-{a}" for k, a in CASES])


class Interop:
    """Both tools on one file: sign with either, verify with either, for one (key kind, algorithm)."""

    def __init__(self, keypair, evmctl, imaguard_json, tmp_path):
        self._keypair, self._evmctl, self._imaguard = keypair, evmctl, imaguard_json
        self.file = write_file(tmp_path / "file", CONTENT)

    def pair(self, kind, label="main"):
        return self._keypair(kind, label)

    def evmctl_sign(self, pair, algo):
        run([self._evmctl, "ima_sign", "--hashalgo", algo, "--key", str(pair.key),
             "--keyid-from-cert", str(pair.cert_der), str(self.file)])

    def evmctl_verify(self, pair):
        return run([self._evmctl, "ima_verify", "--key", str(pair.cert_der), str(self.file)], check=False)

    def imaguard_sign(self, pair, algo):
        code, doc = self._imaguard(
            ["sign", "--key", str(pair.key), "--cert", str(pair.cert_pem), "--hash-algo", algo, str(self.file)]
        )
        assert (code, doc["files"]) == (
            0, [{"path": str(self.file), "status": "signed", "key_id": pair.skid_tail, "algo": algo}]
        ), doc

    def imaguard_verify(self, cert):
        return self._imaguard(["verify", "--cert", str(cert), str(self.file)])

    def sign(self, signer, pair, algo):
        if signer == "imaguard":
            self.imaguard_sign(pair, algo)
        else:
            self.evmctl_sign(pair, algo)

    def assert_sig_header(self, pair, algo):
        """security.ima is a sig v2 value whose key id is the certificate's SKID tail."""
        value = get_ima(self.file)
        assert value is not None
        assert value[:3] == bytes([0x03, 0x02, ALGO_IDS[algo]])
        assert value[3:7].hex() == pair.skid_tail
        assert int.from_bytes(value[7:9], "big") == len(value) - 9


@pytest.fixture
def interop(keypair, evmctl, imaguard_json, tmp_path):
    return Interop(keypair, evmctl, imaguard_json, tmp_path)


@matrix
def test_imaguard_sign_then_evmctl_verify(case, interop):
    kind, algo = case
    pair = interop.pair(kind)
    interop.imaguard_sign(pair, algo)
    interop.assert_sig_header(pair, algo)
    proc = interop.evmctl_verify(pair)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{interop.file}: verification is OK" in proc.stdout + proc.stderr


@matrix
@pytest.mark.parametrize("cert_form", ["pem", "der"])
def test_evmctl_sign_then_imaguard_verify(case, cert_form, interop):
    kind, algo = case
    pair = interop.pair(kind)
    interop.evmctl_sign(pair, algo)
    interop.assert_sig_header(pair, algo)
    code, doc = interop.imaguard_verify(pair.cert_pem if cert_form == "pem" else pair.cert_der)
    assert code == 0
    assert doc["files"] == [
        {"path": str(interop.file), "status": "verified", "key_id": pair.skid_tail, "algo": algo}
    ]
    assert doc["summary"] == {"verified": 1}
    assert doc["exit_code"] == 0


@matrix
@pytest.mark.parametrize("signer", ["imaguard", "evmctl"])
def test_one_changed_byte_is_rejected_by_both(case, signer, interop):
    kind, algo = case
    pair = interop.pair(kind)
    interop.sign(signer, pair, algo)
    # Both accept the untouched file: the rejection below is caused by the byte alone.
    assert interop.evmctl_verify(pair).returncode == 0
    assert interop.imaguard_verify(pair.cert_pem)[0] == 0

    flip_one_byte(interop.file, offset=len(CONTENT) // 2)

    proc = interop.evmctl_verify(pair)
    assert proc.returncode != 0, proc.stdout
    code, doc = interop.imaguard_verify(pair.cert_pem)
    assert code == 3
    [entry] = doc["files"]
    assert (entry["status"], entry["reason"], entry["key_id"], entry["algo"]) == (
        "failed", "bad-signature", pair.skid_tail, algo
    )
    assert doc["reasons"] == {"bad-signature": 1}
    assert doc["exit_code"] == 3


@matrix
@pytest.mark.parametrize("signer", ["imaguard", "evmctl"])
def test_signature_by_another_key_is_unknown_key(case, signer, interop):
    kind, algo = case
    pair, other = interop.pair(kind), interop.pair(kind, "other")
    assert pair.skid_tail != other.skid_tail
    interop.sign(signer, other, algo)

    code, doc = interop.imaguard_verify(pair.cert_der)
    assert code == 3
    [entry] = doc["files"]
    assert (entry["status"], entry["reason"], entry["key_id"]) == ("failed", "unknown-key", other.skid_tail)
    assert doc["reasons"] == {"unknown-key": 1}
    assert doc["exit_code"] == 3
    # evmctl agrees that the trusted key did not make this signature.
    assert interop.evmctl_verify(pair).returncode != 0
    # ...and the signature itself is fine: the other key's certificate verifies it with both tools.
    assert interop.imaguard_verify(other.cert_pem)[0] == 0
    assert interop.evmctl_verify(other).returncode == 0
