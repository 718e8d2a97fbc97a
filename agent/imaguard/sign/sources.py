"""Where enrollment gets a file's signature: ``vendor``, ``bundle:PATH_OR_URL`` or ``local:KEY``.

One interface (STYLE.md §4): given a package file whose content already matched its trusted
digest, return the ``security.ima`` value to write, or raise ``NoSignature`` with a reason code.
Every source checks the signature it hands out against the IMA certificate before it is written:
a value that the kernel would refuse is never put on a file. ``check`` is what a dry run asks: the
same skips and refusals as ``signature_for``, without making what it would not write.
"""

from __future__ import annotations

import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import serialization

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError, ImaguardError, TrustError, UsageError
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.keys.dsse import Envelope, verify_envelope
from imaguard.sign.bundle import BUNDLE_PAYLOAD_TYPE, Bundle, bundle_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaguard.keys.material import Certificate
    from imaguard.keys.signer import Signer, Verifier
    from imaguard.packages.model import InstalledPackage, PackageFile

__all__ = ["BundleSource", "LocalSource", "NoSignature", "SignatureSource", "VendorSource", "refuse_shared_key"]


def refuse_shared_key(authority: Sequence[Certificate], ima: Sequence[Certificate]) -> None:
    """UsageError ``shared-key`` when a bundle authority certificate has the public key of an IMA one.

    DSSE bundle signatures and IMA signatures are both RSA PKCS#1 v1.5 over SHA-256 (or both ECDSA):
    with one key, every bundle signature would also be a valid IMA signature, for a file whose
    content is the envelope's PAE bytes. The two roles need two keys.
    """
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ima_keys = {c.public_key.public_bytes(serialization.Encoding.DER, spki): c for c in ima}
    for auth in authority:
        same = ima_keys.get(auth.public_key.public_bytes(serialization.Encoding.DER, spki))
        if same is not None:
            raise UsageError(f"bundle authority certificate {auth.source} has the same public key as the IMA "
                             f"certificate {same.source}: a bundle signature would also be a valid IMA signature "
                             "(both sign SHA-256 with the same scheme), for a file whose content is the signed "
                             "envelope; use a separate key for the authority", reason="shared-key")  # fmt: skip

# A bundle lists one package version's files; anything larger is not a bundle.
_MAX_BUNDLE = 64 << 20
# (digest, signature) pairs remembered as verified: ~400 bytes each, a few MiB at most.
_MAX_VERIFIED = 8192


