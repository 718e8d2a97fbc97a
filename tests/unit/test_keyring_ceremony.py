"""The key ceremony (issue 6, item 1): CA and IMA certificate profiles, MOK export, rotation, revocation.

No root: everything here is files and X.509. Profiles are asserted field by field with
``cryptography`` and cross-checked with openssl (chain verification and its text dump). The
file signed with an issued key and checked by evmctl lives in the root tier
(tests/integration/test_keyring_ceremony_root.py). RSA-2048 keeps key generation fast.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.keys import LocalSigner, key_id_from_public_key, load_certificate, load_private_key
from imaguard.keys.dsse import Envelope
from imaguard.keys.revocation import (
    RevocationList,
    RevokedKey,
    parse_ca_certificate,
    parse_key_id,
    revoked_set,
    sign_revocation_list,
    verify_revocation_list,
)
from imaguard_keyring import ceremony
from imaguard_keyring.cli import main
from imaguard_keyring.profiles import issued_by

sys.path.insert(0, str(Path(__file__).parent))
from test_tooling import PACKAGE, _violations  # the AST check of the pure modules, reused

NOW = datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.UTC)


def run_cli(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def openssl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One CA and one issued RSA-2048 certificate, made through the CLI."""
    top = tmp_path_factory.mktemp("ceremony")
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "rsa2048", "--subject", "Fleet IMA CA"]) == 0
    assert main(["cert", "issue", "--ca", str(top / "ca"), "--out", str(top / "keys"), "--name", "ima-2026",
                 "--key-type", "rsa2048", "--days", "365"]) == 0
    return top


def usage_bits(usage: x509.KeyUsage) -> set[str]:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign"]
    return {n for n in names if getattr(usage, n)}


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the CA profile ---------------------------------------------------------------------------


def test_ca_profile_field_by_field(world):
    ca = load_pem(world / "ca" / "ca.pem")
    bc = ext(ca, x509.BasicConstraints)
    assert (bc.critical, bc.value.ca, bc.value.path_length) == (True, True, 0)
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical
    assert usage_bits(ku.value) == {"key_cert_sign", "crl_sign"}
    skid = ext(ca, x509.SubjectKeyIdentifier)
    assert not skid.critical
    assert skid.value == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())  # RFC 5280 method 1
    assert ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == skid.value.digest
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Fleet IMA CA"
    assert ca.not_valid_after - ca.not_valid_before == datetime.timedelta(days=3650)
    assert issued_by(ca, ca)  # self-signed
    assert ca.signature_hash_algorithm.name == "sha256"
    assert (world / "ca" / "ca.der").read_bytes() == ca.public_bytes(serialization.Encoding.DER)


