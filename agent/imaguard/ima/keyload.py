"""Decide, before touching the kernel, whether and where certificates may be loaded (pure).

``imaguard keys load`` asks :func:`plan_load` first; only an accepted plan reaches ``add_key(2)``.
Refusals, each with a stable reason code:

- ``ca-certificate``: a CA (keyCertSign, or CA:TRUE without digitalSignature). IMA verifies file signatures
  with the signing certificate's key; a CA in ``_ima`` verifies nothing and widens trust, and a
  restricted ``.ima`` keyring refuses it (Linux >= 6.4, ``restrict_link_by_digsig``). A CA belongs
  in MOK (``imaguard-keyring mok prepare``), where the kernel wants it.
- ``revoked-key``: the key id is on the CA-signed revocation list.
- ``no-ecdsa``: an EC certificate on a kernel known to lack ``CONFIG_CRYPTO_ECDSA`` (lab note P4:
  ``add_key`` fails with ENOENT and every file signed with the key is denied).
- ``no-ima`` (exit 77): the kernel has no IMA, so no keyring would ever be consulted.
- ``not-signed-by-trusted-key``: the kernel restricts ``.ima`` (CONFIG_INTEGRITY_TRUSTED_KEYRING)
  and the certificate's authority key id names none of the keys in the system keyrings the
  restriction accepts; the message lists those keys (the CA the kernel wants).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from imaguard.errors import UnsupportedError, UsageError
from imaguard.ima.hostfacts import IMA_KEYRING, TRUSTED_IMA_KEYRING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaguard.ima.hostfacts import KernelFacts, KeyEntry
    from imaguard.keys.material import Certificate

__all__ = [
    "ECDSA_MISSING",
    "KeyTarget",
    "LoadPlan",
    "Refusal",
    "authority_key_id",
    "certificate_refusals",
    "is_ca_certificate",
    "plan_load",
    "restricted_keyring_voucher_rings",
]

ECDSA_MISSING = (
    "the running kernel cannot use EC (ECDSA) keys: it was built without CONFIG_CRYPTO_ECDSA "
    "(Debian 12's 6.1 kernel is one); issue an RSA certificate (e.g. RSA-2048) for IMA"
)


class KeyTarget(enum.Enum):
    """Where the certificates go."""

    IMA = IMA_KEYRING  # root-made, unrestricted, found by request_key from the appraised process
    TRUSTED_IMA = TRUSTED_IMA_KEYRING  # kernel-made, restricted to keys a system key signed


@dataclass(frozen=True, slots=True)
class Refusal:
    """One certificate that must not be loaded: source, stable reason code, explanation."""

    source: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class LoadPlan:
    target: KeyTarget
    certificates: tuple[Certificate, ...]
    refusals: tuple[Refusal, ...]

    @property
    def accepted(self) -> bool:
        return not self.refusals


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """A certificate for issuing certificates, not for verifying files: keyCertSign, or CA:TRUE
    without digitalSignature. A self-signed ``openssl req -x509`` certificate (CA:TRUE *and* only
    digitalSignature, like the test key) is a signing certificate and passes."""
    try:
        usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and usage.key_cert_sign:
        return True
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    return ca and (usage is None or not usage.digital_signature)


def authority_key_id(cert: x509.Certificate) -> str | None:
    """The authority key identifier (hex) naming the key that signed ``cert``, if it has one."""
    try:
        ident = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
    return ident.hex() if ident else None


def restricted_keyring_voucher_rings(facts: KernelFacts) -> tuple[str, ...]:
    """The system keyrings whose keys may vouch for a ``.ima`` certificate on this kernel.

    ``restrict_link_to_ima`` (digsig.c): the builtin keyring, plus the secondary keyring (which links
    ``.machine``) with CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY. When the config is
    unknown the wider set is assumed, and the kernel has the last word.
    """
    secondary = facts.config_flag("IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY")
    if secondary is False:
        return (".builtin_trusted_keys",)
    return (".builtin_trusted_keys", ".secondary_trusted_keys", ".machine")


def _vouchers(facts: KernelFacts) -> tuple[KeyEntry, ...]:
    rings = restricted_keyring_voucher_rings(facts)
    return tuple(k for k in facts.keyring_keys if k.keyring in rings)


def _cert_refusal(cert: Certificate, facts: KernelFacts, revoked: frozenset[bytes]) -> Refusal | None:
    if is_ca_certificate(cert.cert):
        return Refusal(cert.source, "ca-certificate",
                       f"{cert.subject} is a CA certificate: IMA verifies files with the signing "
                       "certificate's own key; load the IMA certificates this CA issued (a CA belongs "
                       "in MOK, see imaguard-keyring mok prepare)")  # fmt: skip
    if cert.key_id in revoked:
        return Refusal(cert.source, "revoked-key", f"key {cert.key_id.hex()} is on the revocation list")
    if isinstance(cert.public_key, ec.EllipticCurvePublicKey) and facts.ecdsa is False:
        return Refusal(cert.source, "no-ecdsa", f"{cert.key_kind} key {cert.key_id.hex()}: {ECDSA_MISSING}")
    if facts.trusted_ima_keyring is not None:
        akid = authority_key_id(cert.cert)
        vouchers = _vouchers(facts)
        known = {k.skid_hex for k in vouchers if k.skid_hex}
        if akid is not None and vouchers and akid not in known:
            names = "; ".join(f"{k.keyring}: {k.description}" for k in vouchers)
            return Refusal(cert.source, "not-signed-by-trusted-key",
                           f"this kernel restricts '.ima' (CONFIG_INTEGRITY_TRUSTED_KEYRING): it accepts only "
                           f"certificates signed by a key in {', '.join(restricted_keyring_voucher_rings(facts))}; "
                           f"{cert.subject} was signed by key {akid}, which is none of them. Keys the kernel "
                           f"would accept a signature from: {names}. Enroll your IMA CA as a machine owner key "
                           "(imaguard-keyring mok prepare) and load certificates it issued")  # fmt: skip
        if akid is not None and not vouchers:
            return Refusal(cert.source, "not-signed-by-trusted-key",
                           "this kernel restricts '.ima' (CONFIG_INTEGRITY_TRUSTED_KEYRING) and no key in "
                           f"{', '.join(restricted_keyring_voucher_rings(facts))} is visible to vouch for "
                           f"{cert.subject} (signed by key {akid}); enroll the IMA CA as a machine owner key "
                           "(imaguard-keyring mok prepare)")  # fmt: skip
    return None


def certificate_refusals(
    certs: Sequence[Certificate], facts: KernelFacts, revoked: frozenset[bytes]
) -> tuple[Refusal, ...]:
    """The refusals of :func:`plan_load` that depend on the certificates alone (for ``keys install``,
    whose target kernel is the next boot's: ``facts`` then carries what is known of it, e.g. ECDSA)."""
    return tuple(r for c in certs if (r := _cert_refusal(c, facts, revoked)) is not None)


def plan_load(certs: Sequence[Certificate], facts: KernelFacts, revoked: frozenset[bytes]) -> LoadPlan:
    """Check every certificate against this kernel, then the kernel itself.

    Certificates repeated (same key id) are loaded once. The plan is refused as a whole if any
    certificate is: half a key set loaded is a state nobody asked for. With every certificate fit,
    UnsupportedError when the kernel has no keyrings or no IMA (no keyring would ever be used).
    """
    if not certs:
        raise UsageError("name at least one certificate to load")
    target = KeyTarget.TRUSTED_IMA if facts.trusted_ima_keyring is not None else KeyTarget.IMA
    unique: dict[bytes, Certificate] = {}
    refusals: list[Refusal] = []
    for cert in certs:
        if cert.key_id in unique:
            continue
        refusal = _cert_refusal(cert, facts, revoked)
        if refusal is not None:
            refusals.append(refusal)
        unique[cert.key_id] = cert
    if not refusals:
        # The certificates are fine; now the kernel must be one that would use them.
        if facts.keyrings is None:
            raise UnsupportedError("the kernel keyrings cannot be read (/proc/keys: CONFIG_KEYS missing?)",
                                   reason="no-keyrings")
        if facts.ima is False:
            raise UnsupportedError("IMA is not available in this kernel (no /sys/kernel/security/ima, CONFIG_IMA "
                                   "not set): no keyring would ever be consulted", reason="no-ima")  # fmt: skip
    return LoadPlan(target, tuple(unique.values()), tuple(refusals))
