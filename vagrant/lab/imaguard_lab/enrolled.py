"""The *enrolled* lab image (issue 5 item 6): the lab rootfs labelled by ``imaguard enroll`` on the host.

Derived from the base image, never in place: the cached rootfs tree is copied (``cp -a``, a real
copy: labels live in inodes, and the base image must stay unlabelled for the ``appraise``
scenario), apt's signed lists from the build-time sidecar are put into the copy, and the real CLI
labels it::

    imaguard enroll --root COPY --source local:KEY --cert CERT --scope executables --no-fetch

The .debs debootstrap installed are handed to enroll through its state directory (``debs/``), so
every package's chain is InRelease (gpgv, this host's Debian keyring: never the tree's) -> Packages -> .deb ->
file: ``repo-verified``, no ``--unsafe-trust-dpkg-md5sums``. Then the lists are removed again and
``mkfs.ext4 -d`` (which keeps ``security.ima``) makes ``rootfs.img``.

Cache: ``enrolled-<key>/`` under ``cache_root()``, keyed by the base image key, the imaguard source
tree (``agent/imaguard``) and this file. The signing key is made once per enrolled image and kept
beside it; the guest gets only the certificate (``guest-keys/``). ``enroll.json`` is enroll's own
``--json -v`` output: every file with its outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import Image, apt_sidecar, build, make_ext4, rootfs_dir
from .labkeys import make_keys
from .recipe import PRUNE, PRUNE_MODULES, Recipe, cache_root

__all__ = ["Enrolled", "build_enrolled", "enrolled_key", "merged_usr", "pruned", "unexpected_refusals"]

REPO = Path(__file__).resolve().parents[3]
AGENT = REPO / "agent"
_KEEP_RECENT_S = 3 * 3600


@dataclass(frozen=True, slots=True)
class Enrolled:
    """An enrolled image, its certificate for the guest, and enroll's report."""

    image: Image

    @property
    def guest_keys(self) -> Path:
        """Only the certificate (DER and PEM): the signing key never enters the guest."""
        return self.image.directory / "guest-keys"

    @property
    def signing_key(self) -> Path:
        return self.image.directory / "keys" / "ima-rsa.key.pem"

    def report(self) -> dict[str, Any]:
        """``imaguard enroll --json -v``: summary, exit code, one entry per package file."""
        data: dict[str, Any] = json.loads((self.image.directory / "enroll.json").read_text())
        return data

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.image.directory / "build.json").read_text())
        return data


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def enrolled_key(base: Image) -> str:
    h = hashlib.sha256()
    h.update(base.key.encode())
    h.update(_tree_hash(AGENT / "imaguard").encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def merged_usr(path: str) -> str:
    """The path in a merged-/usr tree: dpkg lists ``/bin/ls`` and ``/lib/modules/…``; they live in /usr."""
    top, _, rest = path.lstrip("/").partition("/")
    return f"/usr/{top}/{rest}" if top in ("bin", "sbin", "lib", "lib64") else path


def pruned(path: str) -> bool:
    """Whether the build pruned ``path`` (an absolute path inside the guest) from the rootfs."""
    rel = merged_usr(path).lstrip("/")
    if any(rel == p or rel.startswith(p + "/") for p in PRUNE):
        return True
    parts = rel.split("/")
    # usr/lib/modules/<version>/<pruned subtree>/...
    if parts[:3] == ["usr", "lib", "modules"] and len(parts) > 4:
        sub = "/".join(parts[4:])
        return any(sub == p or sub.startswith(p + "/") for p in PRUNE_MODULES)
    return False


def unexpected_refusals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Refusals other than ``missing`` files the lab pruned on purpose (docs, unused modules)."""
    return [
        f
        for f in report["files"]
        if f["outcome"] == "refused" and not (f.get("reason") == "missing" and pruned(f["path"]))
    ]


def _python() -> str:
    # The project's venv when there is one (its cryptography and tqdm), else whoever runs the lab.
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _enroll(tree: Path, state: Path, key: Path, cert: Path, log: Path) -> tuple[dict[str, Any], float]:
    argv = [
        _python(), "-m", "imaguard.cli", "enroll", "--root", str(tree), "--source", f"local:{key}",
        "--cert", str(cert), "--scope", "executables", "--state-dir", str(state), "--no-fetch", "--json", "-v",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, check=False, env={**os.environ, "PYTHONPATH": str(AGENT), "LC_ALL": "C.UTF-8"}
    )
    seconds = time.monotonic() - start
    with log.open("ab") as out:
        out.write(("$ " + " ".join(argv) + f"\n(exit {proc.returncode}, {seconds:.1f} s)\n").encode() + proc.stderr)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"imaguard enroll exited {proc.returncode} without a JSON report:\n{tail}") from exc
    # Exit 1 is expected: the pruned files are refused as missing. Anything else refused is a failure.
    if proc.returncode not in (0, 1) or report.get("exit_code") != proc.returncode:
        raise RuntimeError(f"imaguard enroll exited {proc.returncode}; see {log}")
    return report, seconds


def _summarise(report: dict[str, Any]) -> dict[str, Any]:
    files = report["files"]
    by_outcome: dict[str, int] = {}
    for f in files:
        k = f"{f['outcome']}:{f.get('reason', '')}"
        by_outcome[k] = by_outcome.get(k, 0) + 1
    return {
        "files": len(files),
        "signed": by_outcome.get("signed:", 0),
        "packages_with_signed_files": len({f["package"] for f in files if f["outcome"] == "signed"}),
        "packages": len({f["package"] for f in files}),
        "outcomes": dict(sorted(by_outcome.items())),
        "refused_pruned_missing": sum(1 for f in files if f["outcome"] == "refused" and pruned(f["path"])),
        "unexpected_refusals": len(unexpected_refusals(report)),
    }


def build_enrolled(recipe: Recipe | None = None, *, force: bool = False) -> Enrolled:
    """Return the cached enrolled image for ``recipe``, making it (and the base image) if needed."""
    recipe = recipe or Recipe()
    base = build(recipe)
    key = enrolled_key(base)
    final = cache_root() / f"enrolled-{key}"
    if not force and (final / "build.json").is_file():
        return Enrolled(Image(final, key))
    total_start = time.monotonic()
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = tmp / "build.log"
    tree, state, sidecar = tmp / "tree", tmp / "state", apt_sidecar(recipe)
    if not (sidecar / "lists").is_dir():
        raise RuntimeError(f"{sidecar}/lists missing: the rootfs predates the apt sidecar; rebuild it")
    copy_start = time.monotonic()
    # cp -a: device nodes, hard links and xattrs as they are; a real copy, the rootfs stays unlabelled.
    subprocess.run(["cp", "-a", str(rootfs_dir(recipe)), str(tree)], check=True)
    lists = tree / "var/lib/apt/lists"
    shutil.copytree(sidecar / "lists", lists)
    (state / "debs").mkdir(parents=True)
    for deb in (sidecar / "archives").glob("*.deb"):
        os.link(deb, state / "debs" / deb.name)  # same filesystem: no copy of ~150 MB of .debs
    copy_s = time.monotonic() - copy_start
    keys = make_keys(tmp / "keys")
    (tmp / "guest-keys").mkdir()
    for cert in (keys.rsa_cert_der, keys.rsa_cert_pem):
        shutil.copy2(cert, tmp / "guest-keys" / cert.name)
    print(f"lab: imaguard enroll --root {tree} (local key, executables)", file=sys.stderr, flush=True)
    report, enroll_s = _enroll(tree, state, keys.rsa_key, keys.rsa_cert_der, log)
    (tmp / "enroll.json").write_text(json.dumps(report, indent=1) + "\n")
    bad = unexpected_refusals(report)
    if bad:
        lines = "\n".join(f"  {f['path']} [{f.get('reason')}] {f.get('detail', '')}" for f in bad[:30])
        raise RuntimeError(
            f"imaguard enroll refused {len(bad)} files the lab did not prune; {tmp}/enroll.json:\n{lines}"
        )
    shutil.rmtree(lists)  # the image carries no lists, like the base image
    mkfs_s = make_ext4(tree, tmp / "rootfs.img", recipe.image_mib, log)
    shutil.rmtree(tree)
    shutil.rmtree(state)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy2(base.directory / name, tmp / name)
    info = {
        "enrolled_key": key,
        "base_image_key": base.key,
        "copy_seconds": round(copy_s, 1),
        "enroll_seconds": round(enroll_s, 1),
        "mkfs_seconds": round(mkfs_s, 1),
        "total_seconds": round(time.monotonic() - total_start, 1),
        "image_allocated_bytes": (tmp / "rootfs.img").stat().st_blocks * 512,
        "enroll": _summarise(report),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    # Old enrolled images go (~500 MiB each; any change to agent/imaguard makes a new one), but not
    # one made in the last hours: a multi-boot run of another test session may still be booting from
    # it (each boot reopens the overlay's backing file).
    for old in cache_root().glob("enrolled-*"):
        if old != final and not old.name.endswith(".tmp") and time.time() - old.stat().st_mtime > _KEEP_RECENT_S:
            shutil.rmtree(old, ignore_errors=True)
    print(f"lab: enrolled image {key} ready: {json.dumps(info['enroll'])}", file=sys.stderr, flush=True)
    return Enrolled(Image(final, key))