def test_ca_files_modes_and_key(world):
    assert stat.S_IMODE((world / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((world / "ca" / "ca.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((world / "ca").stat().st_mode) == 0o700
    assert b"ENCRYPTED" not in (world / "ca" / "ca.key").read_bytes()
    parsed = parse_ca_certificate((world / "ca" / "ca.pem").read_bytes(), "ca.pem")
    load_private_key(world / "ca" / "ca.key", None, parsed)  # the key belongs to the certificate


def test_ca_is_not_an_ima_verification_key(world):
    # A CA without digitalSignature is refused where file signatures are verified, on purpose.
    with pytest.raises(UsageError, match="lacks digitalSignature"):
        load_certificate(world / "ca" / "ca.pem")


def test_openssl_reads_the_ca_extensions(world):
    text = openssl("x509", "-in", str(world / "ca" / "ca.pem"), "-noout", "-text").stdout
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0", text)
    assert re.search(r"X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\n", text)
    assert "X509v3 Subject Key Identifier" in text


# --- the IMA signing certificate profile ------------------------------------------------------


def test_ima_cert_profile_field_by_field(world):
    ca = load_pem(world / "ca" / "ca.pem")
    cert = load_pem(world / "keys" / "ima-2026.pem")
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value.ca, bc.value.path_length) == (True, False, None)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert usage_bits(ku.value) == {"digital_signature"}
    eku = ext(cert, x509.ExtendedKeyUsage)
    assert (eku.critical, list(eku.value)) == (False, [ExtendedKeyUsageOID.CODE_SIGNING])
    skid = ext(cert, x509.SubjectKeyIdentifier).value
    assert skid == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    akid = ext(cert, x509.AuthorityKeyIdentifier).value
    assert akid.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert cert.issuer == ca.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ima-2026"
    assert cert.not_valid_after - cert.not_valid_before == datetime.timedelta(days=365)
    assert issued_by(cert, ca)
    assert not issued_by(ca, cert)
    assert (world / "keys" / "ima-2026.der").read_bytes() == cert.public_bytes(serialization.Encoding.DER)
    assert stat.S_IMODE((world / "keys" / "ima-2026.key").stat().st_mode) == 0o600


def test_openssl_verifies_the_chain_and_shows_the_extensions(world):
    ca_pem, cert_pem = world / "ca" / "ca.pem", world / "keys" / "ima-2026.pem"
    proc = openssl("verify", "-x509_strict", "-CAfile", str(ca_pem), str(cert_pem))
    assert (proc.returncode, proc.stdout) == (0, f"{cert_pem}: OK\n"), proc.stderr
    text = openssl("x509", "-in", str(cert_pem), "-noout", "-text").stdout
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:FALSE", text)
    assert re.search(r"X509v3 Key Usage: critical\s+Digital Signature\n", text)
    assert re.search(r"X509v3 Extended Key Usage:\s*\n\s+Code Signing", text)
    skid = ext(load_pem(cert_pem), x509.SubjectKeyIdentifier).value.digest
    ca_skid = ext(load_pem(ca_pem), x509.SubjectKeyIdentifier).value.digest
    assert re.search(r"Subject Key Identifier:\s*\n\s+" + skid.hex(":").upper(), text)
    assert re.search(r"Authority Key Identifier:\s*\n\s+(keyid:)?" + ca_skid.hex(":").upper(), text)


def test_openssl_refuses_the_chain_with_another_ca(world, tmp_path):
    assert main(["ca", "create", "--out", str(tmp_path / "other"), "--key-type", "p256"]) == 0
    proc = openssl("verify", "-CAfile", str(tmp_path / "other" / "ca.pem"), str(world / "keys" / "ima-2026.pem"))
    assert proc.returncode != 0


def test_issued_cert_loads_with_imaguard_keys_and_key_id_is_skid_tail(world):
    skid = ext(load_pem(world / "keys" / "ima-2026.pem"), x509.SubjectKeyIdentifier).value.digest
    for name in ("ima-2026.pem", "ima-2026.der"):
        cert = load_certificate(world / "keys" / name)
        assert cert.key_id == skid[-4:]
        assert key_id_from_public_key(cert.public_key) == skid[-4:]  # evmctl's calc_keyid_v2 agrees
    cert = load_certificate(world / "keys" / "ima-2026.pem")
    signer = LocalSigner.from_key(load_private_key(world / "keys" / "ima-2026.key", None, cert), cert)
    assert signer.key_id == skid[-4:]


def test_ec_certificate_warns_with_a_stable_id(world, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(world / "ca"), "--out", str(tmp_path),
                                      "--name", "ec", "--key-type", "p384", "--json"])
    assert code == 0
    assert err.startswith("imaguard-keyring: warning [W-EC-KEY]: the new IMA certificate uses an EC key;")
    assert "Debian 12" in err
    doc = json.loads(out)["certificate"]
    cert = load_certificate(tmp_path / "ec.der")
    assert isinstance(cert.public_key, ec.EllipticCurvePublicKey)
    assert (doc["key_type"], doc["key_id"]) == ("p384", cert.key_id.hex())
    assert openssl("verify", "-CAfile", str(world / "ca" / "ca.pem"), str(tmp_path / "ec.pem")).returncode == 0


def test_rsa_certificate_does_not_warn(world, tmp_path, capsys):
    code, _, err = run_cli(capsys, ["cert", "issue", "--ca", str(world / "ca"), "--out", str(tmp_path),
                                    "--name", "rsa", "--key-type", "rsa2048"])
    # No [W-EC-KEY]: the one warning is the unencrypted key's (tests/unit/test_keyring_pkcs8.py).
    assert (code, err.count("\n"), err.startswith("imaguard-keyring: warning [W-KEY-UNENCRYPTED]: ")) == (0, 1, True)


def test_p384_ca_signs_with_sha384(tmp_path, capsys):
    code, _, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "p384"])
    assert code == 0
    assert "[W-EC-KEY]: the CA uses an EC key" in err
    assert load_pem(tmp_path / "ca" / "ca.pem").signature_hash_algorithm.name == "sha384"


