"""What the ceremony commands print for people: MOK enrollment and the rotation procedure.

Kernel facts behind the MOK text (read in the kernel sources; versions are mainline releases):

- CONFIG_INTEGRITY_TRUSTED_KEYRING=y makes the IMA keyring ``.ima``, restricted by
  ``restrict_link_to_ima`` (security/integrity/digsig.c): a key is added only if a key in the
  builtin trusted keyring signed it, or with CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY
  one in the builtin or secondary keyring. Without it the keyring is ``_ima`` and root adds any key
  (Debian 12's 6.1 kernel: not set, so no MOK is needed there).
- 5.18 added CONFIG_INTEGRITY_MACHINE_KEYRING: MOK keys go to ``.machine`` (linked into the
  secondary keyring) when shim set MokListTrustedRT (``mokutil --trust-mok``), otherwise to
  ``.platform``, which never vouches for ``.ima`` keys. Until 6.3 that option could not be combined
  with ..._PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY (Kconfig ``depends on !IMA_KEYRINGS_PERMIT_...``).
- 6.4 lifted that and added CONFIG_INTEGRITY_CA_MACHINE_KEYRING (``.machine`` takes only CA:TRUE
  certificates with keyCertSign) and ..._MAX (and without digitalSignature), and
  ``restrict_link_by_digsig`` for ``.ima``: digitalSignature required, CA and keyCertSign refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from pathlib import Path

    from imaguard.keys.material import Certificate
    from imaguard_keyring.ceremony import Issued

__all__ = ["EC_WARNING", "machine_keyring_fit", "mok_instructions", "rotation_procedure"]

EC_WARNING = (
    "imaguard-keyring: warning [W-EC-KEY]: {what} uses an EC key; kernels without CONFIG_CRYPTO_ECDSA "
    "(Debian 12's 6.1 kernel among them) refuse to load EC certificates and deny every file signed with them. "
    "Use an RSA key type for such hosts."
)

_MOK = """\
Wrote {der}
  CA {subject}, key id {key_id}, SHA-256 fingerprint {fingerprint}

When MOK enrollment is needed
  Only where the kernel restricts its IMA keyring. Check on the host:
    grep -E '^CONFIG_(INTEGRITY_.*KEYRING|IMA_KEYRINGS_PERMIT).*=' /boot/config-$(uname -r)
  - INTEGRITY_TRUSTED_KEYRING not set (Debian 12): the keyring is "_ima", root loads the IMA
    certificates directly (/etc/keys/ima, evmctl import). Do NOT enroll anything; stop here.
  - INTEGRITY_TRUSTED_KEYRING=y: the keyring is ".ima" and takes a certificate only if a key in
    the kernel's builtin keyring signed it, or, with IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY=y,
    a key in the secondary keyring, which includes the ".machine" keyring of MOK keys.
    A MOK-enrolled CA can vouch for IMA certificates only when all of these hold:
      * Linux 6.4 or later (5.18-6.3 had the machine keyring, but not together with
        IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY);
      * INTEGRITY_MACHINE_KEYRING=y and IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY=y;
      * UEFI boot through shim with MokListTrustedRT set (mokutil --trust-mok); without it the
        kernel puts MOK keys in ".platform", which never vouches for ".ima" keys.
    With INTEGRITY_CA_MACHINE_KEYRING(_MAX) the CA must be CA:TRUE with keyCertSign and (for _MAX)
    without digitalSignature: {machine_fit}. Otherwise only a CA built into the kernel works.

Commands (on each host, as root; someone must answer MokManager at the console on the next boot)
  mokutil --import {der}
      sets a one-time password that MokManager asks for
  mokutil --trust-mok
      lets the kernel trust MOK keys (shim sets MokListTrustedRT; needs shim 15.6 or later)
  reboot
      MokManager: Enroll MOK -> View key -> Continue -> Yes -> password -> Reboot
After the reboot
  mokutil --test-key {der}
      says the key is already enrolled
  keyctl list %:.machine
      lists the CA
Then load the IMA certificates issued by this CA (DER) into ".ima":
  keyctl padd asymmetric "" %:.ima < NAME.der
imaguard-keyring never runs mokutil itself."""


def machine_keyring_fit(cert: Certificate) -> str:
    """What this CA meets of the .machine keyring's CA rules, read from its extensions (not assumed:
    a CA made elsewhere may lack keyCertSign, which restrict_link_by_ca refuses)."""
    try:
        ca = cert.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    try:
        usage: x509.KeyUsage | None = cert.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    lacks = [what for what, ok in (("CA:TRUE", ca), ("keyCertSign", usage is not None and usage.key_cert_sign))
             if not ok]  # fmt: skip
    if lacks:
        return f"this CA does NOT (it lacks {' and '.join(lacks)}): neither option takes it"
    if usage is not None and usage.digital_signature:
        return "this CA meets INTEGRITY_CA_MACHINE_KEYRING, NOT _MAX (it has digitalSignature)"
    return "this CA meets both"


def mok_instructions(cert: Certificate, der: Path, fingerprint: str) -> str:
    return _MOK.format(der=der, subject=cert.subject, key_id=cert.key_id.hex(), fingerprint=fingerprint,
                       machine_fit=machine_keyring_fit(cert))


_ROTATION = """\
Issued successor {new_name}: key id {new_id} (replaces key id {old_id}, {old_subject})

Rotation, in this order (the old key stays valid until step 4):
  1. Install the new certificate beside the old one on every host, for boot and now:
       imaguard keys install {new_der}     # /etc/keys/ima/ and its loading at boot
       update-initramfs -u -k all          # initramfs-tools copies the keys into the initramfs
       imaguard keys load {new_der}        # the running kernel
     Both key ids are now in the kernel and in what the next boot loads; files signed with either
     still run. (Without the rebuild the next boot would load only the old key, and every file
     re-signed in step 2 would be denied: `imaguard policy install --stage enforce` refuses.)
  2. Re-sign with the new key:
       bundles: imaguard-keyring bundle --ima-key {new_key} --ima-cert {new_pem} ... ,
                then on hosts: imaguard enroll --source bundle:URL
       local:   imaguard sign --key {new_key} --cert {new_pem} -r PATH...
  3. Verify that nothing still depends on the old key:
       imaguard verify --cert {new_pem} -r PATH...     (exit 0; any unknown-key is a file not re-signed)
  4. Retire the old key: remove its certificate from /etc/keys/ima/ on every host, rebuild the
     initramfs (update-initramfs -u -k all) and reboot (or keyctl unlink it from "_ima").
     If it was compromised, also revoke it:
       imaguard-keyring revoke --ca {ca_dir} --key-id {old_id} --list revocations.json --reason key-compromise
     (add --new if there is no list yet) and publish the list to the hosts."""


def rotation_procedure(old: Certificate, new: Issued, new_name: str, ca_dir: Path) -> str:
    by_suffix = {p.suffix: p for p in new.files}
    return _ROTATION.format(
        new_name=new_name, ca_dir=ca_dir, new_id=new.key_id.hex(), old_id=old.key_id.hex(), old_subject=old.subject,
        new_der=by_suffix[".der"], new_pem=by_suffix[".pem"], new_key=by_suffix[".key"],
    )
