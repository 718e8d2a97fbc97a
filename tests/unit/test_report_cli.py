"""``imaguard report`` user mistakes: one line, exit 2; ``report verify`` on something that is not a report: exit 3."""

from __future__ import annotations

from pathlib import Path

from imaguard.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "tests" / "data" / "keys"


def test_sign_needs_cert(capsys):
    assert main(["report", "--sign", str(KEYS / "ima-test-rsa2048.key")]) == 2
    assert capsys.readouterr().err == "imaguard: error: --sign needs --cert (the certificate of the signing key)\n"


def test_missing_index_is_named(tmp_path, capsys):
    assert main(["report", "--index", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {tmp_path}/index.sqlite: no digest index; "
                                       "build it with `imaguard packages index`\n")  # fmt: skip


def test_nonce_is_for_the_json_and_text_reports_and_sign_for_json(tmp_path, capsys):
    assert main(["report", "--format", "cel", "--nonce", "x", "--index", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("imaguard: error: --nonce applies to the json and text reports, not to "
                                       "--format cel\n")  # fmt: skip
    key, cert = KEYS / "ima-test-rsa2048.key", KEYS / "ima-test-rsa2048.pem"
    assert main(["report", "--format", "text", "--sign", str(key), "--cert", str(cert), "--index", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "imaguard: error: --sign applies to the json report, not to --format text\n"


def test_verify_of_a_non_report_fails_verification(tmp_path, capsys):
    junk = tmp_path / "r.json"
    junk.write_text('{"schema": "something else"}')
    assert main(["report", "verify", str(junk)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: verification failed: {junk}: not an imaguard report "
                                       "(schema 'imaguard.report' missing)\n")  # fmt: skip
    assert main(["report", "verify", "--json", str(junk)]) == 3
    assert capsys.readouterr().out.startswith('{"error": {"reason": "bad-report", "message": "verification failed')


def test_password_file_needs_sign(tmp_path, capsys):
    assert main(["report", "--password-file", str(tmp_path / "pw"), "--index", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("imaguard: error: --password-file is the password of --sign's key: give "
                                       "--sign, or leave it out\n")  # fmt: skip


def test_a_list_that_is_not_one_is_named(tmp_path, capsys):
    # Regression: only "first PCR index ... is not a PCR" was said, not of which file.
    from imaguard.packages.index import DigestIndex  # noqa: PLC0415

    with DigestIndex.open(tmp_path):
        pass
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage garbage garbage garbage")
    assert main(["report", "--file", str(garbage), "--index", str(tmp_path), "--no-processes"]) == 1
    assert capsys.readouterr().err == (f"imaguard: error: {garbage}: first PCR index 67617262 is not a PCR in either "
                                       "byte order (at byte offset 0)\n")  # fmt: skip