# --- never overwrite, all or nothing ------------------------------------------------------------


def test_ca_create_refuses_to_overwrite(world, capsys):
    before = {p.name: p.read_bytes() for p in (world / "ca").iterdir()}
    code, _, err = run_cli(capsys, ["ca", "create", "--out", str(world / "ca"), "--key-type", "rsa2048"])
    assert (code, err) == (2, f"imaguard-keyring: error: {world / 'ca' / 'ca.key'}: already exists; refusing to overwrite\n")
    assert {p.name: p.read_bytes() for p in (world / "ca").iterdir()} == before


def test_cert_issue_refuses_to_overwrite(world, capsys):
    code, _, err = run_cli(capsys, ["cert", "issue", "--ca", str(world / "ca"), "--out", str(world / "keys"),
                                    "--name", "ima-2026", "--key-type", "rsa2048"])
    path = world / "keys" / "ima-2026.key"
    assert (code, err) == (2, f"imaguard-keyring: error: {path}: already exists; refusing to overwrite\n")


def test_a_failed_write_leaves_no_files(tmp_path, monkeypatch):
    real_open = os.open

    def failing_open(path, flags, mode=0o777, **kw):
        if str(path).endswith(".der"):
            raise OSError(28, "No space left on device", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(HostStateError, match="No space left on device") as err:
        ceremony.write_new_files([(tmp_path / "a.key", b"k", 0o600), (tmp_path / "a.pem", b"p", 0o644),
                                  (tmp_path / "a.der", b"d", 0o644)])
    assert err.value.reason == "state-write"
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_appears_after_the_check_is_not_overwritten(tmp_path, monkeypatch):
    (tmp_path / "a.pem").write_bytes(b"theirs")
    monkeypatch.setattr(ceremony, "refuse_existing", lambda paths: None)  # lose the race on purpose
    with pytest.raises(UsageError, match="already exists") as err:
        ceremony.write_new_files([(tmp_path / "a.key", b"k", 0o600), (tmp_path / "a.pem", b"p", 0o644)])
    assert err.value.reason == "exists"
    assert (tmp_path / "a.pem").read_bytes() == b"theirs"
    assert not (tmp_path / "a.key").exists()


def test_symlink_in_place_of_a_file_is_refused(tmp_path):
    (tmp_path / "ca.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="already exists"):
        ceremony.write_new_files([(tmp_path / "ca.key", b"k", 0o600)])
    assert not (tmp_path / "elsewhere").exists()


# --- passwords -------------------------------------------------------------------------------------


def test_encrypted_ca_key_needs_its_password(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    assert main(["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048",
                 "--password-file", str(pw)]) == 0
    assert b"ENCRYPTED" in (tmp_path / "ca" / "ca.key").read_bytes()
    issue = ["cert", "issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "k"), "--name", "a",
             "--key-type", "rsa2048"]
    code, _, err = run_cli(capsys, issue)
    assert (code, err) == (2, f"imaguard-keyring: error: {tmp_path / 'ca' / 'ca.key'}: the key is encrypted; give its password\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    code, _, err = run_cli(capsys, [*issue, "--ca-password-file", str(wrong)])
    assert (code, err) == (2, f"imaguard-keyring: error: {tmp_path / 'ca' / 'ca.key'}: wrong password for the key\n")
    assert not (tmp_path / "k").exists()
    code, _, _ = run_cli(capsys, [*issue, "--ca-password-file", str(pw), "--password-file", str(pw)])
    assert code == 0
    assert b"ENCRYPTED" in (tmp_path / "k" / "a.key").read_bytes()
    cert = load_certificate(tmp_path / "k" / "a.pem")
    load_private_key(tmp_path / "k" / "a.key", b"correct horse", cert)


def test_empty_password_file_is_refused(tmp_path, capsys):
    (tmp_path / "pw").write_text("\n")
    code, _, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "ca"), "--password-file",
                                    str(tmp_path / "pw")])
    assert (code, err) == (2, f"imaguard-keyring: error: {tmp_path / 'pw'}: the password file is empty\n")


# --- CLI errors: one line, exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["ca", "create", "--out", "{t}/x", "--key-type", "rsa1024"],
     "imaguard-keyring ca create: argument --key-type: 'rsa1024': choose one of rsa2048, rsa3072, rsa4096, p256, p384"),
    (["ca", "create", "--out", "{t}/x", "--days", "0"],
     "imaguard-keyring ca create: argument --days: '0': must be between 1 and 36500"),
    (["cert", "issue", "--ca", "{t}/nope", "--out", "{t}/y", "--name", "a"],
     "{t}/nope: not a CA directory (made by `imaguard-keyring ca create`)"),
    (["cert", "issue", "--ca", "{ca}", "--out", "{t}/y", "--name", "../a"],
     "--name '../a': use 1-64 letters, digits, '.', '_' or '-', not starting with a dot or dash"),
    (["cert", "issue", "--ca", "{ca}", "--out", "{t}/y", "--name", "a", "--days", "36500"],
     "the certificate would outlive its CA (CA valid until {until}); use fewer --days or a new CA"),
    (["revoke", "--ca", "{ca}", "--list", "{t}/r.json", "--key-id", "12345"],
     "--key-id: '12345' is not an IMA key id (8 hex digits, e.g. 1a2b3c4d)"),
    (["revocations", "show", "--ca", "{ca}", "--list", "{t}/none.json"], "{t}/none.json: no such revocation list"),
    (["mok", "prepare", "--ca", "{cert}", "--out", "{t}/m"],
     "{cert}: not a CA certificate (basicConstraints CA:TRUE missing)"),
    (["ca"], "imaguard-keyring ca: the following arguments are required: COMMAND"),
])
def test_cli_errors_are_one_line_exit_2(world, tmp_path, capsys, argv, message):
    until = f"{load_pem(world / 'ca' / 'ca.pem').not_valid_after:%Y-%m-%d}"
    fill = {"t": str(tmp_path), "ca": str(world / "ca"), "cert": str(world / "keys" / "ima-2026.pem"), "until": until}
    code, out, err = run_cli(capsys, [a.format(**fill) for a in argv])
    assert (code, out, err) == (2, "", f"imaguard-keyring: error: {message.format(**fill)}\n")
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_json_errors_carry_the_reason(world, tmp_path, capsys):
    code, out, _ = run_cli(capsys, ["ca", "create", "--out", str(world / "ca"), "--json"])
    assert code == 2
    assert json.loads(out)["error"]["reason"] == "exists"


