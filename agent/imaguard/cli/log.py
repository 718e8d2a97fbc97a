"""``imaguard log``: read the kernel's measurement list, check every entry, replay PCR 10."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, TYPE_CHECKING, Any

from imaguard.errors import ExitCode, FormatError, HostStateError, ImaguardError, UsageError
from imaguard.ima.measurements import (
    BANK_DIGEST_SIZES,
    Entry,
    LogReader,
    LogStream,
    detect_byteorder,
    iter_ascii,
    iter_binary,
)
from imaguard.ima.replay import PcrMismatch, ReplayedLog, compare, replay, replay_binary
from imaguard.ima.splitreplay import replay_file, splittable
from imaguard.shown import one_line, shown_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from imaguard.ima.templates import ByteOrder

__all__ = ["register"]

_HELP = """\
Read an IMA measurement list — the kernel's (/sys/kernel/security/ima/binary_runtime_measurements,
or the per-bank file of --bank where the kernel has one) or a saved copy with --file — and print
its entries. Every entry is checked while it is read: the template digest is recomputed from the
template data (a mismatch or any malformed record is an error naming its byte offset, and no
verdict is given), and its fields must be well formed. Templates: ima, ima-ng, ima-sig, ima-buf,
ima-modsig, evm-sig, ima-ngv2, ima-sigv2 and custom ima_template_fmt formats (fields of unknown
templates are kept raw). A list that ends inside a record (one that grew while it was read) ends
at the last whole record; the output says where.

--replay computes PCR 10 (and any other PCR the list extends) for the sha1 and sha256 banks the
way the kernel extends them (violations as all-0xff). --pcr-from-tpm reads the TPM's PCR 10 with
tpm2_pcrread first, then the list, and compares; --pcr BANK:HEX compares with values given on the
command line (one per bank; no TPM is read, and the output says "expected (--pcr)", not "TPM").
The two do not combine. A list that grew after the PCR was read is not a mismatch when the replay
reached the TPM's value on the way in every bank: the output says for how many leading entries the
TPM vouches. In JSON, "tpm" holds the values compared and "pcr_source" says where they come from:
"tpm" (--pcr-from-tpm) or "given" (--pcr).

--summary replays a saved binary list of 1 MiB or more on two cores (a second process replays the
sha256 bank; the two share the record checks): the output and any error are those of one process.
If the file changes between the two reads, the command stops with reason list-changed.

Exit status: 0 ok, 1 malformed list (or a saved list that changed while read), 2 usage error (a
--file that cannot be read included), 3 the replay differs from the TPM's PCRs (or the given ones),
77 no IMA, no TPM or no tpm2-tools here.
"""

_BANKS = ("sha1", "sha256")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("log", help="read, check and replay the IMA measurement list", description=_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", metavar="FILE", help="a saved list instead of the kernel's ('-' reads stdin)")
    p.add_argument("--ascii", action="store_true", help="the list is in the ASCII form (ascii_runtime_measurements)")
    p.add_argument("--bank", default="sha1", choices=sorted(BANK_DIGEST_SIZES),
                   help="template-digest bank of the list: sha1 (default, the classic file) or a per-bank file's")
    p.add_argument("--byteorder", default="auto", choices=("auto", "little", "big"),
                   help="integer byte order of a binary list (auto: from the first PCR index; "
                        "ima_canonical_fmt lists are little)")
    p.add_argument("--replay", action="store_true", help="replay the PCRs (sha1 and sha256 banks)")
    p.add_argument("--pcr-from-tpm", action="store_true",
                   help="read PCR 10 from the TPM and compare (implies --replay)")
    p.add_argument("--pcr", action="append", default=[], metavar="BANK:HEX",
                   help="expected PCR 10 value of a bank, compared with the replay (implies --replay; once per "
                        "bank; not with --pcr-from-tpm)")  # fmt: skip
    p.add_argument("--summary", action="store_true", help="counts and replay only, no entry listing")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.set_defaults(handler=_cmd_log)


class _Prefixed:
    """A reader that first returns bytes already read (the byte-order probe), then the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._rest.read(size)


