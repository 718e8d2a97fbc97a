"""Issue 7 in the lab guest: processes traced to packages on the real kernel, a TPM-quoted signed report.

One boot (tests/vm/guest/report_scenario.py). The digest index of the image's packages is built
on the host with ``imaguard packages index --root`` over a hard-linked copy of the lab rootfs plus
the apt lists and .debs debootstrap used (as enrolled.py does for enroll), and shipped on the work
disk. psutil is the image's own python3-psutil.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import boot
from imaguard.cli.main import main
from imaguard_lab.build import Image, apt_sidecar, rootfs_dir
from imaguard_lab.labkeys import make_keys
from imaguard_lab.recipe import Recipe, cache_root
from imaguard_lab.runner import RunResult

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NONCE = "imaguard-lab-nonce-7"


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def guest_index(image: Image) -> Path:
    """The digest index of the lab image's packages (cached per image and package-truth code)."""
    recipe = Recipe()
    key = f"{image.key}-{_tree_hash(REPO / 'agent' / 'imaguard' / 'packages')}"
    final = cache_root() / f"report-index-{key}"
    if (final / "index.sqlite").is_file():
        return final
    work = cache_root() / f"report-index-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree, state, sidecar = work / "tree", work / "state", apt_sidecar(recipe)
    # Hard links: the index only reads the tree, and the lists go into a directory of the copy.
    subprocess.run(["cp", "-al", str(rootfs_dir(recipe)), str(tree)], check=True)
    shutil.copytree(sidecar / "lists", tree / "var/lib/apt/lists")
    (state / "debs").mkdir(parents=True)
    for deb in (sidecar / "archives").glob("*.deb"):
        os.link(deb, state / "debs" / deb.name)
    venv = REPO / ".venv" / "bin" / "python"
    subprocess.run([str(venv if venv.exists() else sys.executable), "-m", "imaguard.cli", "packages", "index",
                    "--root", str(tree), "--state-dir", str(state), "--no-fetch", "--json"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO / "agent")})  # fmt: skip
    final.mkdir()
    shutil.copy2(state / "index.sqlite", final / "index.sqlite")
    shutil.rmtree(work)
    return final


@pytest.fixture(scope="module")
def report_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("report-keys") / "keys").directory


@pytest.fixture(scope="module")
def report_run(lab_image: Image, report_keys: Path) -> RunResult:
    keys = report_keys
    shutil.copytree(guest_index(lab_image), keys / "index")
    result = boot(lab_image, {"nonce": NONCE}, entry="report_scenario.py", keys_dir=keys, timeout_s=900)
    problem = result.problem()
    assert problem is None, problem
    assert result.status == 0, f"guest scenario exited {result.status}; serial tail:\n{result.serial_tail()}"
    for name in ("keylime-policy", "report", "ak", "cel"):
        check = result.checks()[name]
        assert check.get("rc") == 0, f"{name} failed in the guest: {check}"
    return result


def _art(run: RunResult, name: str) -> Path:
    assert run.out_dir is not None
    return run.out_dir / "artifacts" / name


def _payload(run: RunResult) -> dict[str, Any]:
    env = json.loads(_art(run, "report.json").read_bytes())
    doc: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return doc


def _process(doc: dict[str, Any], exe: str) -> dict[str, Any]:
    found = [p for p in doc["processes"] if p["exe"]["path"] == exe]
    assert len(found) == 1, f"{exe}: {len(found)} processes: {[p['exe']['path'] for p in doc['processes']]}"
    return found[0]


def test_processes_are_traced_to_their_packages(report_run: RunResult) -> None:
    doc = _payload(report_run)
    dpkg = dict(line.split(" ", 1) for line in report_run.checks()["prepare"]["dpkg"])
    python = report_run.checks()["prepare"]["python3"]
    assert python == "/usr/bin/python3.11"
    sleeper = next(p for p in doc["processes"] if p["exe"]["path"] == python and p["pid"] ==
               report_run.checks()["python-sleeper"]["pid"])  # fmt: skip
    assert sleeper["class"] == "package"
    pkg = sleeper["exe"]["packages"][0]
    assert (pkg["name"], pkg["version"], pkg["evidence"]) == ("python3.11-minimal",
                                                             dpkg["python3.11-minimal"].split()[0], "repo-verified")  # fmt: skip
    assert pkg["source"]["name"] == "python3.11"
    assert pkg["path"] in ("/usr/bin/python3.11", "/bin/python3.11")
    # Its libraries were mapped after the measure policy: each is traced too (libc from libc6).
    libs = {m["path"]: m for m in sleeper["mappings"]}
    libc = next(m for p, m in libs.items() if "/libc.so" in p)
    assert libc["class"] == "package"
    assert libc["packages"][0]["name"] == "libc6"

    tampered = _process(doc, "/usr/bin/sleep")
    assert tampered["class"] == "modified"
    assert [p["name"] for p in tampered["exe"]["packages"]] == ["coreutils"]
    assert tampered["exe"]["packages"][0]["version"] == dpkg["coreutils"].split()[0]

    unpackaged = _process(doc, "/usr/bin/lab-unpackaged-sleep")
    assert (unpackaged["class"], unpackaged["exe"]["packages"]) == ("unknown", [])

    # PID 1 (the lab's init script, run by dash) started before the measure rules were loaded and
    # dash was never run again: not measured, with the package that owns its path named.
    init = next(p for p in doc["processes"] if p["pid"] == 1)
    assert (init["exe"]["path"], init["class"], init["exe"]["reason"]) == ("/usr/bin/dash", "not-measured",
                                                                         "started-before-policy")  # fmt: skip
    assert [p["name"] for p in init["exe"]["packages"]] == ["dash"]