@pytest.mark.parametrize(("argv", "phrase"), [
    (["ca", "create"], "keyCertSign and cRLSign"),
    (["cert", "issue"], "restrict_link_by_digsig"),
    (["mok", "prepare"], "MokListTrustedRT"),
    (["rotate"], "(4) retire"),
    (["revoke"], "DSSE envelope"),
    ([], "Key ceremony, in order"),
])
def test_help_reads_like_a_man_page(capsys, argv, phrase):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    assert phrase in " ".join(capsys.readouterr().out.split())


# --- MOK ---------------------------------------------------------------------------------------------


def test_mok_prepare_writes_der_and_prints_the_commands(world, tmp_path, capsys):
    ca = parse_ca_certificate((world / "ca" / "ca.pem").read_bytes(), "ca")
    code, out, err = run_cli(capsys, ["mok", "prepare", "--ca", str(world / "ca" / "ca.pem"), "--out", str(tmp_path)])
    der = tmp_path / f"ima-ca-{ca.key_id.hex()}.der"
    assert (code, err) == (0, "")
    assert der.read_bytes() == (world / "ca" / "ca.der").read_bytes()
    assert f"  mokutil --import {der}\n" in out
    assert "  mokutil --trust-mok\n" in out
    assert "Do NOT enroll anything" in out  # the Debian 12 case is said first
    assert "Linux 6.4 or later" in out
    assert "never runs mokutil" in out
    assert "without digitalSignature: this CA meets both. Otherwise" in out  # its own CA: keyCertSign only
    code, _, err = run_cli(capsys, ["mok", "prepare", "--ca", str(world / "ca"), "--out", str(tmp_path)])
    assert (code, err) == (2, f"imaguard-keyring: error: {der}: already exists; refusing to overwrite\n")


