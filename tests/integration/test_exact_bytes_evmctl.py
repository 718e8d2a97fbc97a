"""``security.ima`` bytes from imaguard equal evmctl's, and a committed value (issue 2, acceptance 2).

RSA PKCS#1 v1.5 is deterministic: a fixed key, file and algorithm give fixed bytes. The key is the
committed test-only key in ``tests/data/keys/`` (see the README there).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from rootlib import get_ima, run, write_file

pytestmark = pytest.mark.root

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT_PEM = KEYS / "ima-test-rsa2048.pem"
CERT_DER = KEYS / "ima-test-rsa2048.der"

# The fixed file: 80,000 bytes of numbered lines (sha256 7d4a0faa…a7044d).
FIXED = b"".join(b"imaguard exact-bytes fixture line %05d\n" % i for i in range(2000))
FIXED_SHA256 = "7d4a0faa87aaa52002597181854742614fb7c3b4f314d9827dfa91d543a7044d"

# Written by `evmctl ima_sign --hashalgo ALGO --key KEY --keyid-from-cert CERT_DER` (ima-evm-utils 1.4).
EXPECTED = {
    "sha256": (
        "03020417b7ae8b0100c8132ce4a9a81b96322b0daecddc6dbcda6a8a0baedaa8486c9e3be5f9714eb4ccfcda1784a7b3bfcd0bbf"
        "40a64a7fd694add30826027807715263503b7bdc2c15b7cfd9b20a766b324a7fee080cb08bbbe19de700291f081a9381a7522fa4"
        "36a5cc476457359c843fab44fcf12969e9258bb057ffb0f823c5b59009bfcb9e4ae38d3159d727c3ddbfb9c761c83cbfeb061298"
        "b9cef3dc57ad755a83bb5d52be2b1351c0bca9f3af1edee5d015ea7025af2240c45aa61224bd64d153a56c4056990f8ab93ef25b"
        "295f02a936395378ea52d3709eed10e970312c6e3a9b30f5cfe2239e995082fdb3cc136a0fc03400d4ced5802f3e0cb2bf148258"
        "d168312283"
    ),
    "sha512": (
        "03020617b7ae8b0100a3849e31faef624de224d3eddac8ea5b067fc95a046234178e6939e46f8b3cdf3839e83a961419186552e3"
        "4ae2d44345ff4b79f58bcfb7cde7ce6fe8a21e16164f506fb383d44c0d4dda90700816a3cb569aca300b119850fa135c99949dfe"
        "330b969610bc0d3978af595e086756ec03513c6d8225b68d65869fe1aea7abeb2b96fdd1382151a79855fd876d261b0de374e8b8"
        "364a1f486d95ed15ecf57fb0866b981bd912deb6d4ee6229d11571a23566d83011b84d07228ae7b09a32ec3ca36ee0995f344a4a"
        "68fa3a3b873a7afb4d95086a963d558dcf01608b48187eee962e3b9afba8f8786c13bebaf7787ab88a5b4735e4199ba0028f054f"
        "95487d967c"
    ),
}


def test_fixed_inputs_are_what_the_expected_values_were_made_from():
    assert hashlib.sha256(FIXED).hexdigest() == FIXED_SHA256
    out = run(["openssl", "x509", "-in", str(CERT_PEM), "-noout", "-ext", "subjectKeyIdentifier"]).stdout
    assert "63:10:1E:1C:CA:DA:BC:73:6D:CD:0D:54:F6:58:07:51:17:B7:AE:8B" in out
    assert run(["openssl", "x509", "-in", str(CERT_DER), "-inform", "DER", "-noout", "-fingerprint"]).stdout == run(
        ["openssl", "x509", "-in", str(CERT_PEM), "-noout", "-fingerprint"]
    ).stdout


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
@pytest.mark.parametrize("with_cert", [True, False], ids=["keyid-from-cert", "keyid-from-key"])
def test_imaguard_writes_exactly_what_evmctl_writes(algo, with_cert, evmctl, imaguard_json, tmp_path):
    ours = write_file(tmp_path / "imaguard", FIXED)
    theirs = write_file(tmp_path / "evmctl", FIXED)

    cert_args = ["--cert", str(CERT_PEM)] if with_cert else []
    code, doc = imaguard_json(["sign", "--key", str(KEY), *cert_args, "--hash-algo", algo, str(ours)])
    assert (code, doc["files"]) == (0, [{"path": str(ours), "status": "signed", "key_id": "17b7ae8b", "algo": algo}])
    evm_cert = ["--keyid-from-cert", str(CERT_DER)] if with_cert else []
    run([evmctl, "ima_sign", "--hashalgo", algo, "--key", str(KEY), *evm_cert, str(theirs)])

    ours_value, theirs_value = get_ima(ours), get_ima(theirs)
    assert ours_value is not None
    assert ours_value.hex() == theirs_value.hex()
    assert ours_value.hex() == EXPECTED[algo]
    # Signing did not touch the content.
    assert ours.read_bytes() == FIXED


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_committed_value_verifies_with_both_tools(algo, evmctl, imaguard_json, tmp_path):
    """The committed bytes, written by neither tool, are accepted by both: they are a real signature."""
    target = write_file(tmp_path / "file", FIXED)
    os.setxattr(target, "security.ima", bytes.fromhex(EXPECTED[algo]))
    proc = run([evmctl, "ima_verify", "--key", str(CERT_DER), str(target)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, doc = imaguard_json(["verify", "--cert", str(CERT_PEM), str(target)])
    assert (code, doc["files"]) == (0, [{"path": str(target), "status": "verified", "key_id": "17b7ae8b", "algo": algo}])


def test_identical_files_in_a_tree_get_the_committed_bytes_each(imaguard_json, tmp_path):
    """``sign -r`` signs identical content once (sign/memo.py): every copy carries the fresh bytes."""
    tree = tmp_path / "tree"
    for d in ("b", "e/f"):
        (tree / d).mkdir(parents=True)
    copies = [write_file(tree / name, FIXED) for name in ("a", "b/c", "b/d", "e/f/g")]
    other = write_file(tree / "other", FIXED + b"x")
    code, doc = imaguard_json(["sign", "-r", "-j", "1", "--key", str(KEY), "--cert", str(CERT_PEM), str(tree)])
    assert (code, doc["summary"]) == (0, {"signed": 5})
    for path in copies:
        assert get_ima(path).hex() == EXPECTED["sha256"]
    assert get_ima(other).hex() != EXPECTED["sha256"]
