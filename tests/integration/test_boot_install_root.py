"""``imaguard keys install`` and ``imaguard policy install`` into temporary roots (root tier).

Never the host's /etc: every run gets its own ``--root``. Checked: the files and their modes,
the initramfs and dracut integration, idempotent reruns ("unchanged", same inode), atomic
replacement (no temp file left, the old inode replaced whole), symlinked directories refused,
refusals that write nothing, and the grub advice (printed, edited only with --edit-grub).
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from certlib import pki
from cpiolib import newc

from imaguard.cli.main import main
from imaguard.errors import UsageError
from imaguard.ima import bootfiles
from imaguard.ima.policy import parse_policy, render

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TEST_CERT = REPO / "tests" / "data" / "keys" / "ima-test-rsa2048.pem"
TEST_KEY_FILE = "imaguard-17b7ae8b.der"
LOG_OK_CONFIG = "CONFIG_IMA=y\nCONFIG_IMA_APPRAISE=y\nCONFIG_IMA_APPRAISE_BOOTPARAM=y\n"


def kernel_config(root: Path, text: str = LOG_OK_CONFIG, release: str = "6.1.0-50-amd64") -> None:
    """ROOT/boot/config-RELEASE, as linux-image packages install it."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"config-{release}").write_text(text)


def initramfs(root: Path, name: str = "initrd.img-6.1.0-50-amd64", age: int = 0) -> Path:
    """ROOT/boot/NAME, as update-initramfs leaves it: the certificates of ROOT/etc/keys/ima in a gzip'd
    newc archive, written after the keys (or ``age`` seconds before now)."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    image = root / "boot" / name
    keys = {f"{bootfiles.KEY_DIR}/{p.name}": p.read_bytes() for p in sorted((root / bootfiles.KEY_DIR).glob("*.der"))}
    image.write_bytes(gzip.compress(newc(keys)))
    if age:
        when = image.stat().st_mtime - age
        os.utime(image, (when, when))
    return image


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with initramfs-tools, dracut's integrity module (with its key loader) and evmctl."""
    r = tmp_path / "root"
    (r / "etc/initramfs-tools").mkdir(parents=True)
    (r / bootfiles.DRACUT_MODULE_DIR).mkdir(parents=True)
    (r / bootfiles.DRACUT_MODULE_DIR / "ima-keys-load.sh").write_text("#!/bin/sh\n")
    (r / "usr/bin").mkdir(parents=True)
    (r / "usr/bin/evmctl").write_text("")
    return r


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_install_writes_certs_and_boot_loading_then_is_idempotent(
    root: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    code, doc, err = run("keys", "install", "--root", str(root), str(TEST_CERT))
    assert code == 0
    hook, script = root / bootfiles.INITRAMFS_HOOK, root / bootfiles.INITRAMFS_SCRIPT
    assert err == (f"imaguard: warning [W-UNSIGNED-BOOT-FILES]: {hook}, {script}: executables without a signature; "
                   "under an enforcing appraisal policy update-initramfs would be refused running them (use "
                   "--sign-key KEY, or review and `imaguard sign` them)\n")  # fmt: skip
    assert {f["path"]: f.get("signature") for f in doc["files"]} == {
        str(root / "etc/keys/ima" / TEST_KEY_FILE): None, str(hook): "unsigned", str(script): "unsigned",
        str(root / bootfiles.DRACUT_CONF): None,
    }  # fmt: skip
    assert {Path(f["path"]).relative_to(root).as_posix(): f["change"] for f in doc["files"]} == {
        f"etc/keys/ima/{TEST_KEY_FILE}": "created",
        bootfiles.INITRAMFS_HOOK: "created",
        bootfiles.INITRAMFS_SCRIPT: "created",
        bootfiles.DRACUT_CONF: "created",
    }
    der = root / "etc/keys/ima" / TEST_KEY_FILE
    assert der.read_bytes() == (REPO / "tests/data/keys/ima-test-rsa2048.der").read_bytes()
    assert (mode(der), mode(root / bootfiles.INITRAMFS_HOOK), mode(root / bootfiles.INITRAMFS_SCRIPT)) == (0o644, 0o755, 0o755)
    assert mode(root / "etc/keys/ima") == 0o755
    assert (root / bootfiles.INITRAMFS_SCRIPT).read_text() == bootfiles.initramfs_script()
    assert (root / bootfiles.DRACUT_CONF).read_text() == bootfiles.dracut_conf()
    assert doc["rebuild"] == ["update-initramfs -u -k all", "dracut -f --regenerate-all"]
    inode = der.stat().st_ino
    code, doc, _ = run("keys", "install", "--root", str(root), str(TEST_CERT))
    assert code == 0
    assert {f["change"] for f in doc["files"]} == {"unchanged"}
    assert doc["rebuild"] == []
    assert der.stat().st_ino == inode  # untouched
    assert sorted(p.name for p in (root / "etc/keys/ima").iterdir()) == [TEST_KEY_FILE]  # no temp files left


def test_keys_install_text_output_says_exactly_what_changed(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "install", "--root", str(root), str(TEST_CERT)]) == 0
    assert main(["keys", "install", "--root", str(root), str(TEST_CERT)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"created   {root}/etc/keys/ima/{TEST_KEY_FILE} (0644)"
    assert out[4].startswith("next: rebuild the initramfs")
    assert out[5:] == [
        f"unchanged {root}/etc/keys/ima/{TEST_KEY_FILE} (0644)",
        f"unchanged {root}/{bootfiles.INITRAMFS_HOOK} (0755, signature unsigned)",
        f"unchanged {root}/{bootfiles.INITRAMFS_SCRIPT} (0755, signature unsigned)",
        f"unchanged {root}/{bootfiles.DRACUT_CONF} (0644)",
    ]


def test_sign_key_signs_the_boot_executables_and_a_rerun_keeps_the_signatures(
    root: Path, tmp_path: Path, run: Callable[..., tuple[int, dict, str]], evmctl: str
) -> None:
    # Under enforce, update-initramfs runs the hook: unsigned, the rebuild that loads the keys is refused.
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    code, doc, err = run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))
    assert (code, err) == (0, "")
    hook, script = root / bootfiles.INITRAMFS_HOOK, root / bootfiles.INITRAMFS_SCRIPT
    assert {f["path"]: f["signature"] for f in doc["files"] if "signature" in f} == {
        str(hook): "signed", str(script): "signed"}  # fmt: skip
    for path in (hook, script):
        assert main(["verify", "--cert", str(TEST_CERT), str(path)]) == 0
        proc = subprocess.run([evmctl, "ima_verify", "--key", str(REPO / "tests/data/keys/ima-test-rsa2048.der"),
                               str(path)], capture_output=True, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    xattr = os.getxattr(hook, "security.ima")
    code, doc, _ = run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))
    assert {f["path"]: f["signature"] for f in doc["files"] if "signature" in f} == {
        str(hook): "kept", str(script): "kept"}  # fmt: skip
    assert os.getxattr(hook, "security.ima") == xattr
    # A script changed by hand is replaced (new inode, no xattr) and signed again.
    script.write_text("#!/bin/sh\n# edited\n")
    code, doc, _ = run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))
    assert [(f["change"], f["signature"]) for f in doc["files"] if f["path"] == str(script)] == [("updated", "signed")]
    assert main(["verify", "--cert", str(TEST_CERT), str(script)]) == 0