# --- rotation -----------------------------------------------------------------------------------------


def test_rotate_issues_a_successor_and_prints_the_procedure(world, tmp_path, capsys):
    old = load_certificate(world / "keys" / "ima-2026.pem")
    code, out, _ = run_cli(capsys, ["rotate", "--ca", str(world / "ca"), "--old", str(world / "keys" / "ima-2026.pem"),
                                    "--out", str(tmp_path), "--days", "30"])
    assert code == 0
    (pem,) = tmp_path.glob("ima-2026-*.pem")
    new = load_certificate(pem)
    assert pem.stem == f"ima-2026-{new.key_id.hex()}"
    assert new.key_id != old.key_id
    assert new.subject == old.subject
    assert new.key_kind == old.key_kind == "RSA-2048"
    assert issued_by(new.cert, load_pem(world / "ca" / "ca.pem"))
    steps = [out.index(s) for s in ("1. Install", "2. Re-sign", "3. Verify", "4. Retire")]
    assert steps == sorted(steps)
    assert f"--key-id {old.key_id.hex()}" in out
    assert f"imaguard sign --key {pem.with_suffix('.key')} --cert {pem}" in out
    # The initramfs holds the keys the next boot loads: rebuilt after installing, and after retiring.
    assert f"imaguard keys install {pem.with_suffix('.der')}" in out
    assert out.count("update-initramfs -u -k all") == 2
    assert out.index("update-initramfs") < steps[1] < steps[3] < out.rindex("update-initramfs")
    # Rotating the successor does not pile up key ids in the name.
    code, _, _ = run_cli(capsys, ["rotate", "--ca", str(world / "ca"), "--old", str(pem), "--out", str(tmp_path)])
    assert code == 0
    assert {len(p.stem) for p in tmp_path.glob("*.pem")} == {len("ima-2026-") + 8}


def test_rotate_refuses_a_certificate_of_another_ca(world, tmp_path, capsys):
    assert main(["ca", "create", "--out", str(tmp_path / "other"), "--key-type", "rsa2048"]) == 0
    code, _, err = run_cli(capsys, ["rotate", "--ca", str(tmp_path / "other"), "--old",
                                    str(world / "keys" / "ima-2026.pem"), "--out", str(tmp_path / "k")])
    assert code == 2
    assert err.startswith(f"imaguard-keyring: error: {world / 'keys' / 'ima-2026.pem'}: not issued by the CA CN=imaguard IMA CA")


# --- the revocation list: model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(world):
    return ceremony.load_authority(world / "ca", None)


def test_revocation_list_round_trip(authority):
    rl = (RevocationList.empty(authority.cert.key_id, NOW)
          .with_revoked(b"\x22\x22\x22\x22", NOW, "superseded")
          .with_revoked(b"\x11\x11\x11\x11", NOW, "key-compromise", "CN=ima-2025"))
    assert rl.serial == 2
    assert [e.key_id for e in rl.entries] == [b"\x11\x11\x11\x11", b"\x22\x22\x22\x22"]
    assert rl.is_revoked(b"\x11\x11\x11\x11")
    assert not rl.is_revoked(b"\x33\x33\x33\x33")
    assert rl.key_ids == frozenset({b"\x11\x11\x11\x11", b"\x22\x22\x22\x22"})
    other = RevocationList.empty(b"\x01\x02\x03\x04", NOW).with_revoked(b"\x33\x33\x33\x33", NOW)
    assert revoked_set([rl, other]) == rl.key_ids | {b"\x33\x33\x33\x33"}
    assert rl.entry(b"\x11\x11\x11\x11") == RevokedKey(b"\x11\x11\x11\x11", NOW, "key-compromise", "CN=ima-2025")
    again = RevocationList.from_payload(rl.to_payload(), "rl")
    assert again == rl
    assert again.to_payload() == rl.to_payload()  # parse -> serialize -> same bytes
    data = sign_revocation_list(rl, authority.key).to_json()
    assert verify_revocation_list(data, (authority.cert,), "rl") == rl


