"""The enforce gate refuses policies under which Linux 6.1 would deny every signed file (root tier).

Regression (audit): ``imaguard policy check --stage enforce`` printed "allow" for a covering rule with
``appraise_algos=sha512`` while files are signed with sha256 (``process_measurement`` denies them:
"denied-hash-algorithm"), and for ``digest_type=verity appraise_type=sigv3`` while files carry v2
signatures (``xattr_verify``: "verity-signature-required"). Enforcing either would lock the host out.

The tree lives on a fresh ext4 loop image, files are signed with ``imaguard sign`` (sha256), and the
host's keyrings are ignored: ``--cert`` stands in for the loaded keys, as in test_policy_check.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imaguard.cli import policy as policy_cli
from imaguard.cli.main import main

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.root

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT = KEYS / "ima-test-rsa2048.pem"


def imaguard(argv: list[str]) -> int:
    return main(argv)  # the real entry point (cli.main registers `policy`)


@pytest.fixture
def prog(ext4_dir: Path) -> Path:
    """usr/bin/prog, signed by ``imaguard sign`` (a sha256 v2 signature)."""
    path = ext4_dir / "usr" / "bin" / "prog"
    path.parent.mkdir(parents=True)
    shutil.copyfile("/bin/true", path)
    path.chmod(0o755)
    assert main(["sign", "--key", str(KEY), "--cert", str(CERT), str(path)]) == 0
    return path


@pytest.fixture
def check(
    tmp_path: Path, ext4_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str]]:
    monkeypatch.setattr(policy_cli.coverage, "kernel_key_ids", lambda: None)

    def run(rule: str, *extra: str) -> tuple[int, str]:
        policy = tmp_path / "P"
        policy.write_text(rule + "\n")
        capsys.readouterr()
        code = imaguard(["policy", "check", "--file", str(policy), "--stage", "enforce", "--cert", str(CERT),
                         "--root", str(ext4_dir), *extra])  # fmt: skip
        out, err = capsys.readouterr()
        assert err == ""
        return code, out

    return run


def _tail(out: str) -> str:
    """The decision and the file lines (the header names temporary paths)."""
    return out[out.index("\nroot: ") :].split("\n", 2)[2]


SHA512_RULE = "appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512"
VERITY_RULE = "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3"
SHA512_DETAIL = "security.ima is a sha256 signature, the rule allows only appraise_algos=sha512"
VERITY_DETAIL = (
    "security.ima holds a v2 signature (key 17b7ae8b), the rule (digest_type=verity appraise_type=sigv3) "
    "requires a v3 fs-verity signature"
)


def test_appraise_algos_without_the_signature_algorithm_is_refused(
    prog: Path, check: Callable[..., tuple[int, str]]
) -> None:
    code, out = check(SHA512_RULE)
    assert code == 3
    assert _tail(out) == (
        "refuse: 1 of 1 files in scope would be denied\n"
        f"  denied-hash-algo     {prog}  (rule line 1: {SHA512_DETAIL})\n"
    )
    code, out = check(SHA512_RULE, "--json")
    doc = json.loads(out)
    assert (code, doc["decision"], doc["in_scope"], doc["reasons"]) == (3, "refuse", 1, {"denied-hash-algo": 1})
    assert doc["uncovered"] == [
        {"path": str(prog), "reason": "denied-hash-algo", "detail": SHA512_DETAIL, "rule_line": 1}
    ]


def test_verity_rule_refuses_v2_signatures(prog: Path, check: Callable[..., tuple[int, str]]) -> None:
    code, out = check(VERITY_RULE)
    assert code == 3
    assert _tail(out) == (
        "refuse: 1 of 1 files in scope would be denied\n"
        f"  needs-sigv3          {prog}  (rule line 1: {VERITY_DETAIL})\n"
    )
    code, out = check(VERITY_RULE, "--json")
    doc = json.loads(out)
    assert (code, doc["decision"], doc["in_scope"], doc["reasons"]) == (3, "refuse", 1, {"needs-sigv3": 1})
    assert doc["uncovered"] == [{"path": str(prog), "reason": "needs-sigv3", "detail": VERITY_DETAIL, "rule_line": 1}]


@pytest.mark.parametrize("algos", ["sha256", "sha512,sha256", "sha1,sha256,sha384"])
def test_appraise_algos_with_the_signature_algorithm_allows(
    prog: Path, check: Callable[..., tuple[int, str]], algos: str
) -> None:
    code, out = check(f"appraise func=BPRM_CHECK appraise_type=imasig appraise_algos={algos}")
    assert (code, _tail(out)) == (0, "allow: every file in scope would pass appraisal (1 files)\n")


def test_a_later_rule_that_may_decide_is_checked_too(prog: Path, check: Callable[..., tuple[int, str]]) -> None:
    # uid= depends on the process: either rule may decide for prog, so prog must pass both.
    code, out = check(f"appraise func=BPRM_CHECK uid=1000 appraise_type=imasig\n{SHA512_RULE}")
    assert code == 3
    assert f"  denied-hash-algo     {prog}  (rule line 2: {SHA512_DETAIL})\n" in out