def test_sign_key_of_another_certificate_is_refused_before_anything_is_written(
    root: Path, tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    other_key = tmp_path / "other.pem"  # the test CA's key: a real RSA key whose certificate is not installed
    other_key.write_bytes(pki().ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))  # fmt: skip
    code, _doc, err = run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(other_key))
    assert code == 2
    assert f"--sign-key {other_key}: its certificate is none of the ones installed" in err
    assert not (root / "etc/keys").exists()
    assert not (root / bootfiles.INITRAMFS_HOOK).exists()


def test_password_file_without_sign_key_is_a_usage_error(
    root: Path, tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    code, _doc, err = run("keys", "install", "--root", str(root), str(TEST_CERT), "--password-file", str(pw))
    assert code == 2
    assert err == "imaguard: error: --password-file is the password of --sign-key's key: give --sign-key too\n"
    assert not (root / "etc/keys").exists()


def test_rotation_keeps_the_old_key_and_a_changed_script_is_replaced_atomically(
    root: Path, tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    script = root / bootfiles.INITRAMFS_SCRIPT
    script.write_text("#!/bin/sh\n# edited by hand\n")
    old_inode = script.stat().st_ino
    new = pki().write(tmp_path, "rsa_cert")
    code, doc, _ = run("keys", "install", "--root", str(root), str(new))
    assert code == 0
    changes = {Path(f["path"]).relative_to(root).as_posix(): f["change"] for f in doc["files"]}
    assert changes[bootfiles.INITRAMFS_SCRIPT] == "updated"
    assert changes[bootfiles.INITRAMFS_HOOK] == "unchanged"
    assert changes[f"etc/keys/ima/imaguard-{pki().cert('rsa_cert').key_id.hex()}.der"] == "created"
    assert script.read_text() == bootfiles.initramfs_script()
    assert script.stat().st_ino != old_inode  # renamed into place, never rewritten in place
    assert doc["kept"] == [TEST_KEY_FILE]


def test_keys_install_refusals_write_nothing(root: Path, tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    (root / "boot").mkdir()
    (root / "boot/config-6.1.0-50-amd64").write_text("CONFIG_IMA=y\n# CONFIG_CRYPTO_ECDSA is not set\n")
    code, doc, _ = run("keys", "install", "--root", str(root), str(pki().write(tmp_path, "ec_cert")))
    assert code == 77
    assert [r["reason"] for r in doc["refused"]] == ["no-ecdsa"]
    # It names what it judged: the image's kernel configs, not the running kernel (audit).
    ec = pki().cert("ec_cert")
    assert doc["refused"][0]["detail"] == (
        f"{ec.key_kind} key {ec.key_id.hex()}: the kernels installed in {root}/boot cannot use EC (ECDSA) keys: "
        "every config-* there was built without CONFIG_CRYPTO_ECDSA (Debian 12's 6.1 kernel is one); issue an "
        "RSA certificate (e.g. RSA-2048) for IMA")
    code, doc, _ = run("keys", "install", "--root", str(root), str(pki().write(tmp_path, "signing_ca_cert")))
    assert (code, [r["reason"] for r in doc["refused"]]) == (2, ["ca-certificate"])
    assert not (root / "etc/keys").exists()
    assert not (root / bootfiles.INITRAMFS_HOOK).exists()


def test_keys_install_warnings(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    code, doc, err = run("keys", "install", "--root", str(bare), str(TEST_CERT))
    assert code == 0
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-NO-BOOT-LOADING"]
    assert "imaguard: warning [W-NO-BOOT-LOADING]: neither initramfs-tools nor dracut" in err
    dracut = tmp_path / "dracut"
    (dracut / bootfiles.DRACUT_MODULE_DIR).mkdir(parents=True)
    (dracut / "etc/sysconfig").mkdir(parents=True)
    (dracut / "etc/sysconfig/ima").write_text('IMAKEYSDIR="/etc/keys/elsewhere"\n')
    (dracut / "etc/sysconfig/ima-policy").write_text("measure func=BPRM_CHECK\n")
    code, doc, _ = run("keys", "install", "--root", str(dracut), str(TEST_CERT))
    assert code == 0
    assert sorted({w.split(":")[0] for w in doc["warnings"]}) == ["W-DRACUT-KEYSDIR", "W-DRACUT-NO-KEYS", "W-DRACUT-POLICY"]


def test_symlinked_etc_is_refused(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    root = tmp_path / "image"
    root.mkdir()
    elsewhere = tmp_path / "host-etc"
    elsewhere.mkdir()
    (root / "etc").symlink_to(elsewhere)
    code, doc, _ = run("keys", "install", "--root", str(root), str(TEST_CERT))
    assert (code, doc["error"]["reason"]) == (1, "symlink-in-path")
    assert list(elsewhere.iterdir()) == []


def test_policy_install_measure_then_log_with_grub_advice(root: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    (root / "etc/default").mkdir(parents=True)
    grub = root / bootfiles.GRUB_DEFAULT
    grub.write_text('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n')
    code, doc, _ = run("policy", "install", "--stage", "measure", "--root", str(root))
    assert code == 0
    installed = root / bootfiles.POLICY_PATH
    measure = parse_policy((REPO / "policies/measure.policy").read_text())
    assert installed.read_text() == bootfiles.policy_file(render(measure), stage="measure", source="measure.policy")
    assert (mode(installed), doc["files"][0]["change"], doc["cmdline"]["add"]) == (0o644, "created", [])
    assert run("policy", "install", "--stage", "measure", "--root", str(root))[1]["files"][0]["change"] == "unchanged"
    # log: keys for boot, then the advice says ima_appraise=log and grub is NOT edited without --edit-grub.
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    kernel_config(root)
    code, doc, _ = run("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off")
    assert code == 0
    assert doc["next_boot_log_mode"] == "certain"
    assert doc["files"][0]["change"] == "updated"
    assert doc["boot_keys"] == [str(root / "etc/keys/ima" / TEST_KEY_FILE)]
    assert doc["cmdline"]["add"] == ["ima_appraise=log"]
    assert '    + GRUB_CMDLINE_LINUX="ima_appraise=log"' in doc["cmdline_text"]
    assert grub.read_text() == 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
    code, doc, _ = run("policy", "install", "--stage", "log", "--root", str(root), "--edit-grub",
                       "--target-secure-boot", "off")  # fmt: skip
    assert code == 0
    assert grub.read_text() == 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="ima_appraise=log"\n'
    assert doc["files"][1]["change"] == "updated"
    assert bootfiles.stage_of_policy_file(installed.read_text()) == "log"


def _log_stage_root(root: Path, run: Callable[..., tuple[int, dict, str]]) -> list[str]:
    """``root`` ready for a log-stage install whose advice adds ima_appraise=log; the argv for it."""
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    kernel_config(root)
    (root / "etc/default").mkdir(parents=True, exist_ok=True)
    return ["policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off", "--edit-grub"]


def test_edit_grub_keeps_every_other_byte_and_the_owner(root: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    """Regression: the grub file was decoded with errors="replace", so a Latin-1 comment came back as
    U+FFFD, and it was recreated owned by root:root."""
    argv = _log_stage_root(root, run)
    grub = root / bootfiles.GRUB_DEFAULT
    grub.write_bytes(b'# caf\xe9 \xff\r\nGRUB_CMDLINE_LINUX="quiet \xe9"\n')
    os.chown(grub, 0, 4)  # group adm
    grub.chmod(0o640)
    code, doc, _ = run(*argv)
    assert code == 0, doc
    assert grub.read_bytes() == b'# caf\xe9 \xff\r\nGRUB_CMDLINE_LINUX="quiet \xe9 ima_appraise=log"\n'
    st = grub.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 4, 0o640)
    assert doc["files"][1] == {"path": str(grub), "change": "updated", "mode": "0640"}


def test_edit_grub_that_cannot_be_done_writes_nothing(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    """Regression: a grub file that could not be read (a directory) failed the command after the
    policy had been written, and a binary one was rewritten."""
    for n, content in enumerate((None, b"\x1f\x8b\x08\x00\0\0garbage", b"GRUB_CMDLINE_LINUX=quiet\n")):
        root = tmp_path / f"r{n}"
        (root / "etc/initramfs-tools").mkdir(parents=True)
        argv = _log_stage_root(root, run)
        initramfs(root)
        grub = root / bootfiles.GRUB_DEFAULT
        if content is None:
            grub.mkdir()
        else:
            grub.write_bytes(content)
        code, doc, _ = run(*argv)
        assert code == 1
        assert not (root / bootfiles.POLICY_PATH).exists()
        if content is None:
            assert doc["error"] == {"reason": "unreadable", "message": f"cannot read {grub}: Is a directory"}
        else:
            assert grub.read_bytes() == content
            assert doc["error"] == {"reason": "grub-not-editable", "message": (
                f"{grub}: not a file --edit-grub can rewrite safely (binary, or GRUB_CMDLINE_LINUX lines that are "
                "not one plain double-quoted value); nothing was written: edit it by hand or leave out --edit-grub")}


def test_policy_install_enforce_warns_that_package_changes_must_wait(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))[0] == 0
    initramfs(root)
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert code == 0, err
    assert doc["boot_key_loading"] == ["initramfs-tools"]
    assert bootfiles.stage_of_policy_file((root / bootfiles.POLICY_PATH).read_text()) == "enforce"
    assert "imaguard: warning [W-PACKAGE-CHANGES]: while this policy enforces, do not install or upgrade" in err
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-PACKAGE-CHANGES"]


def test_policy_install_enforce_refusals_write_nothing(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    root = tmp_path / "r"
    root.mkdir()
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "no-boot-keys")
    assert "no certificate in" in err
    bad = tmp_path / "bad.policy"
    bad.write_text("appraise func=BPRM_CHECK appraise_type=imasig template=ima-sig\n")
    code, doc, _ = run("policy", "install", "--stage", "enforce", "--file", str(bad), "--root", str(root))
    assert (code, doc["error"]["reason"]) == (2, "invalid-policy")
    assert not (root / "etc").exists()


def test_cert_alone_is_no_boot_key_enforce_is_refused(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    # Regression: every --cert counted as a key the next boot loads, so enforce passed with no key at boot.
    root = tmp_path / "r"
    (root / "usr/bin").mkdir(parents=True)
    prog = root / "usr/bin/prog"
    prog.write_bytes(Path("/bin/true").read_bytes())
    prog.chmod(0o755)
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert main(["sign", "--key", str(key), "--cert", str(TEST_CERT), str(prog)]) == 0
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root), "--cert", str(TEST_CERT))
    assert (code, doc["error"]["reason"]) == (3, "no-boot-keys")
    assert err == (f"imaguard: error: no certificate in {root}/etc/keys/ima: the next boot loads no IMA key (--cert "
                   "only checks signatures, it loads nothing at boot), so every appraised file would be denied; "
                   f"install the key for boot with `imaguard keys install --root {root} CERT`; nothing was written\n")
    assert not (root / "etc").exists()
    # log denies nothing: it installs, warns, and the signed file counts as signed by a key not loaded.
    kernel_config(root)
    code, doc, err = run("policy", "install", "--stage", "log", "--root", str(root), "--cert", str(TEST_CERT),
                         "--target-secure-boot", "off")  # fmt: skip
    assert code == 0
    assert err.startswith(f"imaguard: warning [W-NO-BOOT-KEYS]: no certificate in {root}/etc/keys/ima: ")
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-NO-BOOT-KEYS"]
    assert [(u["path"], u["reason"]) for u in doc["gate"]["uncovered"]] == [(str(prog), "unknown-key")]


def test_log_stage_is_judged_as_enforce_unless_the_next_boot_surely_logs(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    """The kernel ignores ima_appraise=log without CONFIG_IMA_APPRAISE_BOOTPARAM and under secure boot:
    a "log" boot policy then enforces from early boot on. Unless that is ruled out, log is judged as
    enforce: here an unsigned program in scope makes it refuse, and nothing is written."""
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    prog = root / "usr/bin/prog"
    prog.write_bytes(Path("/bin/true").read_bytes())
    prog.chmod(0o755)
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))[0] == 0
    initramfs(root)
    no_config = f"no kernel config under {root}/boot tells whether ima_appraise=log will be honoured"
    no_option = (f"ima_appraise=log on the command line, but CONFIG_IMA_APPRAISE_BOOTPARAM is not set "
                 f"in {root}/boot/config-6.1.0-50-amd64: the kernel ignores it and enforces")
    cases = [
        ([], None, no_config),
        (["--target-secure-boot", "off"], "CONFIG_IMA=y\n", no_option),
        ([], LOG_OK_CONFIG, None),  # secure boot of another machine: unknown
        (["--target-secure-boot", "on"], LOG_OK_CONFIG, None),
    ]
    for flags, config, why in cases:
        if config is not None:
            kernel_config(root, config)
        code, doc, err = run("policy", "install", "--stage", "log", "--root", str(root), *flags)
        assert (code, doc["error"]["reason"], doc["next_boot_log_mode"]) == (3, "gate-refused", "uncertain"), err
        assert err.startswith("imaguard: warning [W-LOG-MAY-ENFORCE]: the next boot may enforce this log-stage policy (")
        assert "imaguard: error: the gate refused (--stage log is judged as enforce: " in err
        assert f"1 of 3 file(s) in scope would be denied: {prog} (no-signature)" in err  # the hook scripts are signed
        if why is not None:
            assert why in err
        assert not (root / bootfiles.POLICY_PATH).exists()
    assert "secure boot is on (--target-secure-boot on)" in err
    # Ruled out: the log stage logs the gap and installs.
    code, doc, err = run("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off")
    assert (code, doc["next_boot_log_mode"]) == (0, "certain"), err
    assert "W-LOG-MAY-ENFORCE" not in err
    assert "imaguard: warning [W-LOG-GAPS]: 1 file(s) would fail appraisal" in err
    assert bootfiles.stage_of_policy_file((root / bootfiles.POLICY_PATH).read_text()) == "log"


def test_target_secure_boot_is_only_for_another_root() -> None:
    from imaguard.cli.policy_apply import _target_secure_boot  # noqa: PLC0415 - the one private helper tested

    with pytest.raises(UsageError, match=r"^--target-secure-boot is for another --root: "):
        _target_secure_boot(Path("/"), "off")


def test_keys_that_nothing_loads_at_boot_refuse_enforce(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    root = tmp_path / "r"
    root.mkdir()
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0  # W-NO-BOOT-LOADING: no initramfs
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "no-boot-loading")
    assert err == (f"imaguard: error: nothing under {root} loads {root}/etc/keys/ima at boot (neither the "
                   f"initramfs-tools hook {bootfiles.INITRAMFS_HOOK} and script nor {bootfiles.DRACUT_CONF} with "
                   "dracut's integrity module), so every appraised file would be denied; install initramfs-tools or "
                   f"dracut in the root, rerun `imaguard keys install --root {root} CERT` and rebuild the initramfs; "
                   "nothing was written\n")
    assert not (root / bootfiles.POLICY_PATH).exists()
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root),
                         "--unsafe-enforce-with-unsigned-files")  # fmt: skip
    assert code == 0
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-NO-BOOT-LOADING", "W-PACKAGE-CHANGES"]
    # dracut: the drop-in `keys install` writes, with the module's key loader, counts as loading the keys.
    (root / bootfiles.POLICY_PATH).unlink()
    (root / bootfiles.DRACUT_MODULE_DIR).mkdir(parents=True)
    (root / bootfiles.DRACUT_MODULE_DIR / "ima-keys-load.sh").write_text("#!/bin/sh\n")
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    initramfs(root, "initramfs-6.1.0-50.img")  # dracut's name outside Debian
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["boot_key_loading"]) == (0, ["dracut"]), err


@pytest.mark.parametrize(("name", "shown"), [
    ("m.policy\nappraise func=BPRM_CHECK appraise_type=imasig", "m.policy\\nappraise func=BPRM_CHECK appraise_type=imasig"),
    ("mesure-\u00e9t\u00e9.policy", "mesure-\\xe9t\\xe9.policy"),
])  # fmt: skip
def test_policy_file_name_is_escaped_in_the_header(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], name: str, shown: str
) -> None:
    # Regression: the name went raw into "# source:": a newline injected rules, non-ASCII crashed.
    root = tmp_path / "r"
    root.mkdir()
    source = tmp_path / name
    source.write_text("measure func=BPRM_CHECK\n")
    code, _doc, err = run("policy", "install", "--stage", "measure", "--file", str(source), "--root", str(root))
    assert (code, err) == (0, "")
    lines = (root / bootfiles.POLICY_PATH).read_text(encoding="ascii").splitlines()
    assert lines[2] == f"# source: {shown}"
    assert [line for line in lines if not line.startswith("#")] == ["measure func=BPRM_CHECK"]


