"""``keys install`` / ``policy install`` under ``--root``: nothing written or read outside the root,
no hang on a FIFO, no key directory another user can write (root tier; audit findings 1-5).

Every test builds its own scratch root under ``tmp_path`` and a host-side directory that a symlink
in the image points to: it must stay empty. The FIFO cases run the CLI in a subprocess with a
timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imaguard.ima import bootfiles, rootfiles
from imaguard.ima.rootfiles import install_file
from imaguard.rootfs import open_dir_nofollow, write_in_dir
from imaguard_keyring.cli import main as keyring_main

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TEST_CERT = REPO / "tests" / "data" / "keys" / "ima-test-rsa2048.pem"
TEST_KEY_FILE = "imaguard-17b7ae8b.der"
TIMEOUT = 60  # seconds; a run that blocks on a FIFO never ends


@pytest.fixture(scope="module")
def revocation(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    """(``--revocation-list RL --revocation-ca CA``, the CA key id in hex): a list revoking nothing of ours."""
    base = tmp_path_factory.mktemp("ca")
    ca = base / "CA"
    assert keyring_main(["ca", "create", "--out", str(ca), "--key-type", "rsa2048"]) == 0
    rl = base / "rl.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--key-id", "01020304", "--new"]) == 0
    payload = json.loads(base64.b64decode(json.loads(rl.read_bytes())["payload"]))  # DSSE envelope
    return ["--revocation-list", str(rl), "--revocation-ca", str(ca / "ca.pem")], payload["issuer_key_id"]


def image(tmp_path: Path) -> Path:
    """A root with initramfs-tools, as an image mounted for installation."""
    root = tmp_path / "image"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    return root


def host_dir(tmp_path: Path) -> Path:
    """A directory of the host that the image's symlinks point to; nothing may appear in it."""
    d = tmp_path / "hostdir"
    d.mkdir()
    return d


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``imaguard ARGV`` in a subprocess of this tree, killed after TIMEOUT (a FIFO read would block)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "agent"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "imaguard", *argv], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, check=False)  # fmt: skip


# --- 1. the revocation record stays inside the root and is read bounded -------------------------


@pytest.mark.parametrize("link", ["var/lib/imaguard", "var/lib", "var"])
def test_revocation_state_symlinked_out_of_the_image_is_refused(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], revocation: tuple[list[str], str], link: str
) -> None:
    """Regression (audit 1): the record was written into the host directory the image's
    var/lib/imaguard pointed to."""
    root, host = image(tmp_path), host_dir(tmp_path)
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(host)
    code, doc, err = run("keys", "install", str(TEST_CERT), "--root", str(root), *revocation[0])
    message = (f"{root / link} is a symlink inside {root}: refusing to follow it out of the root for the "
               "revocation record")  # fmt: skip
    assert (code, doc["error"]) == (1, {"reason": "symlink-in-path", "message": message})
    assert err == f"imaguard: error: {message}\n"
    assert list(host.iterdir()) == []
    assert not (root / "etc/keys").exists()  # refused before anything was installed


@pytest.mark.parametrize("kind", ["symlink-to-dev-zero", "fifo", "too-large"])
def test_revocation_record_that_is_no_regular_file_is_refused_at_once(
    tmp_path: Path, revocation: tuple[list[str], str], kind: str
) -> None:
    """Regression (audit 1): a record symlinked to /dev/zero was read whole (MemoryError); a FIFO
    would block for ever."""
    root = image(tmp_path)
    state = root / "var/lib/imaguard"
    state.mkdir(parents=True, mode=0o700)
    record = state / f"revocation-accepted-{revocation[1]}.json"
    if kind == "symlink-to-dev-zero":
        record.symlink_to("/dev/zero")
        why = "a symlink (not followed)"
    elif kind == "fifo":
        os.mkfifo(record)
        why = "not a regular file"
    else:
        with record.open("wb") as f:
            f.truncate((16 << 20) + 1)
        why = f"larger than {16 << 20} bytes"
    proc = cli("keys", "install", str(TEST_CERT), "--root", str(root), *revocation[0])
    assert proc.returncode == 1
    assert proc.stderr == (f"imaguard: error: cannot read {record}: {why}; the record of the last revocation list "
                           "accepted must be a regular file\n")  # fmt: skip
    assert not (root / "etc/keys").exists()


