"""SIGTERM (kill's default, systemd's stop), SIGHUP (a dropped SSH session) and SIGQUIT stop an
imaguard command the way Ctrl-C does: its cleanup runs, nothing half-written is left beside the
files it installs, and it says "interrupted" with exit 130 (it used to die on the spot and leave
``.imaguard-KEYID.der.XXXX`` beside the key directory's certificates)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from signallib import run_interrupted

from imaguard.cli.main import main
from imaguard.ima import bootfiles

pytestmark = pytest.mark.root

CERT = Path(__file__).resolve().parents[1] / "data" / "keys" / "ima-test-rsa2048.pem"


def _left(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_a_signal_during_keys_install_leaves_no_temp_file_and_the_rerun_works(tmp_path, signame):
    root = tmp_path / "root"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    argv = ["keys", "install", "--root", str(root), str(CERT), "--json"]
    # fsync 1 is the new etc/keys directory's, 2 the one of etc/keys/ima, 3 the certificate's temp file
    done = run_interrupted(tmp_path, 3, signame, argv, tool="imaguard")
    assert (done.returncode, done.stderr) == (130, "imaguard: interrupted\n")
    assert done.stdout == '{"error": {"reason": "interrupted", "message": "interrupted"}}\n'
    assert _left(root) == []  # no temp file, no half-installed key
    assert main(argv) == 0
    key = f"{bootfiles.KEY_DIR}/imaguard-17b7ae8b.der"
    assert key in _left(root)
    assert not [name for name in _left(root) if Path(name).name.startswith(".")]