def test_rotation_without_a_rebuilt_initramfs_refuses_enforce(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    """Regression: enforce counted ROOT/etc/keys/ima as what the next boot loads whenever the hook existed.
    After `keys install` of a new key, re-signing and removing the old certificate, the initramfs (never
    rebuilt) still held only the old key: every re-signed file would have been denied at boot."""
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    old_key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(old_key))[0] == 0
    image = initramfs(root, age=3600)  # built before the keys were installed
    key_dir = root / bootfiles.KEY_DIR
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale")
    newest = err.removeprefix(f"imaguard: error: {image} is older than ").partition(":")[0]
    assert newest in {str(key_dir), str(key_dir / TEST_KEY_FILE), str(root / bootfiles.INITRAMFS_HOOK),
                      str(root / bootfiles.INITRAMFS_SCRIPT)}, err  # written within the same clock tick
    assert err == (f"imaguard: error: {image} is older than {newest}: an initramfs loads the IMA keys (or key "
                   f"loader) of when it was built, so the next boot would not load those in {key_dir} and would "
                   f"deny every file signed with a key the image lacks; rebuild: chroot {root} update-initramfs -u "
                   "-k all; nothing was written\n")  # fmt: skip
    assert not (root / bootfiles.POLICY_PATH).exists()
    image = initramfs(root)  # rebuilt
    assert run("policy", "install", "--stage", "enforce", "--root", str(root))[0] == 0
    # rotation: the new key installed, the old one retired, and no rebuild
    assert run("keys", "install", "--root", str(root), str(pki().write(tmp_path, "rsa_cert")))[0] == 0
    (key_dir / TEST_KEY_FILE).unlink()
    when = image.stat().st_mtime - 60
    os.utime(image, (when, when))
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale"), err
    assert f"imaguard: error: {image} is older than {key_dir}" in err
    # the log stage (surely logging) and the unsafe flag warn instead
    kernel_config(root)
    code, doc, err = run("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off")
    assert code == 0, err
    assert err.startswith(f"imaguard: warning [W-INITRAMFS-STALE]: {image} is older than {key_dir}")
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-INITRAMFS-STALE"]
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root),
                         "--unsafe-enforce-with-unsigned-files")  # fmt: skip
    assert code == 0, err
    assert [w.split(":")[0] for w in doc["warnings"]] == ["W-INITRAMFS-STALE", "W-PACKAGE-CHANGES"]
    # every image the boot loader may start must be fresh; DKMS's backups are never booted
    initramfs(root)
    initramfs(root, "initrd.img-6.1.0-50-amd64.old-dkms", age=3600)
    code, doc, err = run("policy", "install", "--stage", "log", "--root", str(root), "--target-secure-boot", "off")
    assert (code, "warnings" in doc, "W-INITRAMFS-STALE" in err) == (0, False, False), err
    other = initramfs(root, "initrd.img-6.1.0-40-amd64", age=3600)
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert code == 3
    assert err.startswith(f"imaguard: error: {other} is older than {key_dir}"), err


