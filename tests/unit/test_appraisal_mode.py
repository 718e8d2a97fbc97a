"""Regression: the log stage trusted ``ima_appraise=log`` on the command line alone.

The kernel ignores it without ``CONFIG_IMA_APPRAISE_BOOTPARAM`` and under secure boot
(``ima_appraise_parse_cmdline``, ima_appraise.c: "Secure boot enabled: ignoring ima_appraise=%s
option"); appraise rules loaded for the log stage then enforce at once. Pure decisions on fixture
inputs (command line words, config text, efivarfs bytes), and the efivarfs reader on a stand-in tree.
"""

from __future__ import annotations

from pathlib import Path

from imaguard.ima.hostfacts import (
    AppraiseMode,
    SecureBoot,
    SecureBootState,
    effective_appraise_mode,
    parse_kernel_config,
    secure_boot_state,
)
from imaguard.ima.probe import read_secure_boot

GUID = "8be4df61-93ca-11d0-aae0-e0cb4ee0e8c1"
ATTRS = b"\x06\x00\x00\x00"  # EFI_VARIABLE_BOOTSERVICE_ACCESS | EFI_VARIABLE_RUNTIME_ACCESS, as efivarfs shows it
WITH_BOOTPARAM = parse_kernel_config("CONFIG_IMA=y\nCONFIG_IMA_APPRAISE=y\nCONFIG_IMA_APPRAISE_BOOTPARAM=y\n", "/boot/c")
WITHOUT_BOOTPARAM = parse_kernel_config("CONFIG_IMA=y\nCONFIG_IMA_APPRAISE=y\n# CONFIG_IMA_APPRAISE_BOOTPARAM is not set\n",
                                        "/proc/config.gz")  # fmt: skip
LOG = ("root=/dev/vda", "ima_appraise=log")
OFF = SecureBootState(SecureBoot.OFF, "no /sys/firmware/efi")
ON = SecureBootState(SecureBoot.ON, "SecureBoot=1")
UNKNOWN = SecureBootState(SecureBoot.UNKNOWN, "efivarfs not mounted")


def test_secure_boot_from_efivar_bytes() -> None:
    def state(*, efi: bool = True, efivars: bool = True, secure_boot: bytes | None = None,
              setup_mode: bytes | None = None) -> SecureBoot:
        return secure_boot_state(efi=efi, efivars=efivars, secure_boot=secure_boot, setup_mode=setup_mode).state

    assert state(efi=False, efivars=False) is SecureBoot.OFF  # legacy BIOS: no EFI runtime
    assert state(efivars=False) is SecureBoot.UNKNOWN  # EFI, efivarfs not mounted
    assert state() is SecureBoot.OFF  # no SecureBoot variable: EFI_NOT_FOUND, disabled
    assert state(secure_boot=ATTRS + b"\x00", setup_mode=ATTRS + b"\x00") is SecureBoot.OFF
    assert state(secure_boot=ATTRS + b"\x01", setup_mode=ATTRS + b"\x00") is SecureBoot.ON
    assert state(secure_boot=ATTRS + b"\x01") is SecureBoot.ON  # no SetupMode: the kernel reads it as 0
    assert state(secure_boot=ATTRS + b"\x01", setup_mode=ATTRS + b"\x01") is SecureBoot.OFF  # setup mode
    assert state(secure_boot=ATTRS) is SecureBoot.UNKNOWN  # attributes only, no value
    assert state(secure_boot=ATTRS + b"\x01", setup_mode=b"\x06") is SecureBoot.UNKNOWN


def test_log_is_certain_only_with_bootparam_and_secure_boot_off() -> None:
    mode, why = effective_appraise_mode(LOG, WITH_BOOTPARAM, OFF)
    assert mode is AppraiseMode.LOG
    assert "honoured" in why
    mode, why = effective_appraise_mode(LOG, WITH_BOOTPARAM, ON)
    assert mode is AppraiseMode.ENFORCE
    assert "secure boot is on (SecureBoot=1)" in why
    mode, why = effective_appraise_mode(LOG, WITHOUT_BOOTPARAM, OFF)
    assert mode is AppraiseMode.ENFORCE
    assert "CONFIG_IMA_APPRAISE_BOOTPARAM is not set in /proc/config.gz" in why
    mode, why = effective_appraise_mode(LOG, None, OFF)  # no config readable: cannot tell
    assert mode is None
    assert "no kernel config" in why
    mode, why = effective_appraise_mode(LOG, WITH_BOOTPARAM, UNKNOWN)
    assert mode is None
    assert "efivarfs not mounted" in why


def test_enforce_needs_no_config_or_efi() -> None:
    assert effective_appraise_mode(("quiet",), None, UNKNOWN)[0] is AppraiseMode.ENFORCE
    assert effective_appraise_mode(("ima_appraise=enforce",), None, UNKNOWN)[0] is AppraiseMode.ENFORCE


def test_read_secure_boot_from_an_efivarfs_tree(tmp_path: Path) -> None:
    assert read_secure_boot(str(tmp_path / "absent")).state is SecureBoot.OFF  # BIOS
    efi = tmp_path / "efi"
    (efi / "efivars").mkdir(parents=True)
    assert read_secure_boot(str(efi)).state is SecureBoot.UNKNOWN  # empty mount point: efivarfs not mounted
    (efi / "efivars" / f"BootOrder-{GUID}").write_bytes(ATTRS + b"\x01\x00")
    assert read_secure_boot(str(efi)).state is SecureBoot.OFF  # no SecureBoot variable
    (efi / "efivars" / f"SecureBoot-{GUID}").write_bytes(ATTRS + b"\x01")
    (efi / "efivars" / f"SetupMode-{GUID}").write_bytes(ATTRS + b"\x00")
    assert read_secure_boot(str(efi)) == SecureBootState(SecureBoot.ON, "SecureBoot=1, SetupMode=0 in the EFI variables")