def test_revocation_state_is_recorded_through_safe_directories(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], revocation: tuple[list[str], str]
) -> None:
    root = image(tmp_path)
    assert run("keys", "install", str(TEST_CERT), "--root", str(root), *revocation[0])[0] == 0
    state = root / "var/lib/imaguard"
    assert [p.name for p in state.iterdir()] == [f"revocation-accepted-{revocation[1]}.json"]
    assert oct(state.stat().st_mode & 0o7777) == oct(0o700)
    # A state directory others can write is refused: they could remove the record and with it the
    # rollback check.
    state.chmod(0o777)
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root), *revocation[0])
    assert (code, doc["error"]["reason"]) == (1, "unsafe-state-dir")
    assert doc["error"]["message"] == (
        f"{state}: writable by group or others (mode 0777); the record of the newest revocation list accepted "
        "lies there, so it must be writable by root only (chown root, chmod go-w)")  # fmt: skip


# --- 2. no read blocks on a FIFO ---------------------------------------------------------------


def test_keys_install_does_not_hang_on_a_fifo_kernel_config(tmp_path: Path) -> None:
    """Regression (audit 2): ``mkfifo R/boot/config-6.1.0`` made keys install block for ever."""
    root = image(tmp_path)
    (root / "boot").mkdir()
    os.mkfifo(root / "boot/config-6.1.0")
    proc = cli("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (proc.returncode, proc.stderr) == (1, f"imaguard: error: cannot read {root}/boot/config-6.1.0: not a "
                                                 "regular file\n")  # fmt: skip
    assert not (root / "etc/keys").exists()


def test_keys_install_does_not_hang_on_a_fifo_in_dracut_config_or_key_dir(tmp_path: Path) -> None:
    root = tmp_path / "image"
    (root / bootfiles.DRACUT_MODULE_DIR).mkdir(parents=True)
    (root / "etc/sysconfig").mkdir(parents=True)
    os.mkfifo(root / "etc/sysconfig/ima")
    proc = cli("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (proc.returncode, proc.stderr) == (1, f"imaguard: error: cannot read {root}/etc/sysconfig/ima: not a "
                                                 "regular file\n")  # fmt: skip
    (root / "etc/sysconfig/ima").unlink()
    (root / bootfiles.KEY_DIR).mkdir(parents=True)
    os.mkfifo(root / bootfiles.KEY_DIR / "planted.der")
    proc = cli("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (proc.returncode, proc.stderr) == (1, f"imaguard: error: {root}/{bootfiles.KEY_DIR}/planted.der exists and "
                                                 "is not a regular file\n")  # fmt: skip


def test_policy_install_does_not_hang_on_fifos(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    """Regression (audit 2, nextboot): kernel configs, grub and initramfs images were opened blocking."""
    root = image(tmp_path)
    assert run("keys", "install", str(TEST_CERT), "--root", str(root))[0] == 0
    (root / "boot").mkdir()
    os.mkfifo(root / "boot/config-6.1.0")
    log = ("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off")
    proc = cli(*log)
    assert (proc.returncode, proc.stderr) == (1, f"imaguard: error: cannot read {root}/boot/config-6.1.0: not a "
                                                 "regular file\n")  # fmt: skip
    (root / "boot/config-6.1.0").unlink()
    (root / "etc/default").mkdir()
    os.mkfifo(root / bootfiles.GRUB_DEFAULT)
    proc = cli("policy", "install", "--stage", "measure", "--root", str(root))
    assert (proc.returncode, proc.stderr) == (1, f"imaguard: error: cannot read {root}/{bootfiles.GRUB_DEFAULT}: not "
                                                 "a regular file\n")  # fmt: skip
    (root / bootfiles.GRUB_DEFAULT).unlink()
    os.mkfifo(root / "boot/initrd.img-6.1.0")  # no boot loader can load it: the next boot has no keys
    proc = cli("policy", "install", "--stage", "enforce", "--root", str(root), "--json")
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout)["error"]["reason"] == "initramfs-stale"
    assert f"{root}/boot/initrd.img-6.1.0 cannot be unpacked: not a regular file;" in proc.stderr
    assert not (root / bootfiles.POLICY_PATH).exists()