def test_no_initramfs_image_refuses_enforce(tmp_path: Path, run: Callable[..., tuple[int, dict, str]]) -> None:
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))[0] == 0
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale")
    assert err == (f"imaguard: error: no initramfs image under {root}/boot (initrd.img-*): nothing would load "
                   f"{root}/etc/keys/ima at the next boot, so every appraised file would be denied; rebuild: "
                   f"chroot {root} update-initramfs -u -k all; nothing was written\n")  # fmt: skip


def test_dracut_reads_keys_from_the_root_so_only_its_drop_in_must_predate_the_image(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]]
) -> None:
    # dracut's ima-keys-load.sh loads $NEWROOT/etc/keys/ima at pre-pivot: a key installed after the
    # image is loaded; the drop-in that includes the module, though, takes a rebuild.
    root = tmp_path / "r"
    (root / bootfiles.DRACUT_MODULE_DIR).mkdir(parents=True)
    (root / bootfiles.DRACUT_MODULE_DIR / "ima-keys-load.sh").write_text("#!/bin/sh\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/evmctl").write_text("")
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    image = initramfs(root, age=3600)
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale")
    assert err.startswith(f"imaguard: error: {image} is older than {root / bootfiles.DRACUT_CONF}: ")
    assert err.endswith(f"rebuild: chroot {root} dracut -f --regenerate-all; nothing was written\n")
    initramfs(root)
    conf = root / bootfiles.DRACUT_CONF
    when = image.stat().st_mtime - 60
    os.utime(conf, (when, when))
    os.utime(root / bootfiles.KEY_DIR / TEST_KEY_FILE, (when + 120, when + 120))  # a key newer than the image
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["boot_key_loading"]) == (0, ["dracut"]), err


