"""``report verify`` and the template name, which the kernel does not hash (the audit's renames).

The audit renamed entry 3 of the lab log (``/opt/imaguard-lab/signed-echo``, ``ima-sig``, signed)
to ``x-custom`` (raw fields: empty path and digest, stated as a ``package``), to ``ima-buf`` and to
the custom format ``d-ng|n-ng|buf`` (same layout as ``ima-sig``: the executed file became a
``buffer`` with no signature recorded); replay and quote still matched and verify said verified.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.errors import TrustError
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay
from imaguard.packages.index import DigestIndex
from imaguard.report.build import build_report
from imaguard.report.model import HostFacts
from imaguard.report.verify import verify_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


@pytest.mark.parametrize(("mode", "reason", "message"), [
    ("unknown", "unknown-template", "entry 3 states template 'x-custom', which is neither a built-in IMA template "
                                    "nor a format of known fields, so its template data cannot be checked"),
    ("buf", "entry-mismatch", RENAMED.format("ima-buf")),
    ("fmt", "entry-mismatch", RENAMED.format("d-ng|n-ng|buf")),
])  # fmt: skip
def test_audit_template_renames_are_refused(tmp_path, capsys, mode, reason, message):
    doc = _lab(tmp_path)
    assert _verify(doc) == ("schema-version", "entries", "replay")
    with pytest.raises(TrustError) as err:
        _verify(_renamed(doc, mode))
    assert (err.value.reason, str(err.value)) == (reason, f"r.json: {message}")
    code, out, err_text = _cli(tmp_path, _renamed(doc, mode), capsys)
    assert (code, out, err_text) == (3, "", f"imaguard: error: {tmp_path}/r.json: {message}\n")


def test_the_real_lab_report_verifies_with_and_without_pinned_templates(tmp_path, capsys):
    doc = _lab(tmp_path)
    code, out, err = _cli(tmp_path, doc, capsys, "--template", "ima-sig", "--template", "ima-buf")
    assert (code, err) == (0, "")
    assert out == f"{tmp_path}/r.json: verified (schema-version, entries, templates, replay)\n"
    code, out, err = _cli(tmp_path, doc, capsys, "--json", "--template", "ima-sig", "--template", "ima-buf")
    assert code == 0
    assert json.loads(out)["templates_pinned"] == ["ima-buf", "ima-sig"]


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
    assert _verify(doc) == ("schema-version", "entries", "replay")  # docs/report.md: not proven
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
    assert _verify(doc) == ("schema-version", "entries", "replay")


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