def test_revocation_list_tampering_is_detected(authority, world, tmp_path):
    rl = RevocationList.empty(authority.cert.key_id, NOW).with_revoked(b"\x11\x11\x11\x11", NOW)
    env = json.loads(sign_revocation_list(rl, authority.key).to_json())
    # Drop the revoked key from the payload but keep the signature: the signature no longer covers it.
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["revoked"] = []
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(TrustError) as err:
        verify_revocation_list(json.dumps(env).encode(), (authority.cert,), "rl")
    assert err.value.reason == "bad-envelope-signature"
    # Signed by another CA: refused by this one.
    assert main(["ca", "create", "--out", str(tmp_path / "other"), "--key-type", "p256"]) == 0
    other = ceremony.load_authority(tmp_path / "other", None)
    foreign = RevocationList.empty(other.cert.key_id, NOW)
    with pytest.raises(TrustError):
        verify_revocation_list(sign_revocation_list(foreign, other.key).to_json(), (authority.cert,), "rl")
    # Signed by this CA but naming another issuer: refused.
    mislabelled = Envelope(env["payloadType"], RevocationList.empty(other.cert.key_id, NOW).to_payload(), ())
    signed = sign_revocation_list(RevocationList.empty(authority.cert.key_id, NOW), authority.key)
    forged = Envelope(mislabelled.payload_type, mislabelled.payload, signed.signatures)
    with pytest.raises(TrustError):
        verify_revocation_list(forged.to_json(), (authority.cert,), "rl")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(extra=1), "rl: revocation list has unknown fields 'extra'"),
    (lambda d: d.pop("serial"), "rl: revocation list lacks serial"),
    (lambda d: d.update(format=True), "not an imaguard revocation list of format 1"),
    (lambda d: d.update(format=2), "not an imaguard revocation list of format 1"),
    (lambda d: d.update(serial=-1), "serial must be a non-negative integer"),
    (lambda d: d.update(serial=True), "serial must be a non-negative integer"),
    (lambda d: d.update(issuer_key_id="ABCDEF01"), "issuer_key_id: must be 8 lowercase hex digits"),
    (lambda d: d.update(issued="yesterday"), "is not a time like"),
    (lambda d: d["revoked"].append(dict(d["revoked"][0])), "a key id is listed twice"),
    (lambda d: d["revoked"][0].update(key_id="1111"), "must be 8 lowercase hex digits"),
    (lambda d: d["revoked"][0].update(reason="a\nb"), "reason must be one line"),
    (lambda d: d["revoked"][0].pop("revoked_at"), "an entry has key_id, revoked_at"),
])
def test_malformed_payloads_are_refused(mutate, message):
    doc = json.loads(RevocationList.empty(b"\xaa\xbb\xcc\xdd", NOW).with_revoked(b"\x11\x11\x11\x11", NOW).to_payload())
    mutate(doc)
    with pytest.raises(FormatError, match=re.escape(message)):
        RevocationList.from_payload(json.dumps(doc).encode(), "rl")


