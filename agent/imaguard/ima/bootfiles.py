"""The files that make keys and policy survive a reboot, and the kernel command line advice (pure).

Boot order on a systemd host, and where each piece goes (why the keys are in the keyring before
the policy is loaded and before the first appraised exec):

1. the initramfs runs. initramfs-tools: our ``init-top`` script loads the certificates that the
   hook copied into the initramfs (``/etc/keys/ima/*.der``) with ``keyctl padd asymmetric``,
   before the root filesystem is even mounted, so nothing of the real root is read or executed
   without the keys. dracut: its own ``98integrity`` module (``ima-keys-load.sh``, pre-pivot 61)
   loads every file in ``$NEWROOT$IMAKEYSDIR`` (default ``/etc/keys/ima``) with ``evmctl import``
   into ``.ima`` or ``_ima``; imaguard only turns the module on (``check()`` returns 255: dracut
   includes it only on request) instead of shipping a second loader;
2. PID 1 (systemd) starts from the real root and, before any unit, writes ``/etc/ima/ima-policy``
   to ``/sys/kernel/security/ima/policy`` (``src/core/ima-setup.c``). From here on files are
   appraised, against keys that are already loaded.

The keys land in ``_ima`` linked into root's user keyring ``@u``. PID 1 has no session keyring, so
the kernel's ``request_key`` from PID 1 and from the processes it forks before setting up their
keyrings (generators) falls back to root's user-session keyring, which links ``@u``: the first
appraisals of the boot happen there and cache the keyring for everyone (lab note P3).
"""

from __future__ import annotations

import lzma
import re
import shlex
import zlib
from dataclasses import dataclass

from imaguard.errors import FormatError
from imaguard.ima.hostfacts import cmdline_value

__all__ = [
    "DRACUT_CONF",
    "DRACUT_MODULE_DIR",
    "GRUB_DEFAULT",
    "INITRAMFS_HOOK",
    "INITRAMFS_SCRIPT",
    "KEY_DIR",
    "POLICY_PATH",
    "STAGES",
    "CmdlineAdvice",
    "GrubEdit",
    "cert_file_name",
    "cmdline_advice",
    "dracut_conf",
    "grub_edit",
    "initramfs_files",
    "initramfs_hook",
    "initramfs_script",
    "parse_imakeysdir",
    "policy_file",
    "stage_of_policy_file",
]

KEY_DIR = "etc/keys/ima"  # relative to the root; the convention dracut and evmctl users share
POLICY_PATH = "etc/ima/ima-policy"  # what systemd loads at boot
INITRAMFS_HOOK = "etc/initramfs-tools/hooks/imaguard"
INITRAMFS_SCRIPT = "etc/initramfs-tools/scripts/init-top/imaguard"
DRACUT_MODULE_DIR = "usr/lib/dracut/modules.d/98integrity"
DRACUT_CONF = "etc/dracut.conf.d/90-imaguard.conf"
GRUB_DEFAULT = "etc/default/grub"
STAGES = ("measure", "log", "enforce")

_STAGE_MARK = "# imaguard-stage: "


def cert_file_name(key_id: bytes) -> str:
    """``imaguard-<keyid>.der``: one file per key, so reinstalling the same key changes nothing."""
    return f"imaguard-{key_id.hex()}.der"


def initramfs_hook() -> str:
    """initramfs-tools hook: copy keyctl and the DER certificates into the initramfs.

    A missing keyctl fails the hook, and with it ``update-initramfs``: an initramfs that would boot
    without the IMA keys is worse than none (under enforce every signed file would be denied).
    """
    return f"""\
#!/bin/sh
# Written by `imaguard keys install`. Copies the IMA certificates in /{KEY_DIR} and keyctl into
# the initramfs; scripts/init-top/imaguard loads them into the kernel keyring at boot.
# Rerun `update-initramfs -u` after changing /{KEY_DIR}.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in
prereqs) prereqs; exit 0 ;;
esac

. /usr/share/initramfs-tools/hook-functions

KEYCTL=$(command -v keyctl) || {{
	echo "E: imaguard: keyctl (package keyutils) is needed to load IMA keys at boot" >&2
	exit 1
}}
copy_exec "$KEYCTL" /bin/keyctl
for cert in /{KEY_DIR}/*.der; do
	[ -f "$cert" ] || continue
	copy_file cert "$cert" "/{KEY_DIR}/${{cert##*/}}"
done
exit 0
"""


