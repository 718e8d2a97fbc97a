"""``imaguard policy apply``: every refusal writes nothing to securityfs; a load writes one rule per write().

The host's securityfs is never written: the tests point ``policy_apply.IMA_DIR`` at a directory
holding a plain ``policy`` file (what the kernel's file looks like to ``open``/``write``), inject
the kernel command line, the loaded key ids and the gate's file facts, and stub the priming exec.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imaguard.cli import policy as policy_cli
from imaguard.cli import policy_apply
from imaguard.cli.main import main
from imaguard.ima import securityfs
from imaguard.ima.coverage import KernelKeys
from imaguard.ima.gate import FileFacts, FileKind, FsFacts
from imaguard.ima.hostfacts import parse_kernel_config
from imaguard.ima.policy import parse_policy, render_rule

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "policies" / "appraise-exec.policy"
EXT4 = FsFacts(magic=0xEF53, name="ext4")
KEY_ID = bytes.fromhex("17b7ae8b")
BOOTPARAM_CONFIG = "CONFIG_IMA=y\nCONFIG_IMA_APPRAISE=y\nCONFIG_IMA_APPRAISE_BOOTPARAM=y\n"
EFI_GUID = "8be4df61-93ca-11d0-aae0-e0cb4ee0e8c1"


@pytest.fixture
def fake_ima(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``fake_ima(cmdline=(), unsigned=())``: a stand-in securityfs ima/ dir; returns its policy file."""

    def make(cmdline: tuple[str, ...] = (), unsigned: tuple[str, ...] = (), config: str | None = BOOTPARAM_CONFIG,
             secure_boot: bytes | None = None) -> Path:
        ima = tmp_path / "ima"
        ima.mkdir(exist_ok=True)
        (ima / "policy").write_text("")
        monkeypatch.setattr(policy_apply, "IMA_DIR", str(ima))
        monkeypatch.setattr(policy_apply, "read_cmdline", lambda: cmdline)
        kernel_config = None if config is None else parse_kernel_config(config, "/boot/config-test")
        monkeypatch.setattr(policy_apply.probe, "read_kernel_config", lambda _release: kernel_config)
        efi = tmp_path / "efi"  # absent: a BIOS host, no secure boot; else efivarfs with SecureBoot
        if secure_boot is not None:
            (efi / "efivars").mkdir(parents=True, exist_ok=True)
            (efi / "efivars" / f"SecureBoot-{EFI_GUID}").write_bytes(b"\x06\x00\x00\x00" + secure_boot)
        monkeypatch.setattr(policy_apply, "EFI_DIR", str(efi))
        monkeypatch.setattr(policy_cli.coverage, "kernel_key_ids", lambda: KernelKeys("_ima", frozenset({KEY_ID})))
        facts = [FileFacts(p, frozenset({FileKind.EXECUTABLE}), EXT4, 0, 0) for p in unsigned]
        monkeypatch.setattr(policy_apply.coverage, "collect", lambda *_a, **_k: iter(facts))
        monkeypatch.setattr(policy_apply, "_prime", lambda program, _mode: {"program": program, "result": "stub"})
        return ima / "policy"

    return make


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, json.loads(out), err


