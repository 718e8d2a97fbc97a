"""``imaguard doctor``'s pure parts (config, cmdline, facts → checks) and the command on this host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.ima.doctor import Status, diagnose
from imaguard.ima.hostfacts import (
    AppraiseMode,
    KernelFacts,
    KeyEntry,
    KeyringRef,
    PolicyFile,
    SecureBoot,
    SecureBootState,
    XattrProbe,
    XattrSupport,
    appraise_mode,
    cmdline_value,
    parse_cmdline,
    parse_kernel_config,
)
from imaguard.ima.probe import probe_xattrs

# The lines that matter of Debian 12's /boot/config-6.1.0-*-amd64 (checked in the lab image).
DEBIAN_12_CONFIG = """\
CONFIG_SECURITYFS=y
CONFIG_INTEGRITY=y
CONFIG_INTEGRITY_SIGNATURE=y
CONFIG_INTEGRITY_ASYMMETRIC_KEYS=y
# CONFIG_INTEGRITY_TRUSTED_KEYRING is not set
CONFIG_IMA=y
CONFIG_IMA_APPRAISE=y
CONFIG_IMA_APPRAISE_BOOTPARAM=y
# CONFIG_IMA_WRITE_POLICY is not set
# CONFIG_IMA_READ_POLICY is not set
# CONFIG_CRYPTO_ECDSA is not set
CONFIG_TCG_TPM=y
CONFIG_CMDLINE="console=ttyS0 quiet"
"""
# This machine's kind of kernel: no integrity subsystem at all (the IMA options are absent).
NO_IMA_CONFIG = "CONFIG_KEYS=y\nCONFIG_SECURITYFS=y\n# CONFIG_INTEGRITY is not set\n# CONFIG_CRYPTO_ECDSA is not set\n"


def by_id(facts: KernelFacts) -> dict[str, tuple[Status, str, str]]:
    return {c.id: (c.status, c.summary, c.reason) for c in diagnose(facts)}


def test_kernel_config_values_and_absent_options() -> None:
    config = parse_kernel_config(DEBIAN_12_CONFIG, "/boot/config-6.1.0-50-amd64")
    assert config.value("IMA") == "y"
    assert config.enabled("IMA_APPRAISE")
    assert config.value("CRYPTO_ECDSA") is None  # "# ... is not set"
    assert not config.enabled("INTEGRITY_TRUSTED_KEYRING")
    assert config.value("CMDLINE") == '"console=ttyS0 quiet"'
    assert not parse_kernel_config(NO_IMA_CONFIG, "/proc/config.gz").enabled("IMA")  # absent = not set


def test_cmdline_words_quotes_and_init_args() -> None:
    words = parse_cmdline('root=/dev/vda ima_appraise=enforce dyndbg="file ima* +p" ima_appraise=log -- --init-arg\n')
    assert words == ("root=/dev/vda", "ima_appraise=enforce", 'dyndbg="file ima* +p"', "ima_appraise=log")
    assert cmdline_value(words, "ima_appraise") == "log"  # the last one wins, as in the kernel
    assert cmdline_value(words, "dyndbg") == "file ima* +p"
    assert cmdline_value(words, "ima_policy") is None
    assert appraise_mode(words)[0] is AppraiseMode.LOG
    assert appraise_mode(())[0] is AppraiseMode.ENFORCE
    assert appraise_mode(("ima_appraise=bogus",)) == (
        AppraiseMode.ENFORCE, "ima_appraise=bogus is not a mode the kernel knows; it enforces")


def test_key_entry_key_id_from_the_kernel_description() -> None:
    entry = KeyEntry("_ima", "imaguard test: 63101e1ccadabc736dcd0d54f658075117b7ae8b", 0x1234)
    assert entry.key_id == bytes.fromhex("17b7ae8b")
    assert KeyEntry(".builtin_trusted_keys", "Debian Secure Boot CA: not-hex").key_id is None


def test_this_kind_of_host_without_ima() -> None:
    facts = KernelFacts(release="6.18.44", config=parse_kernel_config(NO_IMA_CONFIG, "/proc/config.gz"),
                        securityfs_known=True, keyrings=(KeyringRef(".builtin_trusted_keys", 0x5315057),), ecdsa=False)
    checks = by_id(facts)
    assert checks["ima"] == (Status.MISSING, "IMA: not available",
                             "CONFIG_INTEGRITY is not set in /proc/config.gz (IMA depends on it); securityfs is not mounted")
    assert checks["appraisal"][:2] == (Status.MISSING, "appraisal: not available")
    assert checks["securityfs"][:2] == (Status.WARNING, "securityfs: not mounted")
    assert checks["policy"][:2] == (Status.MISSING, "policy: not available")
    assert checks["keyring"][:2] == (Status.MISSING, "keyring: none for IMA")
    assert checks["ecdsa"][:2] == (Status.MISSING, "ECDSA: not available")
    assert checks["tpm"][:2] == (Status.MISSING, "TPM: not present")
    assert checks["stage"][:2] == (Status.MISSING, "stage: none")


def test_debian_12_lab_guest_before_any_policy() -> None:
    facts = KernelFacts(
        release="6.1.0-50-amd64", config=parse_kernel_config(DEBIAN_12_CONFIG, "/boot/config-6.1.0-50-amd64"),
        securityfs_known=True, securityfs_mounted=True, ima_dir=True, policy_file=PolicyFile.WRITABLE,
        cmdline=("root=/dev/vda", "ima_appraise=log"), keyrings=(KeyringRef("_ima", 0x2A),),
        keyring_keys=(KeyEntry("_ima", "t: 63101e1ccadabc736dcd0d54f658075117b7ae8b", 7),),
        ima_keyring_reachable=True, ecdsa=False, tpm_devices=("/dev/tpm0", "/dev/tpmrm0"), tpm_version="2",
        xattrs=(XattrProbe("/", "ext4", XattrSupport.SUPPORTED, "no label on the root"),
                XattrProbe("/boot/efi", "vfat", XattrSupport.UNSUPPORTED, "EOPNOTSUPP")),
        secure_boot=SecureBootState(SecureBoot.OFF, "SecureBoot=0 in the EFI variables"),
    )  # fmt: skip
    checks = by_id(facts)
    assert checks["ima"][:2] == (Status.OK, "IMA: available")
    assert checks["appraisal"][:2] == (Status.OK, "appraisal: available")
    assert checks["policy"] == (Status.OK, "policy: writable", "/sys/kernel/security/ima/policy is present: no custom "
                                "policy loaded this boot; it can be written once this boot (CONFIG_IMA_WRITE_POLICY not set)")
    assert checks["keyring"] == (Status.OK, "keyring: '_ima'",
                                 "'_ima' (serial 0000002a) holds 1 key(s), reachable from root's user keyring @u")
    assert checks["tpm"][:2] == (Status.OK, "TPM: present (TPM 2.0)")
    assert checks["stage"][:2] == (Status.INFO, "stage: none (appraisal mode log)")
    assert checks["xattr:/"][0] is Status.OK
    assert checks["xattr:/boot/efi"][0] is Status.WARNING
    assert "mount it noexec" in checks["xattr:/boot/efi"][2]


def test_stage_warns_when_the_installed_log_policy_would_enforce() -> None:
    facts = KernelFacts(config=parse_kernel_config(DEBIAN_12_CONFIG, "c"), securityfs_mounted=True, ima_dir=True,
                        policy_file=PolicyFile.GONE, cmdline=("quiet",), keyrings=(),
                        installed_policy=True, installed_policy_stage="log")  # fmt: skip
    status, summary, reason = by_id(facts)["stage"]
    assert (status, summary) == (Status.WARNING, "stage: log (appraisal mode enforce)")
    assert "appraisal failures are DENIED" in reason


def test_secure_boot_makes_ima_appraise_log_ignored() -> None:
    facts = KernelFacts(config=parse_kernel_config(DEBIAN_12_CONFIG, "c"), securityfs_mounted=True, ima_dir=True,
                        policy_file=PolicyFile.WRITABLE, cmdline=("ima_appraise=log",), keyrings=(),
                        secure_boot=SecureBootState(SecureBoot.ON, "SecureBoot=1 in the EFI variables"))  # fmt: skip
    checks = by_id(facts)
    assert checks["appraisal"][:2] == (Status.WARNING, "appraisal: available, no log mode (secure boot)")
    assert checks["stage"][1] == "stage: none (appraisal mode enforce)"
    assert "secure boot is on (SecureBoot=1 in the EFI variables)" in checks["stage"][2]


def test_stage_from_a_readable_policy() -> None:
    facts = KernelFacts(config=parse_kernel_config(DEBIAN_12_CONFIG, "c"), securityfs_mounted=True, ima_dir=True,
                        policy_file=PolicyFile.GONE, policy_text="measure func=BPRM_CHECK\nappraise func=BPRM_CHECK\n",
                        keyrings=())  # fmt: skip
    assert by_id(facts)["stage"][1] == "stage: enforce (appraisal mode enforce)"


def test_restricted_ima_keyring() -> None:
    facts = KernelFacts(securityfs_mounted=True, ima_dir=True, keyrings=(KeyringRef(".ima", 0x99),))
    assert by_id(facts)["keyring"][:2] == (Status.OK, "keyring: restricted '.ima'")


def test_xattr_probe_skips_pseudo_filesystems_and_reads_roots(tmp_path: Path) -> None:
    mountinfo = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        f"27 1 254:0 / {tmp_path} rw,relatime - ext4 /dev/vda rw\n"
        "40 31 0:38 / /net rw - nfs4 server:/x rw\n"
    )
    probes = {p.mountpoint: p for p in probe_xattrs(mountinfo)}
    assert probes["/proc"].support is XattrSupport.NOT_PROBED
    assert probes["/net"].support is XattrSupport.NOT_PROBED
    assert probes[str(tmp_path)].support in (XattrSupport.SUPPORTED, XattrSupport.UNSUPPORTED)


def test_doctor_on_this_host_reports_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in doc["checks"]}
    assert [c["id"] for c in doc["checks"]][:8] == ["ima", "appraisal", "securityfs", "policy", "keyring", "ecdsa",
                                                    "tpm", "stage"]
    assert doc["exit_code"] == 0
    if not Path("/sys/kernel/security/ima").is_dir() and checks["ima"]["status"] != "unknown":
        # A host without IMA (this project's build machines): said plainly, and doctor still succeeds.
        assert checks["ima"]["summary"] == "IMA: not available"
        assert checks["stage"]["summary"] == "stage: none"
    assert main(["doctor", "--no-xattr-probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kernel: ")
    assert "xattr " not in out
