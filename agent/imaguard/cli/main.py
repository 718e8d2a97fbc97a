"""``imaguard`` entry point: parse arguments, dispatch, catch once, map to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from imaguard import __version__
from imaguard.errors import ExitCode, ImaguardError
from imaguard.interrupts import signals_interrupt
from imaguard.shown import one_line

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Parser", "build_parser", "entry", "main", "run_guarded"]

_DESCRIPTION = """\
imaguard labels files with IMA signatures that only trusted package metadata vouches for,
manages IMA keys and policy, and reports the kernel's measurement log.

exit codes: 0 ok, 1 failure, 2 usage error, 3 verification failed, 77 unsupported here.
"""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns every exit code and message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--unsafe` must not stand for an --unsafe-… option, and `--js` must not
        # give JSON on success but a text error (run_guarded looks for the literal `--json`).
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # "imaguard sign: …" names the subcommand; the bare program name is already in the prefix.
        where = "" if self.prog == "imaguard" else f"{self.prog}: "
        raise ImaguardError(f"{where}{message}") from None


# Command -> the module that registers it. Only the module of the command being run is imported:
# importing every command (cryptography.x509, urllib, the policy grammar) costs more start-up
# time than `imaguard hash` spends hashing a typical tree.
_COMMANDS = {
    "sign": "files", "verify": "files", "hash": "files",
    "packages": "packages", "enroll": "enroll", "policy": "policy", "keys": "keys", "doctor": "doctor",
    "report": "report", "log": "log",
}
_ORDER = ("files", "packages", "enroll", "policy", "keys", "doctor", "report", "log")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``argv`` naming a command, one holding just that command's module."""
    parser = Parser(
        prog="imaguard",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imaguard {__version__}")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser
    )
    sub.required = True
    first = next((a for a in argv or () if not a.startswith("-")), None)
    names = (_COMMANDS[first],) if first in _COMMANDS else _ORDER
    for name in names:
        importlib.import_module(f"imaguard.cli.{name}").register(sub)
    return parser


def _common_flags(argv: Sequence[str]) -> tuple[bool, bool]:
    return "--json" in argv, "--verbose" in argv or "-v" in argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Tests call this with an argv list."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_guarded(build_parser(args), args)


def run_guarded(parser: argparse.ArgumentParser, args_list: list[str]) -> int:
    """Parse and dispatch to ``args.handler``; every ImaguardError becomes one line and its exit code.

    SIGTERM, SIGHUP and SIGQUIT act as Ctrl-C for all of it (``imaguard.interrupts``): every
    writer's cleanup runs (a temp file beside a key, half a set of files), and the exit is 130."""
    try:
        with signals_interrupt():
            return _run(parser, args_list)
    except KeyboardInterrupt:  # one that arrived while an error was being reported
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def _run(parser: argparse.ArgumentParser, args_list: list[str]) -> int:
    want_json, verbose = _common_flags(args_list)
    prog = parser.prog  # "imaguard" or "imaguard-keyring": the user sees which tool failed
    try:
        try:
            args = parser.parse_args(args_list)
        except ImaguardError as exc:
            _report(prog, str(exc), "usage", want_json)
            return ExitCode.USAGE
        code: int = args.handler(args)
    except ImaguardError as exc:
        if verbose:
            import traceback  # noqa: PLC0415 - only for a bug's report

            traceback.print_exc()
        _report(prog, str(exc), exc.reason, want_json)
        return exc.exit_code
    except KeyboardInterrupt:
        _report(prog, "interrupted", "interrupted", want_json, label="")
        return 130
    except BrokenPipeError:
        # `imaguard … | head`: the reader left. Stop (a `sign -r … | head` must not go on unseen) and
        # say so once on stderr, since exit 1 alone hides that the work was cut short; what was done
        # before the write that failed stands (a `ca create` prints only after writing its files).
        _silence_stdout()
        print(f"{prog}: stopped: the output was closed (broken pipe); what was done before that stands",
              file=sys.stderr)
        return ExitCode.FAILURE
    except OSError as exc:
        # An OS error no command turned into an ImaguardError (a path too long for a stat, EIO):
        # still one line naming the file, not a traceback (audit).
        if verbose:
            import traceback  # noqa: PLC0415 - only for a bug's report

            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _report(prog, f"{where}{exc.strerror or exc}", "os-error", want_json)
        return ExitCode.FAILURE
    return code


def _silence_stdout() -> None:
    """Point the dead stdout at /dev/null, so that nothing (not the interpreter's exit) writes it again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _report(prog: str, message: str, reason: str, want_json: bool, *, label: str = "error: ") -> None:
    if want_json:
        try:
            print(json.dumps({"error": {"reason": reason, "message": message}}), flush=True)
        except BrokenPipeError:  # `… --json | true`: the error line below still reaches the user
            _silence_stdout()
    print(f"{prog}: {label}{one_line(message)}", file=sys.stderr)


def entry() -> None:
    sys.exit(main())
