"""``vagrant/lab/lab``: build the image, run a scenario, capture fixtures, show the demo."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .build import build, find_image
from .enrolled import build_enrolled, enrolled_key
from .hosttools import ensure_host_tools
from .recipe import Recipe, cache_root
from .runner import DEFAULT_CMDLINE, REPO, RunResult, RunSpec, run

__all__ = ["main"]

SCENARIOS = {"appraise": "appraise.py", "enforce": "enforce_enrolled.py", "measure-log": "measure_log.py"}
MUTATIONS: dict[str, tuple[str, ...]] = {"appraise": ("skip-sign",), "enforce": ("skip-enroll",), "measure-log": ()}
CAPTURE_DIR = REPO / "tests" / "data" / "lab"
CAPTURE_FILES = (
    "binary_runtime_measurements",
    "ascii_runtime_measurements",
    "pcr10.json",
    "policy.txt",
    "kernel.txt",
    "ima-rsa.cert.der",
    "ima-ec-p256.cert.der",
)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _spec(args: argparse.Namespace, entry: str, params: dict[str, object]) -> RunSpec:
    cmdline = tuple(args.cmdline) if args.cmdline else DEFAULT_CMDLINE
    return RunSpec(entry=entry, params=params, cmdline=cmdline, timeout_s=args.timeout, accel=args.accel)


def _boot(args: argparse.Namespace, scenario: str, params: dict[str, object]) -> RunResult:
    ensure_host_tools(install=bool(getattr(args, "install", False)))
    image, keys_dir = build(), None
    if scenario == "enforce":
        enrolled = build_enrolled()
        keys_dir = enrolled.guest_keys
        # skip-enroll: the same certificate and policy on the unenrolled base image
        if params.get("mutation") != "skip-enroll":
            image = enrolled.image
    spec = _spec(args, SCENARIOS[scenario], params)
    _say(f"lab: booting {scenario} (image {image.key}, accel {spec.accel}, cmdline {' '.join(spec.cmdline)})")
    result = run(spec, image, keys_dir=keys_dir)
    _say(f"lab: {scenario} finished in {result.wall_s:.0f} s, guest status {result.status}; run dir {result.run_dir}")
    problem = result.problem()
    if problem:
        _say(problem)
    return result


def cmd_build(args: argparse.Namespace) -> int:
    ensure_host_tools(install=args.install)
    start = time.monotonic()
    cached = find_image(Recipe())
    image = build(force=args.force)
    state = "cached" if cached and not args.force else f"built in {time.monotonic() - start:.0f} s"
    _say(f"image {image.key} ({state}) in {image.directory}")
    _say(json.dumps(image.info(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    params: dict[str, object] = {}
    if args.mutation and args.mutation not in MUTATIONS[args.scenario]:
        raise RuntimeError(f"scenario {args.scenario} has the mutations {', '.join(MUTATIONS[args.scenario])}")
    if args.mutation:
        params["mutation"] = args.mutation
    result = _boot(args, args.scenario, params)
    for rec in result.results:
        _say(json.dumps(rec, sort_keys=True))
    return 0 if result.status == 0 and not result.problem() else 1


def cmd_capture(args: argparse.Namespace) -> int:
    result = _boot(args, args.scenario, {})
    if result.problem() or result.out_dir is None:
        return 1
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for name in CAPTURE_FILES:
        src = result.out_dir / "artifacts" / name
        # measure-log loads no keys: it has no certificates to copy
        if args.scenario == "appraise" or src.exists() or not name.endswith(".der"):
            shutil.copy2(src, dest / name)
            copied += 1
    checks = result.checks()
    (dest / "capture.json").write_text(
        json.dumps(
            {
                "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "image_key": build().key,
                "kernel": checks["start"]["kernel"],
                "cmdline": " ".join(DEFAULT_CMDLINE if not args.cmdline else args.cmdline),
                "pcr10": checks["measurements"].get("pcr10"),
                "log_stable_around_pcr_read": checks["measurements"].get("log_stable"),
                "signed_file_xattr": checks.get("xattrs-after-sign", {}).get("signed-echo"),
                "scenario": args.scenario,
                "violations": checks["measurements"].get("violations"),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    _say(f"lab: captured {copied} files into {dest}")
    return 0


def _story(result: RunResult) -> list[tuple[bool, str]]:
    c = result.checks()
    lines: list[tuple[bool, str]] = []
    start = c.get("start", {})
    lines.append((bool(start), f"guest up: Debian kernel {start.get('kernel', '?')}, IMA on, swtpm TPM 2.0 attached"))
    k = c.get("keyring-load-rsa", {})
    lines.append(
        (bool(k.get("linked")), f"keys: RSA-2048 cert loaded into the _ima keyring as key {k.get('key', '?')}")
    )
    e = c.get("ec-cert-precheck", {})
    lines.append((bool(e.get("refused")), f"keys: EC P-256 cert refused: {str(e.get('message', '?'))[:90]}…"))
    s = c.get("imaguard-sign", {})
    lines.append(
        (s.get("rc") == 0, "sign: `imaguard sign` wrote security.ima (sig v2, RSA) on a copy of /usr/bin/echo")
    )
    p = c.get("policy-load", {})
    lines.append(
        (p.get("written") == 3, "policy: appraise func=BPRM_CHECK fowner=4242 appraise_type=imasig (+ measure)")
    )
    audit = c.get("audit", {}).get("type1800", [])
    for name, want_refused, label in (
        ("exec-signed", False, "signed copy"),
        ("exec-unsigned", True, "unsigned copy"),
        ("exec-tampered", True, "signed copy with one byte changed"),
    ):
        x = c.get(name, {})
        causes = [
            ln.split("cause=")[1].split()[0] for ln in audit if f'name="{x.get("path")}"' in ln and "cause=" in ln
        ]
        if x.get("refused"):
            got = f"refused, EACCES (audit: cause={','.join(causes) or '?'})"
        else:
            got = f"ran (exit {x.get('rc')}, printed {x.get('stdout')!r})"
        lines.append((bool(x) and bool(x.get("refused")) == want_refused, f"exec: {label}: {got}"))
    a = c.get("audit", {})
    lines.append(
        (bool(a.get("type1800")), f"audit: {len(a.get('type1800', []))} type=1800 record(s) name the refused files")
    )
    m = c.get("measurements", {})
    pcr = m.get("pcr10", {}).get("sha256", "?")
    lines.append((pcr not in ("?", "0" * 64), f"log: ima-sig entries recorded; TPM PCR 10 (sha256) = {pcr[:16]}…"))
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    _say("imaguard lab demo: a real IMA kernel (Debian 12) under QEMU, enforcing imaguard's signatures.")
    cached = find_image(Recipe())
    _say("   image: " + ("cached" if cached else "building (debootstrap takes ~3 min the first time)…"))
    result = _boot(args, "appraise", {})
    ok_all = result.problem() is None
    for ok, line in _story(result):
        ok_all &= ok
        _say(f"   {'✔' if ok else '✘'} {line}")
    if args.enforce:
        _say("   enforce: the whole image enrolled by `imaguard enroll`, every root exec and exec-mmap appraised")
        enforce = _boot(args, "enforce", {})
        ok_all &= enforce.problem() is None
        for ok, line in _enforce_story(enforce, build_enrolled().info()):
            ok_all &= ok
            _say(f"   {'✔' if ok else '✘'} {line}")
    _say("demo " + ("succeeded: the kernel ran what imaguard signed and refused the rest." if ok_all else "FAILED"))
    return 0 if ok_all else 1


def _enforce_story(result: RunResult, info: dict[str, Any]) -> list[tuple[bool, str]]:
    c = result.checks()
    e = info.get("enroll", {})
    lines = [
        (
            e.get("unexpected_refusals") == 0,
            f"enroll: {e.get('signed', '?')} package files signed (repo-verified chain, local key) in "
            f"{info.get('enroll_seconds', '?')} s; only pruned files refused",
        ),
        (c.get("policy-load", {}).get("written") == 5, "policy: appraise BPRM_CHECK + MMAP_CHECK MAY_EXEC, uid=0"),
    ]
    for name in ("ls", "python3", "apt-get", "dpkg", "systemctl"):
        x = c.get(f"run-{name}", {})
        note = "; PID 1 is not systemd, as expected" if name == "systemctl" else ""
        lines.append(
            (bool(x.get("started")), f"runs: {' '.join(x.get('argv', [name]))[:60]} (exit {x.get('rc')}{note})")
        )
    for name, label in (
        ("exec-tampered-copy", "package binary with one byte changed"),
        ("exec-unpackaged-script", "unpackaged script"),
        ("exec-unlabelled-copy", "unlabelled binary"),
    ):
        x = c.get(name, {})
        lines.append((x.get("errno") == errno.EACCES, f"refused: {label}: errno {x.get('errno')}"))
    m = c.get("mmap-unlabelled-lib", {})
    lines.append(
        (
            m.get("mmap_errno") == errno.EACCES,
            f"refused: mmap PROT_EXEC of an unlabelled .so: errno {m.get('mmap_errno')}",
        )
    )
    return lines


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove run directories and every image and rootfs but the current recipe's."""
    recipe = Recipe()
    keep = {recipe.image_key(), "rootfs", "accel-probe.json"}
    base = find_image(recipe)
    if base is not None:
        keep.add(f"enrolled-{enrolled_key(base)}")
    root = cache_root()
    removed = 0
    for path in sorted(root.glob("*")) if root.is_dir() else []:
        if path.name in keep:
            continue
        _remove(path)
        removed += 1
    for path in sorted((root / "rootfs").glob("*")) if (root / "rootfs").is_dir() else []:
        if not path.name.startswith(recipe.rootfs_key()):
            _remove(path)
            removed += 1
    _say(f"lab: removed {removed} stale entries from {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description=__doc__)
    parser.add_argument("--timeout", type=int, default=300, help="guest script timeout in seconds")
    parser.add_argument(
        "--accel",
        choices=("tcg", "kvm", "auto"),
        default="auto",
        help="auto: KVM if a probe boot proves it works (answer cached), else TCG",
    )
    parser.add_argument("--cmdline", action="append", help="kernel parameter (repeat); replaces the IMA defaults")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build or reuse the cached image")
    p.add_argument("--force", action="store_true", help="rebuild the image (not the debootstrap rootfs)")
    p.add_argument("--install", action="store_true", help="apt-get install missing host tools first")
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("run", help="boot one scenario and print its result records")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument(
        "--mutation",
        choices=sorted({m for ms in MUTATIONS.values() for m in ms}),
        help="test-only: break the scenario on purpose (appraise: skip-sign; enforce: skip-enroll)",
    )
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("capture", help="refresh tests/data/lab from a real run")
    p.add_argument("--dest", default=str(CAPTURE_DIR))
    p.add_argument("--scenario", default="appraise", choices=("appraise", "measure-log"),
                   help="appraise: keys, signatures, ima-buf (default); measure-log: the kernel's template, "
                        "a name with spaces and a violation")
    p.set_defaults(fn=cmd_capture)
    p = sub.add_parser("demo", help="the end-to-end story, in a few lines per step")
    p.add_argument("--no-install", dest="install", action="store_false", help="do not apt-get missing host tools")
    p.add_argument("--enforce", action="store_true", help="then the enrolled image under an enforcing policy (~1 min)")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("gc", help="remove old runs, images and rootfs trees from the cache")
    p.set_defaults(fn=cmd_gc)
    p = sub.add_parser("cache-dir", help="print the cache directory")
    p.set_defaults(fn=lambda _a: print(cache_root()) or 0)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (RuntimeError, OSError) as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