def _expected(values: list[str]) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for item in values:
        bank, sep, value = item.partition(":")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if not sep or bank not in _BANKS:
            # Another bank would never be compared: the replay computes only these.
            raise UsageError(f"--pcr {item!r}: expected BANK:HEX, BANK sha1 or sha256 (the banks replayed)")
        if len(raw) != BANK_DIGEST_SIZES[bank]:
            raise UsageError(f"--pcr {item!r}: expected {BANK_DIGEST_SIZES[bank] * 2} hex digits for {bank}")
        if out.get(bank, {}).get(10, raw) != raw:
            # Which one is right? Letting the last win would compare with a value the user may not mean.
            raise UsageError(f"--pcr {bank}: given twice with different values; give one value per bank")
        out.setdefault(bank, {})[10] = raw
    return out


def _open(args: argparse.Namespace) -> tuple[str, IO[bytes]]:
    if args.file == "-":
        return "<stdin>", sys.stdin.buffer
    if args.file:
        try:
            return args.file, open(args.file, "rb", buffering=0)  # noqa: PTH123 - closed by the caller
        except OSError as exc:
            raise UsageError(f"{args.file}: cannot read: {exc.strerror}") from exc
    from imaguard.ima.logsource import locate, open_log  # noqa: PLC0415 - securityfs only when it is needed

    found = locate(ascii_form=args.ascii, bank=args.bank)
    return found.path, open_log(found)


def _stream(args: argparse.Namespace, f: IO[bytes], head: bytes) -> tuple[LogStream, LogReader, ByteOrder]:
    """The entry stream, the reader it reads (for the summary path), and the byte order; ``head`` is
    the first bytes of a binary list, already read from ``f``."""
    byteorder: ByteOrder = "little" if args.byteorder == "auto" else args.byteorder
    if args.ascii:
        return iter_ascii(f, byteorder=byteorder), f, byteorder
    if args.byteorder == "auto":
        byteorder = detect_byteorder(head)
    reader = _Prefixed(head, f)
    return iter_binary(reader, byteorder=byteorder, bank=args.bank), reader, byteorder


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _entry_doc(e: Entry) -> dict[str, Any]:
    d = e.digest
    doc: dict[str, Any] = {
        "offset": e.offset, "pcr": e.pcr, "template": e.template.name, "template_digest": e.template_digest.hex(),
        "digest": str(d) if d is not None else None, "path": _text(e.path), "violation": e.is_violation,
    }
    if "sig" in e.template.fields:
        doc["sig"] = e.sig.hex() if e.sig else None
    if e.buf is not None:
        doc["buf"] = e.buf.hex()
    if not e.template.known:
        doc["fields"] = [f.hex() for f in e.fields]
    return doc


def _entry_line(i: int, e: Entry) -> str:
    d = e.digest
    digest = "VIOLATION" if e.is_violation else (str(d) if d is not None else "-")
    sig = "-"
    if e.sig:
        sig = f"sig:{e.sig[3:7].hex()}" if len(e.sig) >= 7 and e.sig[0] == 3 else "sig"  # v2 header: keyid at 3..7
    return f"{i:>6} {e.pcr:>3} {e.template.name:<10} {digest} {sig} {shown_path(e.path)}"


def _listed(stream: LogStream, out: IO[str], as_json: bool) -> Iterator[Entry]:
    """Yield the stream's entries while writing each (bounded memory: nothing is kept)."""
    first = True
    for i, e in enumerate(stream):
        if as_json:
            out.write(("" if first else ",\n") + json.dumps(_entry_doc(e)))
            first = False
        else:
            out.write(_entry_line(i, e) + "\n")
        yield e


def _compared(args: argparse.Namespace) -> dict[str, dict[int, bytes]]:
    """The PCR values to compare the replay with: --pcr's, or the TPM's (read now, before the list)."""
    given = _expected(args.pcr)
    if not args.pcr_from_tpm:
        return given
    if given:
        # The TPM's values would silently replace the given ones bank by bank (and the output could
        # not say which it compared with): one source per run.
        raise UsageError("--pcr and --pcr-from-tpm: give one (values typed, or the TPM's)")
    # PCR first, list second: the kernel appends to the list before it extends the PCR, so a
    # list read afterwards holds every entry the PCR covers (and maybe newer ones).
    from imaguard.ima.pcrs import read_pcrs  # noqa: PLC0415 - runs tpm2_pcrread only when asked

    return {bank: dict(values) for bank, values in read_pcrs(_BANKS, (10,)).items()}