def test_an_initramfs_with_other_keys_refuses_enforce_however_new(
    tmp_path: Path, run: Callable[..., tuple[int, dict, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review R6: the image was newer than the certificate, but built with the retired key only.
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    old = pki().write(tmp_path, "rsa_cert")
    old_name = bootfiles.cert_file_name(pki().cert("rsa_cert").key_id)
    assert run("keys", "install", "--root", str(root), str(old))[0] == 0
    key = REPO / "tests/data/keys/ima-test-rsa2048.key"
    assert run("keys", "install", "--root", str(root), str(TEST_CERT), "--sign-key", str(key))[0] == 0
    image = initramfs(root)
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["initramfs_checked"]) == (0, {str(image): "content"}), err
    (root / bootfiles.POLICY_PATH).unlink()
    key_dir = root / bootfiles.KEY_DIR
    (key_dir / TEST_KEY_FILE).rename(tmp_path / TEST_KEY_FILE)
    image = initramfs(root)  # holds only the old key
    (tmp_path / TEST_KEY_FILE).rename(key_dir / TEST_KEY_FILE)
    (key_dir / old_name).unlink()
    when = image.stat().st_mtime + 60
    os.utime(image, (when, when))
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale"), err
    assert err == (f"imaguard: error: {image} holds {old_name}, not the certificates in {key_dir} (differing: "
                   f"{', '.join(sorted([TEST_KEY_FILE, old_name]))}): the next boot would load the IMA keys of the "
                   "image and deny every "
                   f"file signed with a key it lacks; rebuild: chroot {root} update-initramfs -u -k all; nothing was "
                   "written\n")  # fmt: skip
    assert not (root / bootfiles.POLICY_PATH).exists()
    # same names, other bytes: refused too; an image it cannot read is judged by its age alone
    image.write_bytes(gzip.compress(newc({f"{bootfiles.KEY_DIR}/{TEST_KEY_FILE}": b"other"})))
    assert run("policy", "install", "--stage", "enforce", "--root", str(root))[0] == 3
    image.write_bytes(b"\x28\xb5\x2f\xfd zstd")
    # zstd (Debian's default) is not read here: names from lsinitramfs where it exists, else age only.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["initramfs_checked"]) == (0, {str(image): "mtime"}), err
    unchecked = (f"W-INITRAMFS-UNCHECKED: {image}: neither its content nor its file list could be read here (install "
                 "lsinitramfs, from initramfs-tools-core), so only its age was checked against the keys")
    assert unchecked in doc["warnings"]
    assert f"imaguard: warning [{unchecked.replace(': ', ']: ', 1)}\n" in err
    (root / bootfiles.POLICY_PATH).unlink()
    lsinitramfs = bin_dir / "lsinitramfs"
    lsinitramfs.write_text(f"#!/bin/sh\necho .\necho {bootfiles.KEY_DIR}\necho {bootfiles.KEY_DIR}/{TEST_KEY_FILE}\n")
    lsinitramfs.chmod(0o755)
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["initramfs_checked"]) == (0, {str(image): "names"}), err
    (root / bootfiles.POLICY_PATH).unlink()
    lsinitramfs.write_text(f"#!/bin/sh\necho {bootfiles.KEY_DIR}/imaguard-00000000.der\n")  # another key
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale"), err
    assert "holds imaguard-00000000.der, not the certificates in" in err


def test_a_damaged_initramfs_refuses_enforce(tmp_path: Path, run: Callable[..., tuple[int, dict, str]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Regression (review): a corrupt or truncated image counted as "could not be read here" and
    passed on its age; the kernel cannot unpack it and would boot without the keys."""
    root = tmp_path / "r"
    (root / "etc/initramfs-tools").mkdir(parents=True)
    assert run("keys", "install", "--root", str(root), str(TEST_CERT))[0] == 0
    image = initramfs(root)
    rebuild = f"rebuild: chroot {root} update-initramfs -u -k all; nothing was written\n"
    for data in (b"\x1f\x8b\x08\x00garbage", image.read_bytes()[:-40]):
        image.write_bytes(data)
        code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
        assert (code, doc["error"]["reason"]) == (3, "initramfs-stale"), err
        assert err == (f"imaguard: error: {image} cannot be unpacked: compressed data ends before its end marker "
                       "(truncated); the kernel would boot without the IMA keys it should hold and deny every "
                       f"appraised file; {rebuild}")  # fmt: skip
        assert not (root / bootfiles.POLICY_PATH).exists()
    # Not readable here (zstd), and lsinitramfs fails on it: refused with its words.
    image.write_bytes(b"\x28\xb5\x2f\xfd zstd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lsinitramfs").write_text("#!/bin/sh\necho 'zstd: corrupted block' >&2\nexit 1\n")
    (bin_dir / "lsinitramfs").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    code, doc, err = run("policy", "install", "--stage", "enforce", "--root", str(root))
    assert (code, doc["error"]["reason"]) == (3, "initramfs-stale"), err
    assert err.startswith(f"imaguard: error: {image} cannot be unpacked: lsinitramfs cannot list it (exit 1: zstd: "
                          "corrupted block); the kernel would boot")  # fmt: skip