class NoSignature(ImaguardError):  # noqa: N818 - it is an outcome, named as the outcome
    """No signature to write for this file; ``refuse`` when that means an attack or damage."""

    def __init__(self, message: str, *, reason: str, refuse: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.refuse = refuse


class SignatureSource(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def verifier(self) -> Verifier:
        """The IMA certificates whose signatures the kernel will trust: an existing one is kept."""
        ...

    def signature_for(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> bytes: ...

    def check(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> None:
        """Raise the ``NoSignature`` that ``signature_for`` would (a dry run's plan), else return."""
        ...


@dataclass(slots=True)
class LocalSource:
    """``local:KEY``: sign the verified SHA-256 with a key on this host (weakest; said in reports)."""

    signer: Signer
    verifier: Verifier
    name: str = "local"
    _checked: bool = False  # one signature of this process verified (``check``)

    def check(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> None:
        # The key matches --cert and is not revoked (both refused when loaded): one verified
        # signature shows what every file would get; only a faulty signer fails per file, at random,
        # which no plan can foretell. Until one verifies, each file is tried like in a real run.
        if not self._checked:
            self.signature_for(pkg, pf, sha256)
            self._checked = True

    def signature_for(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> bytes:
        # The signer is a CheckedSigner (behind the memo): a signature --cert does not verify is refused.
        try:
            sig = self.signer.sign_digest(HashAlgo.SHA256, sha256)
        except TrustError as exc:
            raise NoSignature(f"{pkg.ident}: the local key's signature of {pf.path!r} does not verify: {exc}",
                              reason="local-signature-invalid", refuse=True) from exc  # fmt: skip
        return ImaSignature(HashAlgo.SHA256, self.signer.key_id, sig).to_xattr()


@dataclass(frozen=True, slots=True)
class VendorSource:
    """``vendor``: the per-file signature shipped in a verified RPM header, written as shipped."""

    verifier: Verifier
    name: str = "vendor"

    def signature_for(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> bytes:
        raw = pf.vendor_signature
        if raw is None or pf.digest is None or pf.digest_algo is None:
            raise NoSignature(f"{pkg.ident}: no vendor signature for {pf.path!r}", reason="no-vendor-signature")
        try:
            sig = parse_xattr(raw)
            if not isinstance(sig, ImaSignature) or sig.form != "sigv2" or sig.algo is not pf.digest_algo:
                raise FormatError(f"not a sig v2 over {pf.digest_algo.kernel_name}")
            self.verifier.verify_digest(sig.keyid, sig.algo, pf.digest, sig.signature)
        except (FormatError, TrustError) as exc:
            raise NoSignature(f"{pkg.ident}: vendor signature of {pf.path!r}: {exc}",
                              reason="vendor-signature-invalid", refuse=True) from exc
        return raw

    def check(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> None:
        self.signature_for(pkg, pf, sha256)  # parses and verifies what is already there: no cost to save


# A whole bundle must arrive within this time: the socket timeout alone bounds each read, so a
# server sending a byte every 29 s would hold enroll for ever (audit: slow-loris).
_FETCH_DEADLINE_S = 120.0
_SOCKET_TIMEOUT_S = 30.0


def _http_get(url: str) -> bytes:
    """GET ``url``: at most ``_MAX_BUNDLE + 1`` bytes, within ``_FETCH_DEADLINE_S``, following
    redirects only within the same scheme (https stays https; never to ftp: or file:). The bundle
    is authenticated by its DSSE signature either way; this keeps the transport the operator chose.
    Raises urllib's HTTPError/URLError or OSError (TimeoutError past the deadline)."""
    # Only HTTP bundle sources pay for urllib.request (http.client, email, ssl) at run time.
    import time  # noqa: PLC0415
    from urllib.error import URLError  # noqa: PLC0415
    from urllib.request import HTTPRedirectHandler, Request, build_opener  # noqa: PLC0415

    class SameScheme(HTTPRedirectHandler):
        def redirect_request(self, req: Request, fp: Any, code: int, msg: str, headers: Any,  # noqa: PLR0917 - urllib's signature
                             newurl: str) -> Request | None:  # fmt: skip
            scheme = urllib.parse.urlparse(req.full_url).scheme
            if urllib.parse.urlparse(newurl).scheme != scheme:
                raise URLError(f"redirect to {newurl} refused: it leaves {scheme}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    deadline = time.monotonic() + _FETCH_DEADLINE_S
    chunks: list[bytes] = []
    left = _MAX_BUNDLE + 1
    with build_opener(SameScheme).open(url, timeout=_SOCKET_TIMEOUT_S) as resp:
        while left > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not received within {_FETCH_DEADLINE_S:.0f} s")
            chunk = resp.read1(min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    return b"".join(chunks)


@dataclass(slots=True)
class BundleSource:
    """``bundle:PATH_OR_URL``: a directory or URL holding ``<name>_<version>_<arch>.bundle`` files."""

    location: str
    authority: tuple[Certificate, ...]
    verifier: Verifier
    name: str = "bundle"
    _cache: dict[str, Bundle | NoSignature] = field(default_factory=dict)
    _verified: set[tuple[bytes, bytes]] = field(default_factory=set)

    def __post_init__(self) -> None:
        refuse_shared_key(self.authority, self.verifier.certificates)

    def check_location(self) -> None:
        """UsageError unless the location is an http(s) URL or an existing directory: checked once,
        before enrollment, since a mistyped path would otherwise make every package ``no-bundle``."""
        directory = self._directory()
        if directory is None:
            return  # http(s): a server down now may be up for the first package; each fetch says so
        try:
            st = directory.stat()
        except OSError as exc:
            raise UsageError(f"bundle location {self.location!r}: {directory}: {exc.strerror}",
                             reason="bundle-location") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"bundle location {self.location!r}: {directory}: not a directory",
                             reason="bundle-location")

    def _directory(self) -> Path | None:
        """The local directory of the bundles, None for an http(s) URL; UsageError for another scheme."""
        parsed = urllib.parse.urlparse(self.location)
        if parsed.scheme in ("http", "https"):
            return None
        if parsed.scheme == "":
            return Path(self.location)
        if parsed.scheme == "file" and parsed.path:
            if parsed.netloc not in ("", "localhost"):  # file://HOST/... names another machine's file
                raise UsageError(f"bundle location {self.location!r}: a file URL of another host "
                                 f"({parsed.netloc}); use a local directory or an http(s) URL")
            return Path(parsed.path)
        raise UsageError(f"bundle location {self.location!r}: use a directory or an http(s) URL")

    def _fetch(self, file_name: str) -> bytes | None:
        directory = self._directory()
        if directory is None:
            from urllib.error import HTTPError, URLError  # noqa: PLC0415 - see _http_get

            url = self.location.rstrip("/") + "/" + file_name
            try:
                data: bytes = _http_get(url)
            except HTTPError as exc:
                if exc.code == 404:
                    return None
                raise NoSignature(f"{url}: HTTP {exc.code}", reason="bundle-unavailable") from exc
            except (URLError, OSError) as exc:
                raise NoSignature(f"{url}: {exc}", reason="bundle-unavailable") from exc
        else:
            path = directory / file_name
            try:
                with path.open("rb") as f:
                    data = f.read(_MAX_BUNDLE + 1)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise NoSignature(f"{path}: {exc.strerror}", reason="bundle-unavailable") from exc
        if len(data) > _MAX_BUNDLE:
            raise NoSignature(f"{file_name}: larger than {_MAX_BUNDLE} bytes", reason="bundle-untrusted", refuse=True)
        return data

    def _bundle(self, pkg: InstalledPackage) -> Bundle:
        cached = self._cache.get(pkg.ident)
        if cached is None:
            cached = self._load(pkg)
            self._cache.clear()  # packages come one after another: keep only the current one
            self._cache[pkg.ident] = cached
        if isinstance(cached, NoSignature):
            raise cached
        return cached

    def _load(self, pkg: InstalledPackage) -> Bundle | NoSignature:
        file_name = bundle_name(pkg)
        try:
            data = self._fetch(file_name)
            if data is None:
                return NoSignature(f"{pkg.ident}: no bundle {file_name}", reason="no-bundle")
            env = Envelope.from_json(data, file_name)
            bundle = Bundle.from_payload(verify_envelope(env, BUNDLE_PAYLOAD_TYPE, self.authority, file_name),
                                         file_name)
        except NoSignature as exc:
            return exc
        except (FormatError, TrustError) as exc:
            return NoSignature(str(exc), reason="bundle-untrusted", refuse=True)
        if not bundle.matches(pkg):
            return NoSignature(f"{file_name}: bundle is for {bundle.name}={bundle.version}/{bundle.architecture}",
                               reason="bundle-untrusted", refuse=True)
        return bundle

    def check(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> None:
        self.signature_for(pkg, pf, sha256)  # fetch, DSSE and IMA verification: all can skip or refuse

    def signature_for(self, pkg: InstalledPackage, pf: PackageFile, sha256: bytes) -> bytes:
        try:
            entry = self._bundle(pkg).entry(pf.path)
        except FormatError as exc:
            raise NoSignature(f"{pkg.ident}: {exc}", reason="bundle-untrusted", refuse=True) from exc
        if entry is None:
            raise NoSignature(f"{pkg.ident}: {pf.path!r} is not in the bundle", reason="not-in-bundle")
        if entry.sha256 != sha256:
            raise NoSignature(f"{pkg.ident}: {pf.path!r}: bundle digest differs from the package's",
                              reason="bundle-digest-mismatch", refuse=True)
        sig = entry.signature
        try:
            if sig.form != "sigv2":
                raise FormatError(f"bundle signature is {sig.form}")
            if sig.algo is not HashAlgo.SHA256:
                raise FormatError(f"bundle signature over {sig.algo.kernel_name}, expected sha256")
            value = sig.to_xattr()
            # Identical files share (digest, signature): verify each pair once per process.
            if (sha256, value) not in self._verified:
                self.verifier.verify_digest(sig.keyid, sig.algo, sha256, sig.signature)
                if len(self._verified) >= _MAX_VERIFIED:
                    self._verified.clear()
                self._verified.add((sha256, value))
        except (FormatError, TrustError) as exc:
            raise NoSignature(f"{pkg.ident}: {pf.path!r}: {exc}", reason="bundle-signature-invalid",
                              refuse=True) from exc
        return value
