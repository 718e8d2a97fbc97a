"""``report verify`` and the template name, which the kernel does not hash (the audit's renames).

The audit renamed entry 3 of the lab log (``/opt/imaguard-lab/signed-echo``, ``ima-sig``, signed)
to ``x-custom`` (raw fields: empty path and digest, stated as a ``package``), to ``ima-buf`` and to
the custom format ``d-ng|n-ng|buf`` (same layout as ``ima-sig``: the executed file became a
``buffer`` with no signature recorded); replay and quote still matched and verify said verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import sys
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.errors import FormatError, TrustError
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay
from imaguard.packages.index import DigestIndex
from imaguard.report.build import build_report
from imaguard.report.model import HostFacts
from imaguard.report.verify import check_entries, verify_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reportlib import resummarized

from logbuilder import LogBuilder, d_ng, n_ng

ROOT = Path(__file__).resolve().parents[2]
LAB_LOG = ROOT / "tests" / "data" / "lab" / "binary_runtime_measurements"
HOST = HostFacts("m" * 32, "b", "h", "6.1.0-50-amd64", "#1", "gone", None, ())
NOT_RECORDED = {"status": "not-recorded", "key_id": None}


def _doc(tmp_path: Path, log: bytes) -> dict:
    with DigestIndex.open(tmp_path / "idx") as idx:
        report = build_report(replay(iter_binary(log)), source="lab", lookup=idx, processes=(), host=HOST,
                              generator="imaguard test", created="2026-12-06T00:00:00Z")  # fmt: skip
    return report.to_json()


def _lab(tmp_path: Path) -> dict:
    doc = _doc(tmp_path, LAB_LOG.read_bytes())
    assert (doc["entries"][3]["template"], doc["entries"][3]["path"]) == ("ima-sig", "/opt/imaguard-lab/signed-echo")
    return doc


def _renamed(doc: dict, mode: str) -> dict:
    """/tmp/audit2-w/mut.py: entry 3 renamed, its claims restated to fit, extended digests untouched."""
    changed = json.loads(json.dumps(doc))
    e = changed["entries"][3]
    if mode == "buf":
        e.update(template="ima-buf", signature=NOT_RECORDED, **{"class": "buffer"})
    elif mode == "unknown":
        e.update(template="x-custom", path="", digest="", signature=NOT_RECORDED, **{"class": "package"})
    elif mode == "fmt":
        e.update(template="d-ng|n-ng|buf", signature=NOT_RECORDED, **{"class": "buffer"})
    return changed


def _verify(doc: dict, templates: frozenset[str] | None = None) -> tuple[str, ...]:
    return verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json", templates=templates).checks


def _cli(tmp_path: Path, doc: dict, capsys, *options: str) -> tuple[int, str, str]:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    code = main(["report", "verify", *options, str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


RENAMED = "entry 3 states template {!r}: a buffer named like a file path ('/opt/imaguard-lab/signed-echo') that " \
    "holds an IMA signature, as a file measurement's sig field does; the template name is not in the template " \
    "hash, so this is a file entry renamed"  # fmt: skip


UNAUTHENTICATED = ("imaguard: warning [W-UNAUTHENTICATED]: nothing authenticates this report (no signature "
                   "checked with --cert, no quote by a pinned --ak): anyone could have written it; what verified "
                   "is only that it is consistent in itself\n")


@pytest.mark.parametrize(("mode", "reason", "message"), [
    ("unknown", "unknown-template", "entry 3 states template 'x-custom', which is neither a built-in IMA template "
                                    "nor a format of known fields, so its template data cannot be checked"),
    ("buf", "entry-mismatch", RENAMED.format("ima-buf")),
    ("fmt", "entry-mismatch", RENAMED.format("d-ng|n-ng|buf")),
])  # fmt: skip
def test_audit_template_renames_are_refused(tmp_path, capsys, mode, reason, message):
    doc = _lab(tmp_path)
    assert _verify(doc) == ("schema-version", "entries", "replay", "summary")
    with pytest.raises(TrustError) as err:
        _verify(_renamed(doc, mode))
    assert (err.value.reason, str(err.value)) == (reason, f"r.json: {message}")
    code, out, err_text = _cli(tmp_path, _renamed(doc, mode), capsys)
    assert (code, out, err_text) == (3, "", f"imaguard: error: {tmp_path}/r.json: {message}\n")


def test_the_real_lab_report_verifies_with_and_without_pinned_templates(tmp_path, capsys):
    doc = _lab(tmp_path)
    code, out, err = _cli(tmp_path, doc, capsys, "--template", "ima-sig", "--template", "ima-buf")
    assert (code, err) == (0, UNAUTHENTICATED)  # neither signed nor quoted: consistent, not authenticated
    assert out == f"{tmp_path}/r.json: verified (schema-version, entries, templates, replay, summary)\n"
    code, out, err = _cli(tmp_path, doc, capsys, "--json", "--template", "ima-sig", "--template", "ima-buf")
    assert (code, err) == (0, UNAUTHENTICATED)
    assert json.loads(out)["templates_pinned"] == ["ima-buf", "ima-sig"]
    assert json.loads(out)["authenticated"] is False


def test_pinned_templates_refuse_any_other_boot_aggregate_included(tmp_path, capsys):
    """The lab's genuine ima-buf entry (a key added to _ima) is refused when only ima-sig is pinned,
    and so is a boot_aggregate under another template than the pinned one."""
    doc = _lab(tmp_path)
    code, _, err = _cli(tmp_path, doc, capsys, "--template", "ima-sig")
    assert (code, err) == (3, f"imaguard: error: {tmp_path}/r.json: entry 1 states template 'ima-buf', "
                              "not one of the --template names given (ima-sig)\n")  # fmt: skip
    with pytest.raises(TrustError, match="entry 0 states template 'ima-sig', not one of") as e:
        _verify(doc, frozenset({"ima-ng", "ima-buf"}))
    assert e.value.reason == "template-not-allowed"


@pytest.mark.parametrize(("name", "template", "klass"), [
    ("memfd-like-name", "ima-buf", "buffer"),  # a file logged under its bare name (IMA's d_path fallback)
    ("/usr/local/bin/unsigned", "d-ng|n-ng|evmsig", "unknown"),  # unsigned -> not-recorded
])  # fmt: skip
def test_pinning_catches_a_rename_the_data_does_not_give_away(tmp_path, name, template, klass):
    """A rename to a same-layout template that the data cannot show (docs/report.md, "What a verified
    report proves") verifies without --template; only --template refuses it."""
    b = LogBuilder()
    b.boot_aggregate(template="ima-sig")
    b.add("ima-sig", (d_ng(b"\1" * 32), n_ng(name), b""))
    doc = _doc(tmp_path, b.binary())
    entry = doc["entries"][1]
    assert entry["signature"]["status"] == "unsigned"
    entry.update(template=template, signature=NOT_RECORDED, **{"class": klass})
    resummarized(doc)  # its counts and templates follow the rename
    assert _verify(doc) == ("schema-version", "entries", "replay", "summary")  # docs/report.md: not proven
    with pytest.raises(TrustError, match=f"entry 1 states template '{re.escape(template)}', not one of the "
                                         r"--template names given \(ima-sig\)") as e:  # fmt: skip
        _verify(doc, frozenset({"ima-sig"}))
    assert e.value.reason == "template-not-allowed"


def test_unsigned_file_renamed_to_a_buffer_is_refused(tmp_path):
    """An empty sig field (unsigned file) under a path-like name is no buffer the kernel logs either."""
    b = LogBuilder()
    b.boot_aggregate(template="ima-sig")
    b.add("ima-sig", (d_ng(b"\1" * 32), n_ng("/usr/local/bin/unsigned"), b""))
    doc = _doc(tmp_path, b.binary())
    doc["entries"][1].update(template="ima-buf", signature=NOT_RECORDED, **{"class": "buffer"})
    with pytest.raises(TrustError, match=r"entry 1 states template 'ima-buf': a buffer named like a file path "
                                         r"\('/usr/local/bin/unsigned'\) that holds nothing,") as e:  # fmt: skip
        _verify(doc)
    assert e.value.reason == "entry-mismatch"


def test_a_key_added_to_a_keyring_named_like_a_path_still_verifies(tmp_path):
    """KEY_CHECK names the buffer after the keyring, which any user names: a certificate (DER) under
    '/home/x' is a genuine buffer entry, not a renamed file."""
    b = LogBuilder()
    b.boot_aggregate(template="ima-sig")
    b.add("ima-buf", (d_ng(b"\2" * 32), n_ng("/home/x"), b"\x30\x82\x01\x00" + b"\0" * 0x100))
    doc = _doc(tmp_path, b.binary())
    assert doc["entries"][1]["class"] == "buffer"
    assert _verify(doc) == ("schema-version", "entries", "replay", "summary")


def test_file_entry_of_a_custom_format_without_a_digest_is_refused(tmp_path):
    """A format of known fields the kernel could log (ima_template_fmt=n-ng|sig) but that names no
    file digest: the entry would vouch for no file, whatever class the reporter states."""
    b = LogBuilder()
    b.add("n-ng|sig", (n_ng("/usr/bin/tool"), b""))
    doc = _doc(tmp_path, b.binary())
    with pytest.raises(TrustError, match=r"^r.json: entry 0 is a file measurement \(template 'n-ng\|sig'\) "
                                         "without a file digest: it would vouch for no file$") as e:  # fmt: skip
        _verify(doc)
    assert e.value.reason == "entry-mismatch"


def test_bad_template_option_is_a_usage_error(tmp_path, capsys):
    code, _, err = _cli(tmp_path, _lab(tmp_path), capsys, "--template", "ima_sig")
    assert code == 2
    assert err == ("imaguard: error: --template 'ima_sig': not a built-in IMA template nor a format of known "
                   "fields (ima-ng, ima-sig, ima-buf, d-ng|n-ng|sig, ...)\n")  # fmt: skip


def test_template_data_is_what_the_audit_reused(tmp_path):
    """The renames keep the template data byte for byte: what makes them pass replay and quote."""
    doc = _lab(tmp_path)
    renamed = _renamed(doc, "buf")["entries"][3]
    assert base64.b64decode(renamed["template_data"]) == base64.b64decode(doc["entries"][3]["template_data"])


# --- audit 3 (helper 54): renames the data gives away, hostile documents --------------------------------------

def test_a_buffer_passed_off_as_a_signed_file_is_refused_even_with_pinned_templates(tmp_path):
    """The lab's KEY_CHECK entry (a certificate loaded into _ima) renamed ima-sig: its `sig` field
    would hold DER, which the kernel never logs there (only nothing or a security.ima signature)."""
    doc = _lab(tmp_path)
    e = doc["entries"][1]
    assert (e["template"], e["class"]) == ("ima-buf", "buffer")
    e.update(template="ima-sig", signature={"status": "malformed", "key_id": None}, **{"class": "package"})
    resummarized(doc)
    with pytest.raises(TrustError, match=r"entry 1 states template 'ima-sig', whose sig field holds no IMA "
                                         r"signature \(it starts with byte 0x30\)") as err:  # fmt: skip
        _verify(doc, frozenset({"ima-sig", "ima-buf"}))
    assert err.value.reason == "entry-mismatch"


def test_an_ima_sig_entry_restated_as_the_ima_template_is_refused():
    """A 276-byte ima-sig record is bit for bit the `ima` template's hashed form (d[20] | name padded
    to 256): restated as `ima` it replays the same, with a made-up name and digest. The kernel's
    `ima` name never holds a NUL; this one does (the length fields)."""
    def fld(b: bytes) -> bytes:
        return struct.pack("<I", len(b)) + b

    path = b"/tmp/" + b"e" * 213 + b"/evil"
    digest = hashlib.sha256(b"evil").digest()
    data = fld(b"sha256:\x00" + digest) + fld(path + b"\x00") + fld(b"")
    assert len(data) == 276
    extended = {"sha1": hashlib.sha1(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
    real = {"index": 0, "pcr": 10, "template": "ima-sig", "template_data": base64.b64encode(data).decode(),
            "extended": extended, "path": path.decode(), "digest": f"sha256:{digest.hex()}", "class": "unknown",
            "signature": {"status": "unsigned", "key_id": None}}  # fmt: skip
    name = data[20:].rstrip(b"\x00")
    restated = {**real, "template": "ima", "template_data": base64.b64encode(data[:20] + fld(name)[:4] + name).decode(),
                "path": name.decode("utf-8", "surrogateescape"), "digest": f"sha1:{data[:20].hex()}", "class": "package",
                "signature": NOT_RECORDED}  # fmt: skip
    assert check_entries([real], "little", "r")  # the genuine one checks
    with pytest.raises(TrustError, match=r"entry 0 states template 'ima' with a NUL byte inside its name") as err:
        check_entries([restated], "little", "r")
    assert err.value.reason == "entry-mismatch"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["entries"][0].__setitem__("template", ["ima-sig"]), "entry 0 has no template name"),
    (lambda d: d.__setitem__("nonce", "\ud800"), "nonce is not UTF-8 text"),
])  # fmt: skip
def test_hostile_values_are_a_bad_report_not_a_traceback(tmp_path, capsys, change, message):
    doc = _lab(tmp_path)
    change(doc)
    with pytest.raises(FormatError, match=message) as err:
        _verify(doc, frozenset({"ima-sig", "ima-buf"}))
    assert err.value.reason == "bad-report"
    code, out, err_text = _cli(tmp_path, doc, capsys, "--json", "--template", "ima-sig", "--template", "ima-buf")
    assert code == 3
    assert json.loads(out)["error"]["reason"] == "bad-report"
    assert "Traceback" not in err_text


