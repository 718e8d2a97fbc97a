"""Boot files and command line advice (pure): initramfs hook and script, dracut drop-in, grub edits."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpiolib import newc

from imaguard.errors import FormatError
from imaguard.ima import bootfiles
from imaguard.ima.bootfiles import cmdline_advice, grub_edit


def test_initramfs_hook_copies_keyctl_and_certificates_and_fails_without_keyctl() -> None:
    hook = bootfiles.initramfs_hook()
    assert hook.startswith("#!/bin/sh\n")
    assert ". /usr/share/initramfs-tools/hook-functions\n" in hook
    assert 'copy_exec "$KEYCTL" /bin/keyctl\n' in hook
    assert 'copy_file cert "$cert" "/etc/keys/ima/${cert##*/}"\n' in hook
    assert "\texit 1\n" in hook  # no keyctl: update-initramfs fails instead of building a keyless initramfs
    assert 'prereqs) prereqs; exit 0 ;;' in hook


def test_initramfs_script_loads_into_dot_ima_or_underscore_ima() -> None:
    script = bootfiles.initramfs_script()
    assert "keyctl describe %keyring:.ima" in script
    assert "keyctl search @u keyring _ima" in script
    assert "keyctl newring _ima @u" in script
    assert 'keyctl padd asymmetric "" "$ring" < "$cert"' in script
    assert "init-top" in script  # the comment says why this phase


@pytest.mark.parametrize("text", [bootfiles.initramfs_hook(), bootfiles.initramfs_script()])
def test_boot_scripts_are_valid_posix_sh(text: str) -> None:
    for shell in ("sh", "dash", "busybox"):
        exe = shutil.which(shell)
        if exe is None:
            continue
        argv = [exe, "sh", "-n"] if shell == "busybox" else [exe, "-n"]
        subprocess.run(argv, input=text, text=True, check=True)


def test_dracut_uses_its_own_integrity_module() -> None:
    assert 'add_dracutmodules+=" integrity "\n' in bootfiles.dracut_conf()
    assert bootfiles.parse_imakeysdir('IMAPOLICY=/x\nIMAKEYSDIR="/etc/keys/other"\n') == "/etc/keys/other"
    assert bootfiles.parse_imakeysdir("# nothing\n") is None


def test_cert_file_name_is_per_key() -> None:
    assert bootfiles.cert_file_name(bytes.fromhex("17b7ae8b")) == "imaguard-17b7ae8b.der"


def test_policy_file_header_round_trip() -> None:
    text = bootfiles.policy_file("measure func=BPRM_CHECK\n", stage="log", source="appraise-exec.policy")
    assert text.endswith("\nmeasure func=BPRM_CHECK\n")
    assert all(line.startswith("#") for line in text.splitlines()[:-1])
    assert bootfiles.stage_of_policy_file(text) == "log"
    assert bootfiles.stage_of_policy_file("measure func=BPRM_CHECK\n") is None


def test_policy_file_source_name_cannot_end_the_comment_line() -> None:
    # Regression: a --file name with a newline wrote rules into the header that the gate never saw.
    text = bootfiles.policy_file("measure func=BPRM_CHECK\n", stage="enforce",
                                 source="a\nappraise func=BPRM_CHECK\r\x85\u2028\\é\udcff.policy")  # fmt: skip
    assert text.splitlines()[2] == "# source: a\\nappraise func=BPRM_CHECK\\r\\x85\\u2028\\\\\\xe9\\udcff.policy"
    assert text.isascii()
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["measure func=BPRM_CHECK"]
    assert bootfiles.stage_of_policy_file(text) == "enforce"


def test_cmdline_advice_per_stage() -> None:
    log = cmdline_advice("log", ("root=/dev/vda", "ima_appraise=fix"))
    assert (log.add, log.remove) == (("ima_appraise=log",), ("ima_appraise=fix",))
    assert cmdline_advice("log", ("ima_appraise=log",)).needs_change is False
    enforce = cmdline_advice("enforce", ("ima_appraise=log", "quiet"))
    assert (enforce.add, enforce.remove) == ((), ("ima_appraise=log",))
    assert cmdline_advice("enforce", ("ima_appraise=enforce",)).needs_change is False
    measure = cmdline_advice("measure", ("ima_policy=appraise_tcb",))
    assert measure.remove == ("ima_policy=appraise_tcb",)
    assert any("appraise_tcb" in n and "remove it" in n for n in measure.notes)
    assert cmdline_advice("measure", ("ima_policy=tcb",)).needs_change is False
    with pytest.raises(ValueError, match="unknown stage"):
        cmdline_advice("audit", ())


def test_grub_edit_replaces_and_adds_lines() -> None:
    text = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet ima_appraise=log"\nGRUB_CMDLINE_LINUX=""\n'
    edit = grub_edit(text, cmdline_advice("enforce", ("quiet", "ima_appraise=log")))
    assert edit is not None
    assert edit.changes == (('GRUB_CMDLINE_LINUX_DEFAULT="quiet ima_appraise=log"', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"'),)
    assert edit.new_text == 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
    edit = grub_edit("GRUB_DEFAULT=0\n", cmdline_advice("log", ()))
    assert edit is not None
    assert edit.changes == ((None, 'GRUB_CMDLINE_LINUX="ima_appraise=log"'),)
    assert edit.new_text == 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="ima_appraise=log"\n'


def test_grub_edit_refuses_what_it_cannot_rewrite_safely() -> None:
    advice = cmdline_advice("log", ())
    assert grub_edit('GRUB_CMDLINE_LINUX="$EXTRA quiet"\n', advice) is None
    assert grub_edit("GRUB_CMDLINE_LINUX='quiet'\n", advice) is None
    assert grub_edit('GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX="b"\n', advice) is None


# --- initramfs content -------------------------------------------------------------------------------

KEY_A, KEY_B = b"\x30\x82certificate A", b"\x30\x82cert B"


def _main_archive() -> bytes:
    return newc({"etc/keys/ima/imaguard-aaaaaaaa.der": KEY_A, "etc/keys/ima/imaguard-bbbbbbbb.der": KEY_B,
                 "bin/keyctl": b"\x7fELF", "etc/keys/imaguard.txt": b"not under the prefix"},
                dirs=("etc", "etc/keys", "etc/keys/ima"))  # fmt: skip


def test_initramfs_files_reads_plain_gzip_and_xz_parts_after_early_microcode() -> None:
    # initramfs-tools: the uncompressed early archive (microcode), padding, then the compressed main one.
    early = newc({"kernel/x86/microcode/GenuineIntel.bin": b"ucode"}, dirs=("kernel",))
    want = {"etc/keys/ima/imaguard-aaaaaaaa.der": KEY_A, "etc/keys/ima/imaguard-bbbbbbbb.der": KEY_B}
    for main in (_main_archive(), gzip.compress(_main_archive()), lzma.compress(_main_archive())):
        assert bootfiles.initramfs_files(early + b"\0" * 512 + main, "etc/keys/ima/") == want
    assert bootfiles.initramfs_files(newc({"init": b"#!/bin/sh"}), "etc/keys/ima/") == {}


def test_initramfs_files_is_none_when_the_content_cannot_be_read_here() -> None:
    main = _main_archive()
    for magic in (b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18", b"\x89LZO", b"BZh9", b"\x5d\x00\x00"):
        # zstd (Debian 12's default), lz4, lzo, bzip2, lzma: the kernel may read them, the stdlib not.
        assert bootfiles.initramfs_files(main + magic + b"\0" * 64, "etc/keys/ima/") is None
    assert bootfiles.initramfs_files(gzip.compress(main), "etc/keys/ima/", limit=len(main) - 1) is None
    assert bootfiles.initramfs_files(gzip.compress(main), "etc/keys/ima/", limit=len(main)) is not None


def test_a_damaged_initramfs_is_a_format_error() -> None:
    """Regression (review): a truncated or corrupt gzip/xz/cpio image read as "could not be checked",
    so only its age was checked and enforce was allowed; the kernel cannot unpack it either."""
    main = _main_archive()
    corrupt = bytearray(gzip.compress(main))
    corrupt[20:40] = b"\xff" * 20
    cases = {
        main[:200]: "a damaged or truncated cpio archive",
        gzip.compress(main)[:-20]: "compressed data ends before its end marker (truncated)",
        bytes(corrupt): "damaged gzip data (Error -3 while decompressing data: ",
        lzma.compress(main)[:30] + b"\xff" * 50: "damaged xz data (Corrupt input data)",
        main.replace(b"070701", b"07070X", 2): "neither a cpio archive nor a compressed one where a part should begin",
        main[:54] + b"ZZZZZZZZ" + main[62:]: "a damaged or truncated cpio archive",  # size not hex
        b"\x1f\x8b\x08\x00garbage": "compressed data ends before its end marker (truncated)",  # the review's case
        main + b"junk after the archive": "neither a cpio archive nor a compressed one where a part should begin",
    }
    for data, message in cases.items():
        with pytest.raises(FormatError) as caught:
            bootfiles.initramfs_files(data, "etc/keys/ima/")
        # zlib's own words after "data: " depend on where the damage is.
        assert str(caught.value) == message or (message.endswith(": ") and str(caught.value).startswith(message))


def test_initramfs_files_refuses_deep_nesting_without_a_traceback() -> None:
    # Review: 1,200 gzip layers (28 KB) made the recursive reader hit the recursion limit.
    data = _main_archive()
    for _ in range(1200):
        data = gzip.compress(data, compresslevel=1)
    assert bootfiles.initramfs_files(data, "etc/keys/ima/") is None
    nested = gzip.compress(gzip.compress(_main_archive()))  # a little nesting still reads
    assert bootfiles.initramfs_files(nested, "etc/keys/ima/") is not None
