"""``imaguard keys load``: the refusals that happen before the kernel is touched (pure plan + CLI).

The kernel facts are injected (a typed ``KernelFacts``), and every function that would touch a
keyring is replaced by one that fails the test: a refusal must leave the kernel alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from certlib import NOW, ca_pem, pki
from cryptography import x509

from imaguard.cli import keys as keys_cli
from imaguard.cli.main import main
from imaguard.errors import UnsupportedError
from imaguard.ima.hostfacts import KernelFacts, KeyEntry, KeyringRef
from imaguard.ima.keyload import KeyTarget, is_ca_certificate, plan_load
from imaguard.keys import load_certificate
from imaguard.keys.revocation import RevocationList, parse_ca_certificate, sign_revocation_list
from imaguard.keys.revocation_store import accepted_list_path

if TYPE_CHECKING:
    from imaguard.ima.hostfacts import KernelFacts as Facts

TEST_CERT_PEM = Path(__file__).resolve().parents[1] / "data" / "keys" / "ima-test-rsa2048.pem"

# Debian 12 with IMA: '_ima' kind, no ECDSA.
DEBIAN = KernelFacts(securityfs_mounted=True, ima_dir=True, keyrings=(), ecdsa=False)


def restricted(*vouchers: KeyEntry) -> Facts:
    return KernelFacts(securityfs_mounted=True, ima_dir=True, keyrings=(KeyringRef(".ima", 0x77),),
                       keyring_keys=vouchers, ecdsa=True)  # fmt: skip


def test_rsa_certificate_goes_to_underscore_ima() -> None:
    plan = plan_load([pki().cert("rsa_cert")], DEBIAN, frozenset())
    assert plan.accepted
    assert plan.target is KeyTarget.IMA


def test_ec_certificate_refused_without_ecdsa_and_left_to_the_kernel_when_unknown() -> None:
    plan = plan_load([pki().cert("rsa_cert"), pki().cert("ec_cert")], DEBIAN, frozenset())
    assert [(r.source, r.reason) for r in plan.refusals] == [("ec_cert", "no-ecdsa")]
    assert "CONFIG_CRYPTO_ECDSA" in plan.refusals[0].detail
    unknown = KernelFacts(securityfs_mounted=True, ima_dir=True, keyrings=(), ecdsa=None)
    assert plan_load([pki().cert("ec_cert")], unknown, frozenset()).accepted


def test_revoked_key_refused() -> None:
    cert = pki().cert("rsa_cert")
    plan = plan_load([cert], DEBIAN, frozenset({cert.key_id}))
    assert [(r.reason, r.detail) for r in plan.refusals] == [("revoked-key", f"key {cert.key_id.hex()} is on the revocation list")]


def test_ca_certificate_refused_self_signed_signing_certificate_accepted() -> None:
    plan = plan_load([pki().cert("signing_ca_cert")], DEBIAN, frozenset())
    assert [r.reason for r in plan.refusals] == ["ca-certificate"]
    # openssl req -x509 makes CA:TRUE with keyUsage digitalSignature only: a signing certificate.
    test_cert = load_certificate(TEST_CERT_PEM)
    assert not is_ca_certificate(test_cert.cert)
    assert plan_load([test_cert], DEBIAN, frozenset()).accepted


def test_restricted_ima_keyring_names_the_keys_it_would_accept() -> None:
    cert = pki().cert("rsa_cert")
    other = KeyEntry(".builtin_trusted_keys", "Debian Secure Boot CA: a5f6e7d8a5f6e7d8a5f6e7d8a5f6e7d8a5f6e7d8")
    plan = plan_load([cert], restricted(other), frozenset())
    assert plan.target is KeyTarget.TRUSTED_IMA
    [refusal] = plan.refusals
    assert refusal.reason == "not-signed-by-trusted-key"
    assert ".builtin_trusted_keys: Debian Secure Boot CA: a5f6e7d8" in refusal.detail
    assert "imaguard-keyring mok prepare" in refusal.detail
    ca_skid = pki().ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    ours = KeyEntry(".machine", f"imaguard test IMA CA: {ca_skid}")
    assert plan_load([cert], restricted(other, ours), frozenset()).accepted


def test_no_ima_is_unsupported_only_once_the_certificates_are_fine() -> None:
    no_ima = KernelFacts(keyrings=(), config=None, securityfs_mounted=True)  # securityfs without ima/
    with pytest.raises(UnsupportedError, match="IMA is not available"):
        plan_load([pki().cert("rsa_cert")], no_ima, frozenset())
    assert plan_load([pki().cert("signing_ca_cert")], no_ima, frozenset()).refusals  # the certificate's fault is named first


@pytest.fixture
def untouchable_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the kernel keyring was touched")

    for name in ("find_or_create_ima_keyring", "add_certificate", "keyring_links", "unlink_key", "request_keyring"):
        monkeypatch.setattr(keys_cli.keyring, name, boom)


@pytest.mark.usefixtures("untouchable_kernel")
@pytest.mark.parametrize(("which", "facts", "code", "reason"), [
    ("ec_cert", DEBIAN, 77, "no-ecdsa"),
    ("signing_ca_cert", DEBIAN, 2, "ca-certificate"),
])  # fmt: skip
def test_cli_refusals_touch_nothing(  # noqa: PLR0917 - parametrized test arguments
    which: str, facts: Facts, code: int, reason: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(keys_cli.probe, "read_kernel_facts", lambda **_: facts)
    cert = pki().write(tmp_path, which)
    assert main(["keys", "load", str(cert), "--json"]) == code
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["loaded"] is False
    assert [r["reason"] for r in doc["refused"]] == [reason]
    assert err.endswith("imaguard: error: nothing was loaded\n")


@pytest.mark.usefixtures("untouchable_kernel")
def test_cli_revoked_key_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(keys_cli.probe, "read_kernel_facts", lambda **_: DEBIAN)
    cert = pki().cert("rsa_cert")
    ca_path = ca_pem(tmp_path)
    ca = parse_ca_certificate(ca_path.read_bytes(), str(ca_path))
    rl = RevocationList.empty(ca.key_id, NOW).with_revoked(cert.key_id, NOW, "test")
    list_path = tmp_path / "revoked.dsse"
    list_path.write_bytes(sign_revocation_list(rl, pki().ca_key).to_json())
    cert_path = pki().write(tmp_path, "rsa_cert")
    state = tmp_path / "state"
    assert main(["keys", "load", str(cert_path), "--revocation-list", str(list_path),
                 "--revocation-ca", str(ca_path), "--state-dir", str(state)]) == 3  # fmt: skip
    err = capsys.readouterr().err
    assert f"revoked-key: key {cert.key_id.hex()} is on the revocation list" in err
    assert RevocationList.from_payload(accepted_list_path(state, ca.key_id).read_bytes(), "state") == rl


@pytest.mark.usefixtures("untouchable_kernel")
def test_cli_older_revocation_list_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: hosts were said to keep the highest serial accepted, but nothing did: an old signed
    # list, replayed, un-revoked every key revoked since.
    monkeypatch.setattr(keys_cli.probe, "read_kernel_facts", lambda **_: DEBIAN)
    ca_path = ca_pem(tmp_path)
    ca = parse_ca_certificate(ca_path.read_bytes(), str(ca_path))
    first = RevocationList.empty(ca.key_id, NOW).with_revoked(b"\x01\x02\x03\x04", NOW)
    second = first.with_revoked(pki().cert("rsa_cert").key_id, NOW)
    lists = {}
    for rl in (first, second):
        lists[rl.serial] = tmp_path / f"rl-{rl.serial}.dsse"
        lists[rl.serial].write_bytes(sign_revocation_list(rl, pki().ca_key).to_json())
    state = tmp_path / "state"
    cert_path = pki().write(tmp_path, "rsa_cert")

    def load(serial: int) -> int:
        return main(["keys", "load", str(cert_path), "--revocation-list", str(lists[serial]),
                     "--revocation-ca", str(ca_path), "--state-dir", str(state), "--json"])  # fmt: skip

    assert load(2) == 3  # revoked-key
    assert json.loads(capsys.readouterr().out)["refused"][0]["reason"] == "revoked-key"
    assert load(1) == 3
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["reason"] == "revocation-rollback"
    assert err == (f"imaguard: error: {lists[1]}: revocation list serial 1 is older than the accepted serial 2 "
                   f"(recorded in {accepted_list_path(state, ca.key_id)}); refusing an older revocation list\n")
    assert RevocationList.from_payload(accepted_list_path(state, ca.key_id).read_bytes(), "state") == second
    # a damaged record fails closed
    accepted_list_path(state, ca.key_id).write_text("{")
    assert load(2) == 1
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "revocation-state"


@pytest.mark.usefixtures("untouchable_kernel")
def test_cli_pure_ca_is_unfit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A CA without digitalSignature never gets as far as the plan: the certificate parser refuses it.
    monkeypatch.setattr(keys_cli.probe, "read_kernel_facts", lambda **_: DEBIAN)
    assert main(["keys", "load", str(pki().write(tmp_path, "ca_cert"))]) == 2
    assert "lacks digitalSignature" in capsys.readouterr().err


def test_cli_show_on_a_kernel_without_keyrings_is_77(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(keys_cli.probe, "read_kernel_facts", lambda **_: KernelFacts(keyrings=None))
    assert main(["keys", "show"]) == 77
    assert "the kernel keyrings cannot be read" in capsys.readouterr().err


def test_cli_show_on_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["keys", "show", "--json"])
    out = capsys.readouterr().out
    if code == 77:
        assert json.loads(out)["error"]["reason"] == "no-keyrings"
        return
    doc = json.loads(out)
    assert code == 0
    assert [r["name"] for r in doc["keyrings"]] == list(keys_cli.SHOWN_KEYRINGS)
    assert doc["ima"]["summary"].startswith("IMA: ")


def test_voucher_keyrings_follow_the_kernel_config() -> None:
    from imaguard.ima.hostfacts import parse_kernel_config  # noqa: PLC0415
    from imaguard.ima.keyload import restricted_keyring_voucher_rings  # noqa: PLC0415

    builtin_only = KernelFacts(config=parse_kernel_config("CONFIG_IMA=y\n", "c"))
    assert restricted_keyring_voucher_rings(builtin_only) == (".builtin_trusted_keys",)
    wider = KernelFacts(config=parse_kernel_config("CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY=y\n", "c"))
    assert restricted_keyring_voucher_rings(wider) == (".builtin_trusted_keys", ".secondary_trusted_keys", ".machine")
    assert restricted_keyring_voucher_rings(KernelFacts()) == restricted_keyring_voucher_rings(wider)  # unknown: wider
