"""Keylime (PyPI, in .venv-peer) as an independent peer: its replay of the lab lists equals ours and the TPM's.

The adapter tests/peer/keylime_ima.py runs Keylime's own ``process_measurement_list``; see its
docstring. scripts/setup.sh makes .venv-peer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imaguard.ima.measurements import iter_ascii
from imaguard.ima.replay import replay

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / ".venv-peer" / "bin" / "python"
ADAPTER = ROOT / "tests" / "peer" / "keylime_ima.py"
LAB = ROOT / "tests" / "data" / "lab"
CAPTURES = sorted(p.parent for p in LAB.rglob("pcr10.json"))
KEYLIME_TEMPLATES = {"ima", "ima-ng", "ima-sig", "ima-buf"}

pytestmark = pytest.mark.skipif(not PEER.exists() and os.environ.get("IMAGUARD_LAB_REQUIRED") != "1", reason="no .venv-peer: run scripts/setup.sh")


def keylime(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([str(PEER), str(ADAPTER), *args], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_keylime_replays_the_real_lists_to_the_tpm_values_as_imaguard_does(capture):
    tpm = json.loads((capture / "pcr10.json").read_text())
    ascii_log = capture / "ascii_runtime_measurements"
    ours = replay(iter_ascii(ascii_log.read_bytes()))
    code, doc = keylime(str(ascii_log), "--pcr", f"sha1:{tpm['sha1']}", "--pcr", f"sha256:{tpm['sha256']}")
    assert doc["entries"] == ours.count
    if set(ours.templates) - KEYLIME_TEMPLATES:
        # Keylime 7.14 parses only ima, ima-ng, ima-sig and ima-buf (keylime/ima/ast.py): every line
        # of an ima-modsig, evm-sig or custom ima_template_fmt list is unparsable to it (imaguard
        # parses and replays them; test_replay.py checks them against the TPM).
        assert code == 3
        assert {f["id"] for f in doc["failures"]} == {"ima.parser.entry", "ima.pcr_mismatch"}
        return
    assert doc["pcr10"] == tpm == {bank: ours.pcr(10, bank).hex() for bank in ("sha1", "sha256")}
    assert doc["pcr_match"] == {"sha1": True, "sha256": True}
    # Keylime flags a violation (ToMToU/open-writers) as a failure even without a policy.
    expected = [{"id": "ima.validation.tomtou", "context": {"message": "hash validation was skipped"}}]
    assert doc["failures"] == (expected if ours.violations else [])
    assert (code, doc["verdict"]) == ((3, "reject") if ours.violations else (0, "accept"))


def _policy(entries, drop: bytes | None = None) -> dict:
    """A Keylime runtime policy (v1) allowing exactly these entries' digests."""
    digests: dict[str, list[str]] = {}
    keyrings: dict[str, list[str]] = {}
    for e in entries:
        if e.path == drop:
            continue
        target = keyrings if e.template_name == "ima-buf" else digests
        target.setdefault(e.path.decode(), []).append(e.digest.digest.hex())
    return {
        "meta": {"version": 1, "generator": 0}, "release": 0, "digests": digests, "excludes": [],
        "keyrings": keyrings, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {}, "verification-keys": "",
    }


def test_keylime_policy_check_accepts_a_matching_policy_and_names_a_missing_file(tmp_path):
    ascii_log = LAB / "ascii_runtime_measurements"
    entries = list(iter_ascii(ascii_log.read_bytes()))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_policy(entries)))
    code, doc = keylime(str(ascii_log), "--policy", str(good))
    assert (code, doc["verdict"], doc["failures"]) == (0, "accept", [])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_policy(entries, drop=b"/opt/imaguard-lab/unsigned-echo")))
    code, doc = keylime(str(ascii_log), "--policy", str(bad), "--bank", "sha256")
    assert (code, doc["verdict"]) == (3, "reject")
    assert doc["failures"] == [{
        "id": "ima.validation.ima-ng.not_in_allowlist",
        "context": {"message": "File not found in allowlist: /opt/imaguard-lab/unsigned-echo"},
    }]
