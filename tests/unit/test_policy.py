"""The IMA policy parser against the kernel's grammar (Linux 6.1): templates, round trips, rejections."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima import securityfs
from imaguard.ima.policy import (
    Action,
    AppraiseType,
    Func,
    IdCondition,
    IdField,
    KernelFeatures,
    Mask,
    MaskFlag,
    Op,
    Policy,
    PolicySyntaxError,
    Rule,
    parse_policy,
    parse_rule,
    render,
    render_rule,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "policies").glob("*.policy"))
LAB_POLICY = ROOT / "tests" / "data" / "lab" / "policy.txt"


def test_templates_exist() -> None:
    assert {p.stem for p in TEMPLATES} >= {"measure", "appraise-exec"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_template_parses_and_round_trips(path: Path) -> None:
    text = path.read_text()
    policy = parse_policy(text, source=path.name)
    rule_lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(policy.rules) == len(rule_lines)
    # Templates are written canonically: rendering gives back their rule lines, minus comments.
    assert render(policy).splitlines() == rule_lines
    assert parse_policy(render(policy)) == policy
    assert text.startswith("# imaguard policy template:"), "each template starts with its header comment"
    assert "does not cover" in text


def test_template_contents() -> None:
    measure = parse_policy((ROOT / "policies" / "measure.policy").read_text())
    assert measure.appraise_rules == ()
    exec_policy = parse_policy((ROOT / "policies" / "appraise-exec.policy").read_text())
    appraising = [r for r in exec_policy.rules if r.action is Action.APPRAISE]
    assert [(r.func, r.mask, r.appraise_type) for r in appraising] == [
        (Func.BPRM_CHECK, None, AppraiseType.IMASIG),
        (Func.MMAP_CHECK, Mask(MaskFlag.MAY_EXEC), AppraiseType.IMASIG),
        (Func.MODULE_CHECK, None, AppraiseType.IMASIG),
    ]
    exempt = {r.fsmagic for r in exec_policy.rules if r.action is Action.DONT_APPRAISE}
    assert {0x9FA0, 0x62656572, 0x64626720, 0x01021994, 0x73636673, 0xF97CFF8C, 0x27E0EB, 0xCAFE4A11} <= exempt


def test_lab_policy_parses() -> None:
    # The policy the lab guest loaded into Debian 12's kernel (tests/data/lab): the kernel took it.
    policy = parse_policy(LAB_POLICY.read_text())
    assert render(policy) == LAB_POLICY.read_text()


def test_comments_blank_lines_tabs_and_positions() -> None:
    text = "# header\n\n\tmeasure\tfunc=BPRM_CHECK  \n  # indented comment\nappraise fowner=0\n"
    policy = parse_policy(text)
    assert [r.line for r in policy.rules] == [3, 5]
    assert render(policy) == "measure func=BPRM_CHECK\nappraise fowner=0\n"


def test_typed_model() -> None:
    rule = parse_rule(
        "appraise func=FILE_MMAP mask=^MAY_READ fsmagic=EF53 fsname=ext4 fowner<1000 euid>0 "
        "fsuuid=8BCBE394-4f13-4144-be8e-5aa9ea2ce2f6 obj_type=bin_t appraise_type=imasig permit_directio"
    )
    assert rule.func is Func.MMAP_CHECK  # the old name is an alias
    assert rule.mask == Mask(MaskFlag.MAY_READ, inverted=True)
    assert rule.fsmagic == 0xEF53
    assert rule.fsuuid == "8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6"
    assert set(rule.ids) == {IdCondition(IdField.FOWNER, Op.LT, 1000), IdCondition(IdField.EUID, Op.GT, 0)}
    assert render_rule(rule) == (
        "appraise func=MMAP_CHECK mask=^MAY_READ fsmagic=0xef53 fsname=ext4 "
        "fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6 euid>0 fowner<1000 obj_type=bin_t appraise_type=imasig "
        "permit_directio"
    )


@pytest.mark.parametrize(
    "rule",
    [
        "measure func=KEY_CHECK keyrings=.ima|_ima pcr=11",
        "measure func=CRITICAL_DATA label=selinux|kernel_info uid=0",
        "measure func=KEXEC_CMDLINE pcr=4",
        "measure func=KEXEC_KERNEL_CHECK pcr=4 template=ima-ng",
        "appraise func=SETXATTR_CHECK appraise_algos=sha256,sha384,sha512",
        "measure func=FILE_CHECK digest_type=verity template=ima-ngv2",
        "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3",
        "appraise func=BPRM_CHECK appraise_algos=sha256 appraise_type=imasig",
        "dont_appraise fsmagic=0x9fa0",
        "audit func=BPRM_CHECK",
        "hash fowner=0",
        "dont_hash fsmagic=0x1021994",
        "measure func=FILE_CHECK mask=^MAY_READ euid=0 fgroup=0 egid<100",
        "appraise func=POLICY_CHECK appraise_type=imasig",
        "measure subj_user=system_u subj_role=system_r subj_type=init_t obj_user=u obj_role=r func=FILE_CHECK",
    ],
)
def test_accepted_rules_round_trip(rule: str) -> None:
    parsed = parse_rule(rule)
    assert parse_rule(render_rule(parsed)) == parsed


# (policy text, exact message): every rejection names the line and the column of the culprit.
REJECTIONS = [
    ("bogus func=BPRM_CHECK", "t line 1, column 1: unknown action 'bogus' (a rule starts with its action)"),
    ("/etc/ima/ima-policy", "t line 1, column 1: unknown action '/etc/ima/ima-policy' (a rule starts with its action)"
     " (a line starting with '/' would make the kernel load a policy file)"),
    ("measure\nappraise func=BPRM_CHECK foo=bar", "t line 2, column 26: unknown keyword 'foo=bar'"),
    ("measure func=BPRM_CHECK # why", "t line 1, column 25: unknown keyword '#' ('#' starts a comment only at the beginning of a line)"),
    ("measure func=BPRM_CHECK measure", "t line 1, column 25: second action 'measure' in one rule"),
    ("measure func=NOPE", "t line 1, column 9: unknown hook func=NOPE"),
    ("measure func=", "t line 1, column 9: func= needs a value"),
    ("measure func>BPRM_CHECK", "t line 1, column 9: func takes '=', not '>'"),
    ("measure mask=MAY_RUN", "t line 1, column 9: unknown mask 'MAY_RUN' (MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND; ^ for any)"),
    ("measure fsmagic=0xzz", "t line 1, column 9: fsmagic=0xzz is not a 64-bit hex number"),
    ("measure fsuuid=1234", "t line 1, column 9: fsuuid=1234 is not a UUID (8-4-4-4-12 hex digits)"),
    ("measure uid=-1", "t line 1, column 9: uid=-1: not a decimal id"),
    ("measure uid=+5", "t line 1, column 9: uid=+5: not a decimal id"),
    ("measure fowner=4294967295", "t line 1, column 9: fowner=4294967295: id outside 0..4294967294"),
    ("measure pcr=64", "t line 1, column 9: pcr=64 is not a number in 0..63"),
    ("measure template=ima-foo", "t line 1, column 9: unknown template 'ima-foo' (evm-sig, ima, ima-buf, ima-modsig, ima-ng, ima-ngv2, ima-sig, ima-sigv2)"),
    ("appraise func=BPRM_CHECK template=ima-sig", "t line 1, column 26: template= is only allowed on measure rules, not on appraise"),
    ("dont_measure pcr=11", "t line 1, column 14: pcr= is only allowed on measure rules, not on dont_measure"),
    ("measure keyrings=_ima", "t line 1, column 9: keyrings= needs func=KEY_CHECK"),
    ("measure func=BPRM_CHECK keyrings=_ima", "t line 1, column 25: keyrings= needs func=KEY_CHECK"),
    ("measure func=KEY_CHECK keyrings=_ima|", "t line 1, column 24: keyrings= has an empty item"),
    ("measure func=BPRM_CHECK label=x", "t line 1, column 25: label= needs func=CRITICAL_DATA"),
    ("measure func=BPRM_CHECK appraise_type=imasig", "t line 1, column 25: appraise_type= is only allowed on appraise rules, not on measure"),
    ("dont_appraise fsmagic=0x9fa0 appraise_type=imasig", "t line 1, column 30: appraise_type= is only allowed on appraise rules, not on dont_appraise"),
    ("audit appraise_algos=sha256", "t line 1, column 7: appraise_algos= is only allowed on appraise rules, not on audit"),
    ("appraise func=BPRM_CHECK func=MMAP_CHECK", "t line 1, column 26: func appears twice in one rule"),
    ("measure fsname=ext4 fsname=xfs", "t line 1, column 21: fsname appears twice in one rule"),
    ("measure obj_type=a obj_type=b", "t line 1, column 20: obj_type appears twice in one rule"),
    ("measure permit_directio permit_directio", "t line 1, column 25: permit_directio appears twice in one rule"),
    ("appraise func=BPRM_CHECK uid=0 euid=0", "t line 1, column 32: uid and euid cannot both be in one rule (the kernel keeps one user id per rule)"),
    ("measure egid=0 gid=0", "t line 1, column 9: gid and egid cannot both be in one rule (the kernel keeps one group id per rule)"),
    ("appraise func=MMAP_CHECK_REQPROT", "t line 1, column 10: func=MMAP_CHECK_REQPROT needs Linux 6.3; the target kernel is 6.1"),
    ("appraise func=MODULE_CHECK appraise_type=imasig|modsig", "t line 1, column 28: appraise_type=imasig|modsig needs CONFIG_IMA_APPRAISE_MODSIG (not in Debian 12)"),
    ("appraise func=MODULE_CHECK appraise_flag=check_blacklist", "t line 1, column 28: appraise_flag= needs CONFIG_IMA_APPRAISE_MODSIG (not in Debian 12)"),
    ("appraise appraise_type=sigv3", "t line 1, column 10: appraise_type=sigv3 needs digest_type=verity before it"),
    ("appraise appraise_type=imasig digest_type=verity", "t line 1, column 31: digest_type=verity must come before appraise_type="),
    ("appraise digest_type=verity appraise_type=imasig", "t line 1, column 29: appraise_type=imasig contradicts digest_type=verity (use sigv3)"),
    ("appraise func=BPRM_CHECK digest_type=verity", "t line 1, column 26: appraise rules with digest_type=verity need appraise_type=sigv3"),
    ("appraise func=MODULE_CHECK digest_type=verity appraise_type=sigv3", "t line 1, column 28: digest_type= is not allowed with func=MODULE_CHECK"),
    ("appraise appraise_type=foo", "t line 1, column 10: appraise_type=foo: use imasig, imasig|modsig or sigv3"),
    ("measure digest_type=sha256", "t line 1, column 9: digest_type=sha256: only 'verity' exists"),
    ("appraise appraise_algos=sha256,sha256", "t line 1, column 10: appraise_algos: sha256 listed twice"),
    ("appraise appraise_algos=sha257", "t line 1, column 10: appraise_algos: unknown hash algorithm 'sha257'"),
    ("appraise func=SETXATTR_CHECK", "t line 1, column 10: func=SETXATTR_CHECK needs appraise_algos="),
    ("appraise func=SETXATTR_CHECK appraise_algos=sha256 fowner=0", "t line 1, column 52: fowner= is not allowed with func=SETXATTR_CHECK"),
    ("measure func=SETXATTR_CHECK", "t line 1, column 9: func=SETXATTR_CHECK only takes appraise, not measure"),
    ("appraise func=KEY_CHECK", "t line 1, column 10: func=KEY_CHECK only takes measure or dont_measure, not appraise"),
    ("measure func=KEY_CHECK obj_type=x", "t line 1, column 24: an LSM condition (obj_*, subj_*) is not allowed with func=KEY_CHECK"),
    ("measure func=KEY_CHECK euid=0", "t line 1, column 24: euid= is not allowed with func=KEY_CHECK"),
    ("measure func=KEXEC_CMDLINE mask=MAY_READ", "t line 1, column 28: mask= is not allowed with func=KEXEC_CMDLINE"),
    ("measure func=BPRM_CHECK\r", "t line 1, column 24: carriage return in rule (DOS line ending?)"),
    ("measure fsname=\u00e9", "t line 1, column 16: non-ASCII or non-printable character '\u00e9'"),
    ("measure fsname=" + "x" * 5000, "t line 1, column 4095: rule longer than 4094 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), REJECTIONS, ids=[r[0][:40] for r in REJECTIONS])
def test_rejections_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(text, source="t")
    assert str(info.value) == message
    assert isinstance(info.value, FormatError)
    line, column = message.removeprefix("t line ").split(":", 1)[0].split(", column ")
    assert (info.value.line, info.value.column) == (int(line), int(column))


def test_kernel_features_widen_the_grammar() -> None:
    modsig = KernelFeatures(modsig=True)
    rule = parse_rule("appraise func=MODULE_CHECK appraise_type=imasig|modsig appraise_flag=check_blacklist", kernel=modsig)
    assert rule.appraise_type is AppraiseType.IMASIG_MODSIG
    with pytest.raises(PolicySyntaxError, match="needs func=MODULE_CHECK"):
        parse_rule("appraise func=BPRM_CHECK appraise_type=imasig|modsig", kernel=modsig)
    with pytest.raises(PolicySyntaxError, match="check_blacklist needs appraise_type=imasig\\|modsig"):
        parse_rule("appraise func=MODULE_CHECK appraise_flag=check_blacklist", kernel=modsig)
    assert parse_rule("measure func=MMAP_CHECK_REQPROT", kernel=KernelFeatures(version=(6, 3))).func is Func.MMAP_CHECK_REQPROT
    with pytest.raises(PolicySyntaxError, match="CONFIG_IMA_MEASURE_ASYMMETRIC_KEYS"):
        parse_rule("measure func=KEY_CHECK", kernel=KernelFeatures(asymmetric_keys=False))


def test_invalid_rules_cannot_be_built() -> None:
    with pytest.raises(FormatError, match="template= is only allowed on measure rules"):
        Rule(Action.APPRAISE, template="ima-sig")
    with pytest.raises(FormatError, match="uid and euid cannot both"):
        Rule(Action.MEASURE, ids=(IdCondition(IdField.UID, Op.EQ, 0), IdCondition(IdField.EUID, Op.EQ, 0)))
    with pytest.raises(FormatError, match="outside"):
        IdCondition(IdField.UID, Op.EQ, 1 << 32)
    with pytest.raises(FormatError, match="unknown template 'ima-foo'"):
        Rule(Action.MEASURE, template="ima-foo")
    with pytest.raises(FormatError, match="fsname value 'a b' cannot be written in a rule"):
        Rule(Action.MEASURE, fsname="a b")
    with pytest.raises(FormatError, match="not a lower-case UUID"):
        Rule(Action.MEASURE, fsuuid="8BCBE394-4f13-4144-be8e-5aa9ea2ce2f6")
    assert Rule(Action.APPRAISE, func=Func.SETXATTR_CHECK, appraise_algos=(HashAlgo.SHA256,))


def test_max_rules() -> None:
    with pytest.raises(PolicySyntaxError, match="line 3, column 1: more than 2 rules"):
        parse_policy("measure\nmeasure\nmeasure\n", max_rules=2)


def test_securityfs_validate_rule_uses_the_grammar() -> None:
    # securityfs.write_policy's last check before the kernel: the full grammar, not only the shape.
    assert securityfs.validate_rule(" measure func=BPRM_CHECK ") == "measure func=BPRM_CHECK"
    with pytest.raises(FormatError, match="template= is only allowed on measure rules"):
        securityfs.validate_rule("appraise func=BPRM_CHECK template=ima-sig")


# --- property tests ---------------------------------------------------------------------------

TOKENS = [
    "func=BPRM_CHECK", "func=MMAP_CHECK", "func=FILE_CHECK", "func=MODULE_CHECK", "func=KEY_CHECK",
    "func=CRITICAL_DATA", "func=SETXATTR_CHECK", "func=KEXEC_CMDLINE", "func=FILE_MMAP", "func=NOPE",
    "mask=MAY_EXEC", "mask=^MAY_READ", "mask=MAY_FLY", "fsmagic=0x9fa0", "fsmagic=EF53", "fsmagic=0xg",
    "fsname=ext4", "fsuuid=8bcbe394-4f13-4144-be8e-5aa9ea2ce2f6", "uid=0", "euid>1000", "gid<5", "egid=0",
    "fowner=4242", "fowner<0", "fgroup>9", "uid=x", "obj_type=bin_t", "subj_role=r", "obj_user=",
    "digest_type=verity", "appraise_type=imasig", "appraise_type=sigv3", "appraise_type=imasig|modsig",
    "appraise_flag=check_blacklist", "appraise_algos=sha256,sha512", "permit_directio", "pcr=11", "pcr=99",
    "template=ima-sig", "template=ima-buf", "keyrings=_ima|.ima", "keyrings=|", "label=selinux", "#",
]  # fmt: skip


@settings(max_examples=400)
@given(st.sampled_from([a.value for a in Action]), st.lists(st.sampled_from(TOKENS), max_size=6))
def test_fuzz_token_soup_parses_or_fails_cleanly_and_round_trips(action: str, tokens: list[str]) -> None:
    text = " ".join([action, *tokens])
    try:
        policy = parse_policy(text)
    except FormatError:
        return
    rendered = render(policy)
    again = parse_policy(rendered)
    assert again == policy
    assert render(again) == rendered


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_only_format_error(text: str) -> None:
    with contextlib.suppress(FormatError):
        policy = parse_policy(text)
        assert parse_policy(render(policy)) == policy


@given(st.lists(st.sampled_from([*TOKENS, "measure", "appraise", "dont_appraise", "\t", " ", "\n", "# c\n"]), max_size=20))
def test_fuzz_multi_line(parts: list[str]) -> None:
    with contextlib.suppress(FormatError):
        policy = parse_policy(" ".join(parts))
        assert isinstance(policy, Policy)
        assert parse_policy(render(policy)) == policy