# An initramfs is bigger than this, unpacked, only by mistake; past it its content is not checked
# here (lsinitramfs, or its age). Debian's are 30-70 MB packed, ~150 MB unpacked; hosts with 1 GiB
# of memory must be able to hold it.
MAX_INITRAMFS_SIZE = 256 << 20
_CPIO_HEADER = 110  # newc: "070701" and 13 eight-digit hex fields (usr/gen_init_cpio.c, init/initramfs.c)


def initramfs_files(image: bytes, prefix: str, limit: int = MAX_INITRAMFS_SIZE) -> dict[str, bytes] | None:
    """The regular files under ``prefix`` (e.g. ``etc/keys/ima/``) in an initramfs image, with their bytes.

    An image is newc cpio archives one after the other, each plain or compressed, with NUL padding
    between them (init/initramfs.c ``unpack_to_rootfs``; initramfs-tools puts the uncompressed early
    microcode archive before the compressed main one). gzip and xz are read here; None when a part
    is compressed otherwise (zstd, Debian's default, lz4, lzo, bzip2, lzma), nested deeper than any
    initramfs or past ``limit``: the content could not be checked here. FormatError when the image
    is damaged where it can be read (truncated, corrupt, no known format): the kernel could not
    unpack it either ("Initramfs unpacking failed") and would boot without what it holds. Names are
    as mkinitramfs writes them, without ``./``.
    """
    found: dict[str, bytes] = {}
    budget = [limit]
    return found if _cpio_parts(image, prefix, found, budget) else None


_MAX_NESTING = 4
# Compressions the kernel may unpack (lib/decompress.c compressed_formats) that are not read here.
_OTHER_COMPRESSIONS = (b"\x28\xb5\x2f\xfd", b"\x02\x21", b"\x89\x4c", b"BZh", b"\x5d\x00")


def _cpio_parts(data: bytes, prefix: str, found: dict[str, bytes], budget: list[int], depth: int = 0) -> bool:
    """True when every part was read; False when one cannot be read here; FormatError when damaged."""
    pos = 0
    while True:
        while pos < len(data) and data[pos] == 0:
            pos += 1
        if pos >= len(data):
            return True
        if data.startswith((b"070701", b"070702"), pos):
            end = _cpio_archive(data, pos, prefix, found)
            if end is None:
                raise FormatError("a damaged or truncated cpio archive")
            pos = end
            continue
        part = _decompress(data[pos:], budget[0] + 1)
        if part is None:
            return False
        inner, rest, done = part
        budget[0] -= len(inner)
        if budget[0] < 0:
            return False
        if not done:
            raise FormatError("compressed data ends before its end marker (truncated)")
        # Compressed archives inside compressed archives: no initramfs nests, and each level is a
        # Python frame (a 28 KB image of 1,200 gzip layers would exhaust the stack).
        if depth >= _MAX_NESTING or not _cpio_parts(inner, prefix, found, budget, depth + 1):
            return False
        data, pos = rest, 0


def _decompress(data: bytes, max_length: int) -> tuple[bytes, bytes, bool] | None:
    """(output, the bytes after this stream, whether it ended) of the gzip or xz stream ``data``
    starts with; None for a compression not read here; FormatError for anything else."""
    if data.startswith(b"\x1f\x8b"):
        gz = zlib.decompressobj(wbits=31)
        try:
            return gz.decompress(data, max_length), gz.unused_data, gz.eof
        except zlib.error as exc:
            raise FormatError(f"damaged gzip data ({exc})") from exc
    if data.startswith(b"\xfd7zXZ\x00"):
        xz = lzma.LZMADecompressor()
        try:
            return xz.decompress(data, max_length), xz.unused_data, xz.eof
        except lzma.LZMAError as exc:
            raise FormatError(f"damaged xz data ({exc})") from exc
    if data.startswith(_OTHER_COMPRESSIONS):
        return None
    raise FormatError("neither a cpio archive nor a compressed one where a part should begin")


def _cpio_archive(data: bytes, pos: int, prefix: str, found: dict[str, bytes]) -> int | None:
    """Read one newc archive from ``pos`` up to its TRAILER!!!; where it ends, or None if malformed."""
    while True:
        header = data[pos : pos + _CPIO_HEADER]
        if len(header) < _CPIO_HEADER or header[:5] != b"07070":
            return None
        try:
            mode, size, name_size = int(header[14:22], 16), int(header[54:62], 16), int(header[94:102], 16)
        except ValueError:
            return None
        name_end = pos + _CPIO_HEADER + name_size
        body = name_end + (-name_end % 4)
        end = body + size + (-(body + size) % 4)
        if name_size == 0 or end > len(data):
            return None
        name = data[pos + _CPIO_HEADER : name_end - 1].decode("utf-8", "surrogateescape").removeprefix("./")
        if name == "TRAILER!!!":
            return end
        if name.startswith(prefix) and mode & 0o170000 == 0o100000:  # S_IFREG: a later entry replaces one
            found[name] = data[body : body + size]
        pos = end


