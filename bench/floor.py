"""The least time any Python implementation of a benchmark's job can take on this machine.

The floor is a bare start-up plus the shortest loop that does what the issue requires, run on
every core of the machine over the same files, timed by the wall clock.

A benchmark's *ceiling* is the reference tool's time divided by this floor: no amount of tuning
imaguard's own code can beat it, so a target above the ceiling is out of reach here, and a target
near it needs imaguard to do nothing per file beyond what the issue requires. Used by
bench/sign_vs_evmctl and bench/enroll (and, for its start-up, bench/log_parse).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IMA_XATTR = "security.ima"
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True, slots=True)
class Loop:
    """One timed run of the minimal loop over ``sampled`` files on ``cores`` processes."""

    wall_s: float
    per_file_ms: float  # CPU per file in the first process, of which:
    hash_ms: float  # read + sha256
    sign_ms: float  # signing (0 when the job does not sign)
    cores: int
    sampled: int


@dataclass(frozen=True, slots=True)
class Floor:
    """``startup_s`` + the minimal loop's wall time on every core, scaled to all ``files``."""

    startup_s: float  # bare_startup: what any Python implementation starts with
    own_startup_s: float  # imaguard's own start-up, for comparison (not in the floor)
    loop: Loop
    files: int

    @property
    def wall_s(self) -> float:
        return self.startup_s + self.loop.wall_s * self.files / self.loop.sampled

    def to_json(self) -> dict[str, object]:
        lp = self.loop
        return {"startup_s": round(self.startup_s, 4), "imaguard_startup_s": round(self.own_startup_s, 4),
                "loop_wall_s": round(lp.wall_s, 4), "cores": lp.cores, "files_sampled": lp.sampled,
                "per_file_ms": round(lp.per_file_ms, 4), "hash_ms": round(lp.hash_ms, 4),
                "sign_ms": round(lp.sign_ms, 4),
                "syscalls_and_python_ms": round(lp.per_file_ms - lp.hash_ms - lp.sign_ms, 4),
                "wall_s": round(self.wall_s, 4)}

    def line(self) -> str:
        j = self.to_json()
        scaled = "" if self.loop.sampled == self.files else f" x {self.files}/{self.loop.sampled} files"
        return (f"{j['startup_s']:.3f} s start-up (imaguard's own: {j['imaguard_startup_s']:.3f} s) + "
                f"{j['loop_wall_s']:.3f} s loop on {self.loop.cores} cores{scaled} = {j['wall_s']:.3f} s;"
                f" per file {j['per_file_ms']:.4f} ms CPU (read+hash {j['hash_ms']:.4f}, sign {j['sign_ms']:.4f},"
                f" syscalls {j['syscalls_and_python_ms']:.4f})")


def best_wall(argv: list[str], runs: int = 5) -> float:
    """The shortest wall time of ``runs`` runs of ``argv`` (start-up: the least it can take)."""
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def bare_startup(*, crypto: bool, key: Path | None = None) -> float:
    """What any Python implementation spends before its first file: this interpreter's start-up,
    importing hashlib and, when it verifies or signs, cryptography, and loading ``key`` (OpenSSL
    checks an RSA key's consistency on load). Best of 5."""
    code = "import hashlib\n"
    if crypto:
        code += "import sys\nfrom cryptography.hazmat.primitives import serialization\n"
    if key is not None:
        code += "with open(sys.argv[1], 'rb') as f:\n    serialization.load_pem_private_key(f.read(), None)\n"
    return best_wall([sys.executable, "-c", code, *([str(key)] if key is not None else [])])


def signer_for(key_pem: bytes) -> Callable[[bytes], bytes]:
    """Sign a SHA-256 digest with the PEM key, as IMA wants it (RSA PKCS#1 v1.5 or ECDSA)."""
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - only when signing
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils  # noqa: PLC0415

    key = serialization.load_pem_private_key(key_pem, None)
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key, pkcs1 = key, padding.PKCS1v15()
        return lambda digest: rsa_key.sign(digest, pkcs1, prehashed)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ec_key, ecdsa = key, ec.ECDSA(prehashed)
        return lambda digest: ec_key.sign(digest, ecdsa)
    raise ValueError("unexpected key type")


def sample(files: list[str] | tuple[str, ...], k: int) -> list[str]:
    """At most ``k`` files, evenly spaced over the list; all of them when ``k`` is 0."""
    if k <= 0 or k >= len(files):
        return list(files)
    step = max(1, len(files) // k)
    return list(files[::step][:k])


def label_loop(files: list[str], sign: Callable[[bytes], bytes] | None) -> tuple[float, float, float]:
    """Time the shortest loop that labels files as issue 2 requires; (per file, hash, sign) in ms.

    Per file: open (O_NOFOLLOW|O_NONBLOCK), fstat, read the old security.ima, read + sha256, sign
    (each distinct digest once, as imaguard's memo does) or, with ``sign`` None, take a signature
    of the usual size as given (a bundle), fstat, fsetxattr, read back, fstat, close. No result
    objects, no error handling, no progress, no output. Leaves security.ima on every file: callers
    clear it.
    """
    sha256, preadv, getxattr, setxattr, fstat, clock = (
        hashlib.sha256, os.preadv, os.getxattr, os.setxattr, os.fstat, time.perf_counter)
    given = bytes(256)
    memo: dict[bytes, bytes] = {}
    t_hash = t_sign = 0.0
    t0 = clock()
    for path in files:
        fd = os.open(path, _OPEN)
        st = fstat(fd)
        with contextlib.suppress(OSError):
            getxattr(fd, IMA_XATTR)
        t1 = clock()
        buf = memoryview(bytearray(st.st_size + 1))
        h = sha256()
        h.update(buf[: preadv(fd, [buf], 0)])
        digest = h.digest()
        t2 = clock()
        sig = given if sign is None else (memo.get(digest) or memo.setdefault(digest, sign(digest)))
        t3 = clock()
        t_hash += t2 - t1
        t_sign += t3 - t2
        fstat(fd)
        setxattr(fd, IMA_XATTR, b"\x03\x02\x04" + bytes(4) + len(sig).to_bytes(2, "big") + sig)
        getxattr(fd, IMA_XATTR)
        fstat(fd)
        os.close(fd)
    total = clock() - t0
    per = 1000 / max(1, len(files))
    return total * per, t_hash * per, t_sign * per


def label_loop_on_cores(files: list[str], sign: Callable[[bytes], bytes] | None, cores: int, chunk: int = 32) -> Loop:
    """``label_loop`` over ``files`` split across ``cores`` forked processes, timed by the wall
    clock: what the machine really gives busy cores (shared caches, memory bandwidth, clock), not
    one core's time divided. Process k takes chunks k, k + cores, … of ``chunk`` consecutive files,
    the access pattern of imaguard's pool (sign/parallel.py)."""
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]

    def share(k: int) -> list[str]:
        return [path for part in chunks[k::cores] for path in part]

    t0 = time.perf_counter()
    pids = []
    for k in range(1, cores):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                label_loop(share(k), sign)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    per_file, hash_ms, sign_ms = label_loop(share(0), sign)
    failed = [pid for pid in pids if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    if failed:
        raise RuntimeError(f"floor loop: {len(failed)} worker process(es) failed")
    return Loop(time.perf_counter() - t0, per_file, hash_ms, sign_ms, cores, len(files))
