"""newc cpio archives as mkinitramfs writes them (``cpio -o -H newc``), for initramfs test images."""

from __future__ import annotations


def newc(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    """One archive: the directories, the regular files (mode 0644) and the TRAILER!!! entry, 4-byte aligned."""
    out = bytearray()
    entries = [(d, 0o040755, b"") for d in dirs] + [(n, 0o100644, b) for n, b in files.items()]
    for ino, (name, mode, body) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + body
        out += b"\0" * (-len(out) % 4)
    return bytes(out)