def initramfs_script() -> str:
    """initramfs-tools ``init-top`` script: load the copied certificates, before the root is mounted."""
    return f"""\
#!/bin/sh
# Written by `imaguard keys install`. Loads the IMA certificates copied by hooks/imaguard into the
# kernel keyring.
# Why init-top: it runs first, before the root filesystem is mounted and long before systemd loads
# /etc/ima/ima-policy, so the keys are in the keyring before the policy exists and before the first
# appraised exec (nothing of the real root runs before run-init starts /sbin/init).
# Keyring: the kernel-made, restricted '.ima' if this kernel has one (CONFIG_INTEGRITY_TRUSTED_KEYRING),
# else '_ima' linked into root's user keyring, where the kernel's request_key finds it.
# A key that fails to load is reported on the console and in dmesg; the boot goes on.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in
prereqs) prereqs; exit 0 ;;
esac

say() {{
	echo "imaguard: $*"
	echo "imaguard: $*" > /dev/kmsg 2>/dev/null || true
}}

[ -x /bin/keyctl ] || {{ say "keyctl missing from the initramfs: IMA keys not loaded"; exit 0; }}
set -- /{KEY_DIR}/*.der
[ -f "$1" ] || exit 0

if line=$(keyctl describe %keyring:.ima 2>/dev/null); then
	ring=${{line%%:*}}
else
	ring=$(keyctl search @u keyring _ima 2>/dev/null) || ring=$(keyctl newring _ima @u) || {{
		say "cannot create the _ima keyring: IMA keys not loaded"
		exit 0
	}}
fi
for cert in "$@"; do
	if keyctl padd asymmetric "" "$ring" < "$cert" > /dev/null; then
		say "loaded IMA certificate ${{cert##*/}} into keyring $ring"
	else
		say "FAILED to load IMA certificate ${{cert##*/}} into keyring $ring"
	fi
done
exit 0
"""


def dracut_conf() -> str:
    """dracut drop-in that includes dracut's own ``integrity`` module (it loads ``/etc/keys/ima``)."""
    return f"""\
# Written by `imaguard keys install`. dracut's integrity module (98integrity, ima-keys-load.sh)
# loads every certificate in $IMAKEYSDIR (default /{KEY_DIR}) into '.ima' or '_ima' at pre-pivot,
# before systemd loads /etc/ima/ima-policy; it is only included on request.
add_dracutmodules+=" integrity "
"""


def parse_imakeysdir(sysconfig_ima: str) -> str | None:
    """``IMAKEYSDIR=`` from dracut's ``/etc/sysconfig/ima`` (a shell fragment), if it sets one."""
    found: str | None = None
    for raw in sysconfig_ima.splitlines():
        line = raw.strip()
        if line.startswith("IMAKEYSDIR="):
            try:
                words = shlex.split(line.partition("=")[2])
            except ValueError:
                continue
            found = words[0] if words else ""
    return found


def policy_file(rules_text: str, *, stage: str, source: str) -> str:
    """``/etc/ima/ima-policy``: a comment header (the kernel and systemd skip ``#`` lines), then the rules.

    ``source`` (a file name, chosen by whoever named ``--file``) is written backslash-escaped, ASCII
    only: a newline in it would end the comment and start rules the gate never saw.
    """
    return (
        "# Written by `imaguard policy install`; do not edit, rerun it.\n"
        "# systemd loads this file into /sys/kernel/security/ima/policy at boot, before any unit starts.\n"
        f"# source: {_escaped(source)}\n"
        f"{_STAGE_MARK}{stage}\n"
        f"{rules_text}"
    )


def _escaped(text: str) -> str:
    # Printable ASCII stays; backslash, control and line-break characters, non-ASCII and the
    # surrogates of undecodable file name bytes become \\, \n, \xNN, \uNNNN.
    return text.encode("unicode_escape").decode("ascii")


def stage_of_policy_file(text: str) -> str | None:
    """The stage an installed ``/etc/ima/ima-policy`` was written for, if imaguard wrote it."""
    for line in text.splitlines():
        if line.startswith(_STAGE_MARK):
            stage = line[len(_STAGE_MARK) :].strip()
            return stage if stage in STAGES else None
    return None


