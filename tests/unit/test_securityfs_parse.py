"""Pure parts of imaguard.ima.securityfs: rule checks, policy text, mountinfo; write/read on a fake dir."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaguard.errors import FormatError, HostStateError, UnsupportedError
from imaguard.ima import securityfs

MOUNTINFO = """\
22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
7 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:3 - securityfs securityfs rw
"""


def test_is_mounted() -> None:
    assert securityfs.is_mounted(MOUNTINFO)
    assert not securityfs.is_mounted(MOUNTINFO.splitlines()[0])
    assert not securityfs.is_mounted(MOUNTINFO, "/mnt/security")


@pytest.mark.parametrize(
    "rule",
    [
        "appraise func=BPRM_CHECK fowner=4242 appraise_type=imasig",
        "  measure func=BPRM_CHECK template=ima-sig ",
        "dont_measure fsmagic=0x9fa0",
    ],
)
def test_valid_rules(rule: str) -> None:
    assert securityfs.validate_rule(rule) == rule.strip()


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ("", "empty"),
        ("measure func=BPRM_CHECK\nappraise func=BPRM_CHECK", "spans lines"),
        ("/etc/ima/ima-policy", "unknown action"),
        ("enforce everything", "unknown action"),
        ("measure fowner=\u00e9", "non-ASCII"),
        ("measure " + "x" * 5000, "longer than"),
    ],
)
def test_invalid_rules(rule: str, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        securityfs.validate_rule(rule)


def test_policy_rules_drops_comments_and_names_the_line() -> None:
    text = "# lab policy\n\nmeasure func=BPRM_CHECK\n  # indented comment\nappraise func=BPRM_CHECK fowner=0\n"
    assert securityfs.policy_rules(text) == ("measure func=BPRM_CHECK", "appraise func=BPRM_CHECK fowner=0")
    with pytest.raises(FormatError, match="policy line 2"):
        securityfs.policy_rules("measure func=BPRM_CHECK\nbogus\n")


@given(st.text(max_size=200))
def test_validate_rule_only_raises_format_error(rule: str) -> None:
    with contextlib.suppress(FormatError):
        securityfs.validate_rule(rule)


def test_write_policy_one_write_per_rule(tmp_path: Path) -> None:
    (tmp_path / "policy").write_text("")
    rules = ["measure func=BPRM_CHECK", "appraise func=BPRM_CHECK fowner=4242 appraise_type=imasig"]
    assert securityfs.write_policy(rules, ima_dir=str(tmp_path)) == 2
    assert (tmp_path / "policy").read_text() == "".join(r + "\n" for r in rules)


def test_write_policy_refuses_before_opening(tmp_path: Path) -> None:
    (tmp_path / "policy").write_text("")
    with pytest.raises(FormatError):
        securityfs.write_policy(["measure func=BPRM_CHECK", "bogus rule"], ima_dir=str(tmp_path))
    assert (tmp_path / "policy").read_text() == ""
    with pytest.raises(FormatError, match="empty"):
        securityfs.write_policy([], ima_dir=str(tmp_path))


def test_policy_file_gone_means_already_loaded(tmp_path: Path) -> None:
    with pytest.raises(HostStateError, match="already loaded") as info:
        securityfs.write_policy(["measure func=BPRM_CHECK"], ima_dir=str(tmp_path))
    assert info.value.reason == "policy-already-loaded"


def test_no_ima_dir(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="CONFIG_IMA"):
        securityfs.read_measurements(ima_dir=str(tmp_path / "missing"))


def test_read_measurements_limit(tmp_path: Path) -> None:
    (tmp_path / "binary_runtime_measurements").write_bytes(b"x" * 100)
    assert securityfs.read_measurements(ima_dir=str(tmp_path), limit=100) == b"x" * 100
    with pytest.raises(HostStateError, match="limit of 99 bytes") as info:
        securityfs.read_measurements(ima_dir=str(tmp_path), limit=99)
    assert info.value.reason == "size-limit-exceeded"
    with pytest.raises(FormatError):
        securityfs.read_measurements("../etc/passwd", ima_dir=str(tmp_path))


def test_read_counter(tmp_path: Path) -> None:
    (tmp_path / "runtime_measurements_count").write_text("42\n")
    assert securityfs.read_counter(ima_dir=str(tmp_path)) == 42
    (tmp_path / "violations").write_text("x\n")
    with pytest.raises(FormatError):
        securityfs.read_counter("violations", ima_dir=str(tmp_path))