def _cmd_log(args: argparse.Namespace) -> int:
    tpm = _compared(args)
    want_replay = args.replay or args.pcr_from_tpm or bool(tpm)
    expect = {bank: values[10] for bank, values in tpm.items() if 10 in values}
    source, f = _open(args)
    out = sys.stdout
    opened = False  # the JSON document has begun: an error must then close it, not start a second one
    first = b""  # the first bytes of a binary list: the byte order, and whether it is the ASCII one
    try:
        first = b"" if args.ascii else f.read(4)
        stream, reader, byteorder = _stream(args, f, first)
        if args.json:
            head = {"source": source, "form": "ascii" if args.ascii else "binary", "bank": args.bank,
                    "byteorder": byteorder}
            out.write(json.dumps(head)[:-1] + ', "entries": [')
            opened = True
        elif not args.summary:
            out.write(f"{'#':>6} {'PCR':>3} {'TEMPLATE':<10} DIGEST SIG PATH\n")
        if args.summary and not args.ascii:
            replayed = _summary_replay(args, f, reader, byteorder, expect)
        else:
            entries = stream if args.summary else _listed(stream, out, args.json)
            replayed = replay(entries, banks=_BANKS, keep_entries=False, stream=stream, expect=expect)
    except FormatError as exc:
        message = _format_message(exc, source, first)
        if not opened:
            named = FormatError(message, reason=exc.reason)  # the offset is in the message already
            named.offset = exc.offset
            raise named from exc
        return _close_with_error(out, exc, message, exc.offset)
    except HostStateError as exc:  # two-process replay: the file changed between its reads, or a process died
        if not opened:
            raise
        return _close_with_error(out, exc, f"{source}: {exc}", None)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    mismatches = compare(replayed, tpm) if tpm else []
    # The list grew after the PCR read: the TPM still vouches for a prefix of it in every bank.
    # A zero-length prefix vouches for nothing (e.g. a TPM reset since the list began): a mismatch.
    grown = (
        bool(mismatches)
        and all(m.bank in replayed.matched and m.pcr == 10 for m in mismatches)  # IMA's PCR
        and (_vouched(replayed) or 0) > 0
    )
    if args.json:
        _finish_json(out, replayed, want_replay, tpm, mismatches, grown=grown, from_tpm=args.pcr_from_tpm)
    else:
        _finish_text(out, source, replayed, want_replay=want_replay, tpm=tpm, mismatches=mismatches, grown=grown,
                     saved=args.file is not None, from_tpm=args.pcr_from_tpm)
    return ExitCode.VERIFICATION_FAILED if mismatches and not grown else ExitCode.OK


def _format_message(exc: FormatError, source: str, first: bytes) -> str:
    from imaguard.ima.logsource import looks_ascii  # noqa: PLC0415 - securityfs paths only when needed

    hint = "; it looks like the ASCII list: use --ascii" if exc.offset == 0 and looks_ascii(first) else ""
    return f"{source}: {exc}{hint}"


def _close_with_error(out: IO[str], exc: ImaguardError, message: str, offset: int | None) -> int:
    """Entries were already streamed: close the one document with the error instead of adding a second."""
    out.write("], " + json.dumps({"error": {"reason": exc.reason, "message": message, "offset": offset}})[1:] + "\n")
    print(f"imaguard: error: {one_line(message)}", file=sys.stderr)
    return exc.exit_code


def _summary_replay(
    args: argparse.Namespace, f: IO[bytes], reader: LogReader, byteorder: ByteOrder, expect: dict[str, bytes]
) -> ReplayedLog:
    """No listing: check and replay the records without making an Entry for each; a long saved
    list on two cores, one bank in each (the same checks, result and errors)."""
    status = splittable(f.fileno(), _BANKS) if f is not sys.stdin.buffer else None
    if status is not None:
        return replay_file(f.fileno(), status, byteorder=byteorder, bank=args.bank, banks=_BANKS, expect=expect)
    return replay_binary(reader, byteorder=byteorder, bank=args.bank, banks=_BANKS, expect=expect)


def _vouched(r: ReplayedLog) -> int | None:
    """How many leading entries the TPM vouches for (the fewest over the compared banks)."""
    return min(r.matched.values()) if r.matched else None