def test_on_a_host_without_ima_nothing_is_written(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if Path(securityfs.IMA_DIR).is_dir():
        pytest.skip("this host has IMA: the no-IMA path is what this test proves")

    def boom(*_a: object, **_k: object) -> int:
        raise AssertionError("securityfs was written")

    monkeypatch.setattr(policy_apply.securityfs, "write_policy", boom)
    for stage in ("measure", "log", "enforce"):
        code, doc, err = run(["policy", "apply", "--stage", stage], capsys)
        assert code == 77
        assert doc["error"]["reason"] == "no-ima"
        assert "nothing was written" in err


def test_invalid_policy_and_stage_mismatch_write_nothing(
    fake_ima: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = fake_ima()
    bad = tmp_path / "bad.policy"
    bad.write_text("measure func=BPRM_CHECK\nappraise func=BPRM_CHECK template=ima-sig\n")
    code, doc, _ = run(["policy", "apply", "--file", str(bad), "--stage", "measure"], capsys)
    assert (code, doc["error"]["reason"]) == (2, "invalid-policy")
    code, doc, _ = run(["policy", "apply", "--template", "appraise-exec", "--stage", "measure"], capsys)
    assert (code, doc["error"]["reason"]) == (2, "stage-mismatch")
    assert policy.read_text() == ""


@pytest.mark.parametrize("stage", ["log", "enforce"])
@pytest.mark.parametrize("verb", ["apply", "install"])
def test_a_policy_without_appraise_rules_is_no_log_or_enforce_stage(
    stage: str, verb: str, fake_ima: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Audit: an empty --file (or the measure template) was installed as "stage enforce".
    policy = fake_ima()
    empty = tmp_path / "empty.policy"
    empty.write_text("")
    root = tmp_path / "root"
    root.mkdir()
    where = ["--root", str(root)] if verb == "install" else []
    for given, source in ((["--file", str(empty)], str(empty)), (["--template", "measure"], str(ROOT / "policies" / "measure.policy"))):
        code, doc, err = run(["policy", verb, *given, "--stage", stage, *where], capsys)
        message = (f"{source}: --stage {stage}, but the policy has no appraise rules: it would appraise nothing "
                   "(use --stage measure, or a policy with appraise rules)")
        assert (code, doc) == (2, {"error": {"reason": "stage-mismatch", "message": message}})
        assert err == f"imaguard: error: {message}\n"
    assert policy.read_text() == ""
    assert list(root.iterdir()) == []


def test_gate_refuses_enforce_and_writes_nothing(fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    policy = fake_ima(unsigned=("/usr/bin/unsigned-tool",))
    code, doc, err = run(["policy", "apply", "--stage", "enforce"], capsys)
    assert code == 3
    assert doc["loaded"] is False
    assert doc["gate"]["uncovered"][0]["path"] == "/usr/bin/unsigned-tool"
    assert doc["gate"]["uncovered"][0]["reason"] == "no-signature"
    assert ("the gate refused: 1 of 1 file(s) in scope would be denied: /usr/bin/unsigned-tool (no-signature); "
            "nothing was written") in err  # the file is named even with --json
    assert policy.read_text() == ""


def test_unsafe_enforce_loads_loudly_and_is_recorded(fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    policy = fake_ima(unsigned=("/usr/bin/unsigned-tool",))
    code, doc, err = run(["policy", "apply", "--stage", "enforce", "--unsafe-enforce-with-unsigned-files"], capsys)
    assert code == 0
    assert doc["unsafe_enforce_with_unsigned_files"] is True
    assert doc["gate"]["decision"] == "refuse"
    assert "imaguard: warning [W-UNSAFE-ENFORCE]: --unsafe-enforce-with-unsigned-files: enforcing although 1 file(s)" in err
    rules = [render_rule(r) for r in parse_policy(TEMPLATE.read_text()).rules]
    assert policy.read_text() == "".join(r + "\n" for r in rules)
    assert doc["rules_written"] == len(rules)
    assert doc["policy_file_after_load"] == "present"
    assert doc["prime"] == {"program": "/bin/true", "result": "stub"}


def test_a_loaded_enforce_policy_warns_that_package_changes_must_wait(
    fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = fake_ima()  # nothing unsigned: the gate allows
    code, doc, err = run(["policy", "apply", "--stage", "enforce"], capsys)
    assert (code, doc["loaded"]) == (0, True)
    assert policy.read_text() != ""
    assert ("imaguard: warning [W-PACKAGE-CHANGES]: while this policy enforces, do not install or upgrade "
            "packages: dpkg writes their files without security.ima") in err
    assert doc["warnings"] == [f"{policy_apply.W_PACKAGE_CHANGES}: {policy_apply._PACKAGE_CHANGES}"]


def test_log_stage_needs_a_log_boot_then_warns_about_gaps(
    fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = fake_ima(cmdline=("quiet",), unsigned=("/usr/bin/unsigned-tool",))
    code, doc, err = run(["policy", "apply", "--stage", "log"], capsys)
    assert (code, doc["error"]["reason"]) == (1, "not-booted-for-log")
    assert policy.read_text() == ""
    policy = fake_ima(cmdline=("quiet", "ima_appraise=log"), unsigned=("/usr/bin/unsigned-tool",))
    code, doc, err = run(["policy", "apply", "--stage", "log"], capsys)
    assert code == 0
    assert "imaguard: warning [W-LOG-GAPS]: 1 file(s) would fail appraisal" in err
    assert "W-PACKAGE-CHANGES" not in err  # packages can change in the log stage
    assert policy.read_text().startswith("dont_measure fsmagic=0x9fa0\n")


def test_log_stage_refused_when_the_kernel_ignores_ima_appraise_log(
    fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: ima_appraise=log on the command line alone let the log stage load rules that enforce."""
    log = ("quiet", "ima_appraise=log")
    policy = fake_ima(cmdline=log, secure_boot=b"\x01")
    code, doc, err = run(["policy", "apply", "--stage", "log"], capsys)
    assert (code, doc["error"]["reason"]) == (1, "log-mode-ignored")
    assert "it is NOT in log mode here: ima_appraise=log on the command line, but secure boot is on (SecureBoot=1" in err
    assert "would deny unsigned files at once instead of logging them" in err
    assert "nothing was written" in err
    assert policy.read_text() == ""
    policy = fake_ima(cmdline=log, config="CONFIG_IMA=y\n# CONFIG_IMA_APPRAISE_BOOTPARAM is not set\n")
    code, doc, err = run(["policy", "apply", "--stage", "log"], capsys)
    assert (code, doc["error"]["reason"]) == (1, "log-mode-ignored")
    assert "CONFIG_IMA_APPRAISE_BOOTPARAM is not set in /boot/config-test" in err
    assert policy.read_text() == ""
    policy = fake_ima(cmdline=log, config=None)
    code, doc, err = run(["policy", "apply", "--stage", "log"], capsys)
    assert (code, doc["error"]["reason"]) == (1, "log-mode-unknown")
    assert "not certainly in log mode here" in err
    assert policy.read_text() == ""
    policy = fake_ima(cmdline=log, secure_boot=b"\x00")  # SecureBoot=0: the parameter is honoured
    code, doc, _ = run(["policy", "apply", "--stage", "log"], capsys)
    assert (code, doc["loaded"]) == (0, True)


def test_measure_stage_needs_no_gate(fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    policy = fake_ima()
    code, doc, _ = run(["policy", "apply", "--stage", "measure"], capsys)
    assert code == 0
    assert "gate" not in doc
    assert "prime" not in doc
    assert policy.read_text().endswith("measure func=POLICY_CHECK template=ima-sig\n")


def test_policy_already_loaded(fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    fake_ima().unlink()
    code, doc, _ = run(["policy", "apply", "--stage", "measure"], capsys)
    assert (code, doc["error"]["reason"]) == (1, "policy-already-loaded")


def test_first_rejected_rule_reported_with_errno_and_line(
    fake_ima: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_ima()
    real_write = os.write
    calls = {"n": 0}

    def kernel_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 18:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_write(fd, data)

    monkeypatch.setattr(securityfs.os, "write", kernel_write)
    code, doc, err = run(["policy", "apply", "--stage", "measure"], capsys)
    rule = parse_policy((ROOT / "policies" / "measure.policy").read_text()).rules[17]
    assert code == 1
    assert doc["rejected"] == {"index": 18, "line": rule.line, "rule": render_rule(rule), "errno": "EINVAL"}
    assert f"the kernel rejected IMA policy rule 18 of 22 (line {rule.line}) with EINVAL" in err


@pytest.mark.parametrize(("value", "refused"), [("0", False), ("1", True), ("2", True), ("6", True), ("4", False),
                                                ("-2147483647", True)])
def test_enforce_is_refused_while_an_evm_key_is_loaded(
    fake_ima: Callable[..., Path], capsys: pytest.CaptureFixture[str], value: str, refused: bool
) -> None:
    """Audit: with an EVM key loaded (securityfs evm: EVM_INIT_HMAC 1 or EVM_INIT_X509 2) the kernel
    denies every appraised file without security.evm ("missing-HMAC"), which imaguard never writes."""
    policy = fake_ima()  # nothing unsigned: the gate alone would allow
    (policy.parent.parent / "evm").write_text(value + "\n")
    code, doc, err = run(["policy", "apply", "--stage", "enforce"], capsys)
    if not refused:
        assert (code, doc["loaded"]) == (0, True)
        return
    assert (code, doc["error"]["reason"]) == (1, "evm-initialized")
    assert (f"imaguard: error: EVM is initialized here ({policy.parent.parent / 'evm'} = {value}): with an EVM key "
            "loaded the kernel denies every appraised file that has no valid security.evm") in err
    assert policy.read_text() == ""