def test_successor_checks_refuse_rollback():
    first = RevocationList.empty(b"\xaa\xbb\xcc\xdd", NOW).with_revoked(b"\x11\x11\x11\x11", NOW)
    second = first.with_revoked(b"\x22\x22\x22\x22", NOW)
    second.check_successor(first)
    second.check_successor(second)
    with pytest.raises(TrustError) as err:
        first.check_successor(second)
    assert err.value.reason == "revocation-rollback"
    forgetful = RevocationList(b"\xaa\xbb\xcc\xdd", 5, NOW, ())
    with pytest.raises(TrustError, match="drops revoked keys 11111111"):
        forgetful.check_successor(first)
    with pytest.raises(TrustError) as err:
        RevocationList.empty(b"\x01\x02\x03\x04", NOW).check_successor(first)
    assert err.value.reason == "revocation-issuer-changed"


def test_revoking_twice_or_the_ca_itself_is_refused():
    rl = RevocationList.empty(b"\xaa\xbb\xcc\xdd", NOW).with_revoked(b"\x11\x11\x11\x11", NOW)
    with pytest.raises(UsageError, match="already revoked"):
        rl.with_revoked(b"\x11\x11\x11\x11", NOW)
    with pytest.raises(UsageError, match="the CA's own key"):
        rl.with_revoked(b"\xaa\xbb\xcc\xdd", NOW)


@pytest.mark.parametrize(("text", "key_id"), [
    ("1a2b3c4d", b"\x1a\x2b\x3c\x4d"),
    ("0x1A2B3C4D", b"\x1a\x2b\x3c\x4d"),
    ("1a:2b:3c:4d", b"\x1a\x2b\x3c\x4d"),
    ("00" * 16 + "1a2b3c4d", b"\x1a\x2b\x3c\x4d"),  # a whole SKID: the kernel matches its tail
])
def test_parse_key_id(text, key_id):
    assert parse_key_id(text) == key_id


def test_revocation_module_is_pure():
    assert _violations(PACKAGE / "keys" / "revocation.py") == []


# --- the revocation list: CLI ---------------------------------------------------------------------------


def test_revoke_builds_a_signed_list(world, tmp_path, capsys):
    rl_path = tmp_path / "revocations.json"
    cert = load_certificate(world / "keys" / "ima-2026.pem")
    base = ["revoke", "--ca", str(world / "ca"), "--list", str(rl_path)]
    code, out, _ = run_cli(capsys, [*base, "--key-id", "1a2b3c4d", "--reason", "key-compromise", "--new"])
    assert code == 0
    assert out.startswith(f"revoked key 1a2b3c4d: {rl_path} is now serial 1 with 1 key(s)")
    code, out, _ = run_cli(capsys, [*base, "--cert", str(world / "keys" / "ima-2026.pem"), "--json"])
    assert (code, json.loads(out)) == (0, {"list": str(rl_path), "key_id": cert.key_id.hex(), "changed": True,
                                           "serial": 2})
    before = rl_path.read_bytes()
    code, out, _ = run_cli(capsys, [*base, "--key-id", "1A2B3C4D"])
    assert code == 0
    assert out.startswith("key 1a2b3c4d is already revoked (since ")
    assert rl_path.read_bytes() == before
    rl = verify_revocation_list(before, (parse_ca_certificate((world / "ca" / "ca.pem").read_bytes(), "ca"),), "rl")
    assert rl.serial == 2
    assert rl.entry(cert.key_id).subject == "CN=ima-2026"
    assert rl.entry(b"\x1a\x2b\x3c\x4d").reason == "key-compromise"
    code, out, _ = run_cli(capsys, ["revocations", "show", "--list", str(rl_path), "--ca", str(world / "ca")])
    assert code == 0
    assert "serial 2," in out
    assert "1a2b3c4d" in out