def test_boot_directory_symlinked_to_the_host_is_not_read(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    """The kernel configs were globbed through an image's ``boot -> /host/boot``."""
    root, host = image(tmp_path), host_dir(tmp_path)
    (host / "config-6.1.0").write_text("CONFIG_CRYPTO_ECDSA=y\n")
    (root / "boot").symlink_to(host)
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (code, doc["error"]) == (1, {"reason": "symlink-in-path",
                                        "message": f"{root}/boot is a symlink: refusing to read through it"})
    assert [p.name for p in host.iterdir()] == ["config-6.1.0"]


# --- 3. writes go through directory descriptors, never a path walked twice ---------------------


@pytest.mark.parametrize("link", ["etc", "etc/keys", "etc/keys/ima", f"etc/keys/ima/{TEST_KEY_FILE}"])
def test_a_symlink_anywhere_on_the_way_is_refused_and_nothing_leaves_the_root(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], link: str
) -> None:
    root, host = tmp_path / "image", host_dir(tmp_path)
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(host if link != f"etc/keys/ima/{TEST_KEY_FILE}" else host / "x.der")
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (code, doc["error"]["reason"]) == (1, "symlink-in-path")
    assert list(host.iterdir()) == []


def test_a_directory_swapped_for_a_symlink_after_it_was_opened_is_not_followed(tmp_path: Path) -> None:
    """The race (audit 3): the checks and the write named the same path twice. Now the write goes
    into the directory opened (and checked) first, whatever its name leads to by then."""
    root, host = tmp_path / "image", host_dir(tmp_path)
    (root / "etc/keys/ima").mkdir(parents=True)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd = open_dir_nofollow(rfd, "etc/keys/ima")
    finally:
        os.close(rfd)
    try:
        (root / "etc/keys/ima").rename(root / "etc/keys/moved")  # the writer inside the image strikes
        (root / "etc/keys/ima").symlink_to(host)
        write_in_dir(dfd, "k.der", b"cert", 0o644)
    finally:
        os.close(dfd)
    assert list(host.iterdir()) == []
    assert (root / "etc/keys/moved/k.der").read_bytes() == b"cert"
    assert [p.name for p in (root / "etc/keys/moved").iterdir()] == ["k.der"]  # no temp file left