@dataclass(frozen=True, slots=True)
class CmdlineAdvice:
    """Kernel command line words to add and remove for a stage, and why."""

    stage: str
    add: tuple[str, ...]
    remove: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def needs_change(self) -> bool:
        return bool(self.add or self.remove)


_APPRAISING_BUILTINS = ("appraise_tcb", "secure_boot")


def cmdline_advice(stage: str, words: tuple[str, ...]) -> CmdlineAdvice:
    """What the kernel command line (``words``) needs for ``stage`` (measure, log or enforce)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    add: list[str] = []
    remove: list[str] = []
    notes: list[str] = []
    appraise = [w for w in words if w.partition("=")[0] == "ima_appraise"]
    if stage == "log":
        remove += [w for w in appraise if w != "ima_appraise=log"]
        if "ima_appraise=log" not in appraise:
            add.append("ima_appraise=log")
        notes.append("ima_appraise=log makes appraisal failures logged (audit type 1800), not denied; the kernel "
                     "honours it only with CONFIG_IMA_APPRAISE_BOOTPARAM=y and ignores it under secure boot "
                     "with an architecture policy (dmesg: 'ignoring ima_appraise=log')")  # fmt: skip
    elif stage == "enforce":
        remove += [w for w in appraise if w != "ima_appraise=enforce"]
        notes.append("without ima_appraise= the kernel enforces (ima_appraise=enforce says the same explicitly): "
                     "files that fail appraisal are denied with EACCES")  # fmt: skip
    else:
        notes.append("the measure policy appraises nothing, so ima_appraise= makes no difference")
    builtin = cmdline_value(words, "ima_policy")
    if builtin is not None:
        names = builtin.split("|")
        if any(name in _APPRAISING_BUILTINS for name in names):
            remove += [w for w in words if w.partition("=")[0] == "ima_policy" and w not in remove]
            notes.append(f"ima_policy={builtin} loads built-in appraise rules that apply to every file root owns "
                         "from the start of the boot until systemd replaces them with /etc/ima/ima-policy: "
                         "remove it")  # fmt: skip
        else:
            notes.append(f"ima_policy={builtin}: built-in measurement rules, replaced at boot by /etc/ima/ima-policy")
    else:
        notes.append("no ima_policy=: the kernel starts without rules and systemd loads /etc/ima/ima-policy")
    return CmdlineAdvice(stage, tuple(add), tuple(dict.fromkeys(remove)), tuple(notes))


@dataclass(frozen=True, slots=True)
class GrubEdit:
    """The lines of ``/etc/default/grub`` to change: (old line or None for a new one, new line)."""

    changes: tuple[tuple[str | None, str], ...]
    new_text: str


_GRUB_LINE = re.compile(r'^(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)="([^"$`\\]*)"\s*$')


def grub_edit(text: str, advice: CmdlineAdvice) -> GrubEdit | None:
    """The edit of ``/etc/default/grub`` that applies ``advice``; None when a line is not a plain
    double-quoted value this function can rewrite safely (then the advice is printed for a person).

    Words are removed from ``GRUB_CMDLINE_LINUX`` and ``GRUB_CMDLINE_LINUX_DEFAULT`` and added to
    ``GRUB_CMDLINE_LINUX`` (every boot entry, recovery included).
    """
    lines = text.split("\n")
    found: dict[str, int] = {}
    for index, line in enumerate(lines):
        name = line.partition("=")[0].strip()
        if name in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            if _GRUB_LINE.match(line) is None or name in found:
                return None
            found[name] = index
    changes: list[tuple[str | None, str]] = []
    for name in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
        words: list[str] = []
        if name in found:
            match = _GRUB_LINE.match(lines[found[name]])
            assert match is not None  # noqa: S101 - checked above
            words = match.group(2).split()
        kept = [w for w in words if w not in advice.remove]
        if name == "GRUB_CMDLINE_LINUX":
            kept += [w for w in advice.add if w not in kept]
        if kept == words:
            continue
        new = f'{name}="{" ".join(kept)}"'
        if name in found:
            changes.append((lines[found[name]], new))
            lines[found[name]] = new
        else:
            changes.append((None, new))
            if lines and lines[-1] == "":
                lines.insert(len(lines) - 1, new)
            else:
                lines.append(new)
    return GrubEdit(tuple(changes), "\n".join(lines))
