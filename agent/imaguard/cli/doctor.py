"""``imaguard doctor``: what this host supports for IMA and what is missing, each with a reason."""

from __future__ import annotations

import argparse
import json
import sys

from imaguard.errors import ExitCode
from imaguard.ima import probe
from imaguard.ima.doctor import Check, Status, diagnose
from imaguard.ima.hostfacts import XattrSupport

__all__ = ["register"]

_HELP = """\
Report what this host's kernel offers IMA and what is missing, each line with its reason:

  ima          IMA compiled in (/sys/kernel/security/ima, CONFIG_IMA in /boot/config-RELEASE
               or /proc/config.gz)
  appraisal    CONFIG_IMA_APPRAISE (can deny), CONFIG_IMA_APPRAISE_BOOTPARAM (ima_appraise=log works)
  securityfs   mounted at /sys/kernel/security, or at least known to the kernel
  policy       /sys/kernel/security/ima/policy present (writable: no custom policy loaded
               this boot) or gone (loaded; without CONFIG_IMA_WRITE_POLICY the next takes a reboot)
  keyring      which keyring the kernel verifies against: '_ima' (made by root, any key) or the
               restricted '.ima' (CONFIG_INTEGRITY_TRUSTED_KEYRING: only keys a system key signed)
  ecdsa        whether EC certificates can be loaded (/proc/crypto, CONFIG_CRYPTO_ECDSA)
  tpm          /dev/tpm* (measurements anchored in PCR 10)
  stage        the policy loaded this boot and ima_appraise= on /proc/cmdline, and the stage of
               /etc/ima/ima-policy that the next boot loads
  xattr:MOUNT  whether each mounted filesystem can hold security.ima (getxattr on its root:
               ENODATA = yes, EOPNOTSUPP = no); pseudo, network and FUSE filesystems are not touched

Statuses: ok, missing, warning, info, unknown. doctor only reads: it mounts, writes, links and
loads nothing, so it is safe on any host, including one without IMA.

Exit status: 0 whatever the host supports (doctor reports, it does not judge); 2 usage error;
1 if doctor itself failed.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="what this host supports for IMA, and what is missing",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-xattr-probe", action="store_true",
                   help="do not call getxattr on the root of each mounted filesystem")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.set_defaults(handler=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    facts = probe.read_kernel_facts(with_xattrs=not args.no_xattr_probe)
    checks = diagnose(facts)
    if args.json:
        doc = {
            "command": "doctor",
            "kernel": facts.release,
            "config": facts.config.source if facts.config is not None else None,
            "checks": [{"id": c.id, "status": c.status.value, "summary": c.summary, "reason": c.reason}
                       for c in checks],
            "exit_code": int(ExitCode.OK),
        }  # fmt: skip
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return ExitCode.OK
    print(f"kernel: {facts.release} (config: {facts.config.source if facts.config is not None else 'not found'})")
    skipped = [p for p in facts.xattrs if p.support is XattrSupport.NOT_PROBED]
    for check in checks:
        if check.id.startswith("xattr:") and check.status is Status.INFO:
            continue  # the not-probed mounts, in one line below
        print(_line(check))
    if skipped:
        print(f"{'info':8} xattr: not probed (pseudo, network or FUSE): {', '.join(p.mountpoint for p in skipped)}")
    return ExitCode.OK


def _line(check: Check) -> str:
    mark = {Status.OK: "ok", Status.MISSING: "MISSING", Status.WARNING: "WARNING", Status.INFO: "info",
            Status.UNKNOWN: "unknown"}[check.status]  # fmt: skip
    return f"{mark:8} {check.summary} ({check.reason})"