def test_new_directories_are_fsynced_into_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the install must not lose a new etc/keys/ima while the file in it was fsynced."""
    root = tmp_path / "image"
    root.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    change = install_file(root, f"{bootfiles.KEY_DIR}/{TEST_KEY_FILE}", b"cert", 0o644)
    assert change.change is rootfiles.Change.CREATED
    # etc made in ROOT, keys in etc, ima in keys: each parent synced; then the file, then its directory.
    assert [s.removeprefix(str(root)) or "/" for s in synced if not s.split("/")[-1].startswith(".")] == [
        "/", "/etc", "/etc/keys", f"/{bootfiles.KEY_DIR}"]  # fmt: skip
    assert len(synced) == 5  # and the temp file itself
    assert {oct(p.stat().st_mode & 0o7777) for p in (root / "etc", root / "etc/keys", root / bootfiles.KEY_DIR)} == {
        oct(0o755)}  # fmt: skip


# --- 4. a key directory (or any target) another user can write is refused ------------------------


def _key_dir_message(root: Path, shown: str, problem: str) -> str:
    return (f"{root / shown}: {problem}; the IMA certificates in it are loaded into the kernel keyring at every boot, "
            "so it must be writable by root only (chown root, chmod go-w, and review what it holds): refusing to "
            f"install {root}/{bootfiles.KEY_DIR}/{TEST_KEY_FILE}")  # fmt: skip


@pytest.mark.parametrize("case", [
    ("etc/keys/ima", 0, 0o777, "writable by group or others (mode 0777)"),
    ("etc/keys/ima", 0, 0o775, "writable by group or others (mode 0775)"),
    ("etc/keys/ima", 1000, 0o755, "owned by uid 1000"),
    ("etc/keys", 0, 0o757, "writable by group or others (mode 0757)"),
])  # fmt: skip
def test_unsafe_key_directory_is_refused_and_nothing_written(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], case: tuple[str, int, int, str]
) -> None:
    """Regression (audit 4): a world-writable or foreign-owned etc/keys/ima was used silently; the
    initramfs loads every *.der there into the IMA keyring."""
    where, uid, mode, problem = case
    root = image(tmp_path)
    (root / bootfiles.KEY_DIR).mkdir(parents=True)
    os.chown(root / where, uid, 0)
    (root / where).chmod(mode)
    code, doc, err = run("keys", "install", str(TEST_CERT), "--root", str(root))
    message = _key_dir_message(root, where, problem)
    assert (code, doc["error"]) == (1, {"reason": "unsafe-key-dir", "message": message})
    assert err == f"imaguard: error: {message}\n"
    assert list((root / bootfiles.KEY_DIR).iterdir()) == []
    assert not (root / bootfiles.INITRAMFS_HOOK).exists()


def test_existing_certificate_of_another_owner_is_not_reported_unchanged(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    root = image(tmp_path)
    assert run("keys", "install", str(TEST_CERT), "--root", str(root))[0] == 0
    der = root / bootfiles.KEY_DIR / TEST_KEY_FILE
    os.chown(der, 1000, 1000)  # right content, right mode, wrong owner: was "unchanged"
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (code, doc["error"]) == (1, {"reason": "unsafe-key-dir", "message": (
        f"{der}: owned by uid 1000; it is trusted at boot (an IMA certificate), so it must be writable by root only "
        "(chown root, chmod go-w, and review its content): refusing to install it")})  # fmt: skip
    os.chown(der, 0, 0)
    planted = root / bootfiles.KEY_DIR / "imaguard-00000000.der"  # kept by the install, loaded at boot
    shutil.copy(der, planted)
    planted.chmod(0o666)
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (code, doc["error"]["reason"]) == (1, "unsafe-key-dir")
    assert doc["error"]["message"].startswith(f"{planted}: writable by group or others (mode 0666);")


def test_unsafe_hook_directory_refuses_before_the_certificate_is_written(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    root = image(tmp_path)
    hooks = root / bootfiles.INITRAMFS_HOOK
    hooks.parent.mkdir(parents=True)
    hooks.parent.chmod(0o777)
    code, doc, _ = run("keys", "install", str(TEST_CERT), "--root", str(root))
    assert (code, doc["error"]) == (1, {"reason": "unsafe-install-dir", "message": (
        f"{hooks.parent}: writable by group or others (mode 0777); what imaguard installs there is trusted at boot, so "
        "it must be writable by root only (chown root, chmod go-w, and review what it holds): refusing to install "
        f"{hooks}")})  # fmt: skip
    assert not (root / bootfiles.KEY_DIR).exists()


def test_policy_install_refuses_unsafe_policy_dir_and_grub_file(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    root = image(tmp_path)
    policy_dir = (root / bootfiles.POLICY_PATH).parent
    policy_dir.mkdir(parents=True)
    policy_dir.chmod(0o777)
    code, doc, _ = run("policy", "install", "--stage", "measure", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (1, "unsafe-install-dir")
    assert list(policy_dir.iterdir()) == []
    policy_dir.chmod(0o755)
    # A grub file another user owns is not rewritten with --edit-grub (nor is the policy written).
    assert run("keys", "install", str(TEST_CERT), "--root", str(root))[0] == 0
    (root / "boot").mkdir()
    (root / "boot/config-6.1.0").write_text("CONFIG_IMA_APPRAISE_BOOTPARAM=y\n")
    grub = root / bootfiles.GRUB_DEFAULT
    grub.parent.mkdir(parents=True)
    grub.write_text('GRUB_CMDLINE_LINUX=""\n')
    os.chown(grub, 1000, 0)
    code, doc, _ = run("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off",
                       "--edit-grub")  # fmt: skip
    assert (code, doc["error"]) == (1, {"reason": "unsafe-install-file", "message": (
        f"{grub}: owned by uid 1000; it is trusted at boot, so it must be writable by root only (chown root, chmod "
        "go-w, and review its content): refusing to install it")})  # fmt: skip
    assert not (root / bootfiles.POLICY_PATH).exists()
    assert grub.read_text() == 'GRUB_CMDLINE_LINUX=""\n'