def _finish_json(
    out: IO[str], r: ReplayedLog, want_replay: bool, tpm: dict[str, dict[int, bytes]], mismatches: list[Any],
    *, grown: bool, from_tpm: bool,
) -> None:
    tail: dict[str, Any] = {
        "count": r.count,
        "violations": r.violations,
        "templates": dict(r.templates),
        "boot_aggregate": str(r.boot_aggregate.digest) if r.boot_aggregate and r.boot_aggregate.digest else None,
        "end": r.end,
        "truncated": {"offset": r.truncated.offset, "have": r.truncated.have} if r.truncated else None,
    }
    if want_replay:
        tail["replay"] = {bank: {str(i): v.hex() for i, v in sorted(pcrs.items())} for bank, pcrs in r.pcrs.items()}
    if tpm:
        # "tpm"/"matches_tpm" keep their names (scripts read them); "pcr_source" says whether a TPM
        # was read at all or the values were typed with --pcr.
        tail["pcr_source"] = "tpm" if from_tpm else "given"
        tail["tpm"] = {bank: {str(i): v.hex() for i, v in sorted(p.items())} for bank, p in tpm.items()}
        tail["matches_tpm"] = not mismatches
        tail["mismatches"] = [str(m) if from_tpm else _given_mismatch(m) for m in mismatches]
        tail["vouched_entries"] = _vouched(r)
        tail["grew_after_pcr_read"] = grown
    out.write("], " + json.dumps(tail)[1:] + "\n")


def _finish_text(
    out: IO[str], source: str, r: ReplayedLog, *, want_replay: bool, tpm: dict[str, dict[int, bytes]],
    mismatches: list[Any], grown: bool, saved: bool = False, from_tpm: bool = True,
) -> None:
    kinds = ", ".join(f"{name} {n}" for name, n in sorted(r.templates.items()))
    out.write(f"{source}: {r.count} entries ({kinds or 'none'}), {r.violations} violations, "
              f"{r.end} bytes checked\n")
    if r.truncated and saved:
        # A saved copy does not grow: either it was copied while the list grew, or the bytes after
        # the last whole record are not one. Say both; nothing after that point was checked.
        out.write(f"the file ends inside a record at byte {r.truncated.offset} ({r.truncated.have} bytes of it "
                  f"present): a copy taken while the list grew, or bytes that are not a record; only the "
                  f"{r.count} entries before it were checked\n")
    elif r.truncated:
        out.write(f"the list ends inside a record at byte {r.truncated.offset} ({r.truncated.have} bytes of it "
                  "present): the list grew while it was read; entries up to there were checked\n")
    if r.boot_aggregate is None:
        out.write("no boot_aggregate entry first: the list does not start at boot\n")
    # Values typed with --pcr are what the user expects, not what a TPM holds: never call them the TPM's.
    against = "TPM" if from_tpm else "expected (--pcr)"
    if want_replay:
        for bank, pcrs in r.pcrs.items():
            for index, value in sorted(pcrs.items()):
                have = tpm.get(bank, {}).get(index)
                verdict = "" if have is None else (f" = {against}" if have == value else f" != {against} {have.hex()}")
                out.write(f"PCR {index} {bank}: {value.hex()}{verdict}\n")
    n = _vouched(r) or 0
    what = f"the {r.count} whole entries of this list (not the bytes after them)" if r.truncated else "this list"
    if grown and from_tpm:
        out.write(f"the TPM vouches for the first {n} entries; {r.count - n} more were added after "
                  "PCR 10 was read (the list grew)\n")
        return
    if grown:
        out.write(f"the given PCR 10 values (--pcr) match the first {n} entries; the list has {r.count - n} more "
                  "that they do not cover (added after the values were taken)\n")
        return
    for m in mismatches:
        print(f"imaguard: {m if from_tpm else _given_mismatch(m)}", file=sys.stderr)
    if tpm and not mismatches:
        out.write(f"the TPM vouches for {what}: every compared PCR equals the replay\n" if from_tpm else
                  f"the given values (--pcr; no TPM was read) match {what}: every compared PCR equals the given "
                  "value\n")  # fmt: skip
    elif mismatches:
        out.write("the list does NOT match the TPM\n" if from_tpm else
                  "the list does NOT match the given PCR values (--pcr)\n")  # fmt: skip


def _given_mismatch(m: PcrMismatch) -> str:
    given = m.tpm.hex() if m.tpm is not None else "nothing"
    return f"PCR {m.pcr} {m.bank}: log replays to {m.replayed.hex()}, --pcr expects {given}"