def test_revoke_starts_a_list_only_with_new_and_never_makes_directories(world, tmp_path, capsys):
    # Regression: a missing --list path (a typo, an unmounted share) silently started a serial-1 list,
    # directories included, that forgot every key revoked so far.
    base = ["revoke", "--ca", str(world / "ca"), "--key-id", "1a2b3c4d"]
    missing = tmp_path / "typo" / "revocations.json"
    code, _, err = run_cli(capsys, [*base, "--list", str(missing)])
    assert (code, err) == (2, f"imaguard-keyring: error: {missing}: no revocation list there; to start a new one (serial 1) "
                              "give --new\n")  # fmt: skip
    code, _, err = run_cli(capsys, [*base, "--list", str(missing), "--new"])
    assert (code, err) == (2, f"imaguard-keyring: error: {missing.parent}: no such directory (it is not created)\n")
    assert not missing.parent.exists()
    rl_path = tmp_path / "revocations.json"
    assert run_cli(capsys, [*base, "--list", str(rl_path), "--new"])[0] == 0
    before = rl_path.read_bytes()
    code, _, err = run_cli(capsys, ["revoke", "--ca", str(world / "ca"), "--key-id", "5e6f7a8b", "--list",
                                    str(rl_path), "--new"])  # fmt: skip
    assert (code, err) == (2, f"imaguard-keyring: error: {rl_path}: a revocation list (serial 1) is already there: --new only "
                              "starts a list where there is none\n")  # fmt: skip
    assert rl_path.read_bytes() == before


def test_revoke_refuses_to_extend_a_tampered_list(world, tmp_path, capsys):
    rl_path = tmp_path / "revocations.json"
    base = ["revoke", "--ca", str(world / "ca"), "--list", str(rl_path)]
    assert run_cli(capsys, [*base, "--key-id", "1a2b3c4d", "--new"])[0] == 0
    env = json.loads(rl_path.read_bytes())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["revoked"] = []
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    rl_path.write_text(json.dumps(env))
    tampered = rl_path.read_bytes()
    code, _, err = run_cli(capsys, [*base, "--key-id", "5e6f7a8b"])
    assert (code, err) == (3, f"imaguard-keyring: error: {rl_path}: no signature verifies with a trusted authority certificate\n")
    assert rl_path.read_bytes() == tampered
    code, _, err = run_cli(capsys, ["revocations", "show", "--list", str(rl_path), "--ca", str(world / "ca")])
    assert code == 3


def test_a_corrupt_list_does_not_verify(world, tmp_path, capsys):
    rl_path = tmp_path / "revocations.json"
    rl_path.write_text("{not json")
    code, _, err = run_cli(capsys, ["revoke", "--ca", str(world / "ca"), "--list", str(rl_path), "--key-id", "1a2b3c4d"])
    assert code == 3  # as `imaguard keys install` says of it (audit 2, finding 4); it was 1 (malformed)
    assert err.startswith(f"imaguard-keyring: error: {rl_path}: not a DSSE envelope")


def test_envelope_verifies_with_plain_cryptography(world, tmp_path):
    # What a host without imaguard can check: PAE over the payload, RSA PKCS#1 v1.5 SHA-256, CA key.
    rl_path = tmp_path / "r.json"
    assert main(["revoke", "--ca", str(world / "ca"), "--list", str(rl_path), "--key-id", "1a2b3c4d", "--new"]) == 0
    env = json.loads(rl_path.read_bytes())
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
    load_pem(world / "ca" / "ca.pem").public_key().verify(
        base64.b64decode(env["signatures"][0]["sig"]), pae, padding.PKCS1v15(), hashes.SHA256())


def test_mok_prepare_says_what_a_foreign_ca_meets(tmp_path, capsys):
    """Regression (review): it said "this CA is" fit for the .machine keyring whatever the CA's
    extensions; one without keyUsage is refused by the kernel's restrict_link_by_ca."""
    cases = {
        "no-usage": (["-addext", "basicConstraints=critical,CA:TRUE"],
                     "this CA does NOT (it lacks keyCertSign): neither option takes it"),
        "with-ds": (["-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign"],
                    "this CA meets INTEGRITY_CA_MACHINE_KEYRING, NOT _MAX (it has digitalSignature)"),
    }
    for name, (ext, claim) in cases.items():
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
                        "-out", str(d / "ca.pem"), "-subj", f"/CN={name}", "-days", "30", *ext],
                       check=True, capture_output=True)  # fmt: skip
        code, out, err = run_cli(capsys, ["mok", "prepare", "--ca", str(d / "ca.pem"), "--out", str(d / "out")])
        assert (code, err) == (0, ""), err
        assert f"without digitalSignature: {claim}. Otherwise" in out