def test_quoted_signed_report_verifies_on_the_host(report_run: RunResult, report_keys: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    report = _art(report_run, "report.json")
    doc = _payload(report_run)
    assert doc["nonce"] == NONCE
    assert doc["quote"]["bank"] == "sha256"
    cert = str(report_keys / "ima-rsa.cert.der")  # the guest signed with the key beside it
    capsys.readouterr()
    assert main(["report", "verify", "--cert", cert, "--nonce", NONCE, str(report)]) == 0
    assert capsys.readouterr().out.startswith(f"{report}: verified (signature, payload-type, schema-version, "
                                              "entries, replay, summary, nonce, quote)")  # fmt: skip
    # The AK the guest printed afterwards with `imaguard report ak` is the one that signed the quote.
    ak = _art(report_run, "ak.pem")
    assert main(["report", "verify", "--cert", cert, "--nonce", NONCE, "--ak", str(ak), str(report)]) == 0
    assert ", quote, ak); signed by " in capsys.readouterr().out
    assert main(["report", "verify", "--cert", cert, "--nonce", NONCE + "x", str(report)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: {report}: the report was made for nonce {NONCE!r}, "
                                       f"not {NONCE + 'x'!r}\n")  # fmt: skip
    changed = tmp_path / "changed.json"
    env = json.loads(report.read_bytes())
    payload = bytearray(base64.b64decode(env["payload"]))
    payload[len(payload) // 2] ^= 0x01
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    changed.write_text(json.dumps(env))
    assert main(["report", "verify", "--cert", cert, "--nonce", NONCE, str(changed)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: {changed}: no signature verifies with a trusted "
                                       "authority certificate\n")  # fmt: skip


def _keylime(log: Path, policy: Path) -> tuple[int, dict[str, Any]]:
    peer = REPO / ".venv-peer" / "bin" / "python"
    if not peer.exists():
        pytest.fail("no .venv-peer: scripts/setup.sh makes it (PyPI keylime, the independent verifier)")
    proc = subprocess.run([str(peer), str(REPO / "tests" / "peer" / "keylime_ima.py"), str(log), "--policy",
                           str(policy)], capture_output=True, text=True, check=False, cwd="/", timeout=600)  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, doc


def test_keylime_accepts_the_log_until_an_unpackaged_binary_runs(report_run: RunResult) -> None:
    """Peer check: Keylime's own IMA code with the policy `imaguard report --format keylime-policy` made in the guest."""
    policy = _art(report_run, "keylime-policy.json")
    code, verdict = _keylime(_art(report_run, "ascii_runtime_measurements.before"), policy)
    assert (code, verdict["verdict"], verdict["failures"]) == (0, "accept", [])
    assert verdict["entries"] == report_run.checks()["snapshot-before"]["entries"]
    code, verdict = _keylime(_art(report_run, "ascii_runtime_measurements.after"), policy)
    assert (code, verdict["verdict"]) == (3, "reject")
    failures = sorted((f["id"], f["context"].get("message") if isinstance(f["context"], dict) else f["context"])
                      for f in verdict["failures"])  # fmt: skip
    assert ("ima.validation.ima-ng.not_in_allowlist",
            "File not found in allowlist: /usr/bin/lab-unpackaged-sleep") in failures  # fmt: skip
    # The tampered coreutils binary is listed with coreutils' digest only: a hash mismatch.
    assert any(i == "ima.validation.ima-ng.runtime_policy_hash" for i, _ in failures), failures


def test_cel_export_has_every_entry_with_its_provenance(report_run: RunResult) -> None:
    cel = json.loads(_art(report_run, "cel.json").read_text())
    assert len(cel) == report_run.checks()["snapshot-after"]["entries"]
    by_path = {r["x-imaguard"]["path"]: r for r in cel}
    assert by_path["/usr/bin/lab-unpackaged-sleep"]["x-imaguard"]["class"] == "unknown"
    assert by_path["/usr/bin/sleep"]["x-imaguard"]["class"] == "modified"
    assert all(r["content_type"] == "ima_template" and r["pcr"] == 10 for r in cel)