def test_a_nonce_that_is_not_text_is_a_usage_error(tmp_path, capsys):
    code, out, err = _cli(tmp_path, _lab(tmp_path), capsys, "--nonce", "\udcff")  # undecodable argv byte
    assert (code, out) == (2, "")
    assert err == "imaguard: error: --nonce must be UTF-8 text (it is hashed as UTF-8 into the TPM quote)\n"


def test_a_key_twice_in_one_object_is_refused(tmp_path):
    """Python keeps the last of two equal keys, another parser the first: the verifier and a
    dashboard would read two different reports."""
    doc = _lab(tmp_path)
    text = json.dumps(doc)
    forged = text.replace('"entries": [', '"entries": [], "entries": [', 1)
    with pytest.raises(FormatError, match=r"not JSON \(the key 'entries' appears twice in one object\)") as err:
        verify_report(forged.encode(), certs=(), nonce=None, source="r.json")
    assert err.value.reason == "bad-report"
    with pytest.raises(FormatError, match="NaN is not a JSON number"):
        verify_report(text.replace('"violations": 0', '"violations": NaN', 1).encode(), certs=(), nonce=None,
                      source="r.json")  # fmt: skip


def test_a_process_class_that_is_not_a_string_is_a_summary_mismatch_not_a_traceback(tmp_path):
    doc = _lab(tmp_path)
    doc["processes"] = [{"class": ["package"]}, "not an object"]
    with pytest.raises(TrustError, match=r"counts.processes states .* but the report's processes give") as err:
        _verify(doc)
    assert err.value.reason == "summary-mismatch"


@pytest.mark.parametrize("field", ["log.entries", "log.templates", "log.boot_aggregate", "counts.signatures"])
def test_the_summary_is_the_tally_of_the_checked_entries(tmp_path, field):
    doc = _lab(tmp_path)
    part, key = field.split(".")
    doc[part][key] = {"log.entries": 99, "log.templates": {"ima-sig": 6}, "log.boot_aggregate": None,
                      "counts.signatures": {**doc["counts"]["signatures"], "verified": 6}}[field]  # fmt: skip
    with pytest.raises(TrustError, match=rf"{re.escape(field)} states .* but the report's entries give") as err:
        _verify(doc)
    assert err.value.reason == "summary-mismatch"
