"""Ask Keylime's own IMA code what it makes of an ASCII measurement list (an independent peer).

Run with the peer virtualenv (scripts/setup.sh makes it; PyPI keylime, never imported by imaguard):

    .venv-peer/bin/python tests/peer/keylime_ima.py LOG [--policy POLICY.json] [--bank sha1 --bank sha256]
        [--pcr sha256:HEX ...]

It calls ``keylime.ima.ima.process_measurement_list`` once per bank the way Keylime's verifier
does (tenant keys from the policy's ``verification-keys`` as the tenant keyring, keys learned
from ``ima-buf`` KEY_CHECK entries), and prints one JSON document:

    {"keylime": "7.14.3", "entries": 6, "pcr10": {"sha1": "…", "sha256": "…"},
     "pcr_match": {"sha256": true}, "verdict": "accept" | "reject",
     "failures": [{"id": "ima.validation.ima-ng.not_in_allowlist", "context": {...}}, ...],
     "seconds": {"sha1": 0.01, "sha256": 0.01}, "cpu_seconds": {"sha1": 0.01, "sha256": 0.01}}

``seconds``/``cpu_seconds``: wall and CPU time of each bank's ``process_measurement_list`` call
(parsing included; reading the file and importing Keylime excluded).

``verdict`` is ``reject`` when any bank's run reported a failure event or a given PCR value was
not reached. Exit status: 0 accept, 3 reject, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib import metadata
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="keylime_ima.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="ascii_runtime_measurements (a file, or - for stdin)")
    p.add_argument("--policy", help="Keylime runtime policy JSON (version 1); without it only the replay runs")
    p.add_argument("--bank", action="append", choices=("sha1", "sha256", "sha384", "sha512"),
                   help="PCR bank(s) to replay (default: sha1 and sha256)")
    p.add_argument("--pcr", action="append", default=[], metavar="BANK:HEX",
                   help="TPM value of PCR 10 for a bank: Keylime then checks the log reaches it")
    p.add_argument("--verbose", action="store_true", help="keep Keylime's own log messages (stderr)")
    args = p.parse_args(argv)
    banks = args.bank or ["sha1", "sha256"]
    pcrs: dict[str, str] = {}
    for item in args.pcr:
        bank, sep, value = item.partition(":")
        if not sep or bank not in ("sha1", "sha256", "sha384", "sha512"):
            p.error(f"--pcr {item!r}: expected BANK:HEX")
        pcrs[bank] = value.lower()
    if not args.verbose:
        logging.disable(logging.CRITICAL)  # Keylime logs a warning per unmatched file

    # Imported here: Keylime reads its configuration at import and prints a notice without one.
    from keylime.common.algorithms import Hash  # noqa: PLC0415
    from keylime.ima import ima  # noqa: PLC0415
    from keylime.ima.file_signatures import ImaKeyring, ImaKeyrings  # noqa: PLC0415

    text = sys.stdin.read() if args.log == "-" else Path(args.log).read_text(encoding="utf-8", errors="surrogateescape")
    lines = text.splitlines(keepends=True)
    policy = None
    if args.policy:
        policy = ima.deserialize_runtime_policy(Path(args.policy).read_text(encoding="utf-8"))
    out: dict[str, object] = {"keylime": metadata.version("keylime"), "entries": sum(1 for ln in lines if ln.strip("\n"))}
    pcr10: dict[str, str] = {}
    match: dict[str, bool] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    failures: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    for bank in banks:
        # No policy: replay only (Keylime then checks no signatures); with one, keys as the verifier has them.
        keyrings = None if policy is None else ImaKeyrings()
        if keyrings is not None and policy is not None:
            keyrings.set_tenant_keyring(ImaKeyring.from_string(policy.get("verification-keys") or ""))
        t0, c0 = time.perf_counter(), time.process_time()
        running, failure = ima.process_measurement_list(
            None, lines, runtime_policy=policy, pcrval=pcrs.get(bank), ima_keyrings=keyrings, hash_alg=Hash(bank)
        )
        seconds[bank] = round(time.perf_counter() - t0, 6)
        cpu[bank] = round(time.process_time() - c0, 6)
        pcr10[bank] = running
        if bank in pcrs:
            match[bank] = running == pcrs[bank]
        for event in failure.events:
            key = (event.event_id, event.context)
            if key not in seen:
                seen.add(key)
                failures.append({"id": event.event_id, "context": json.loads(event.context)})
    out.update(pcr10=pcr10, pcr_match=match, failures=failures, seconds=seconds, cpu_seconds=cpu)
    out["verdict"] = "reject" if failures or not all(match.values()) else "accept"
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if out["verdict"] == "accept" else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
