"""Names printed for people stay on one line with every character visible."""

from __future__ import annotations

from imaguard.shown import one_line, shown_path


def test_plain_names_are_shown_as_they_are() -> None:
    assert shown_path("/usr/bin/ls") == "/usr/bin/ls"
    assert shown_path(b"/opt/caf\xc3\xa9 app") == "/opt/café app"


def test_a_newline_cannot_forge_a_second_line() -> None:
    evil = b"/tmp/x\n  unknown-key          /usr/bin/sshd"
    assert shown_path(evil) == "/tmp/x\\n  unknown-key          /usr/bin/sshd"
    assert "\n" not in shown_path(evil)


def test_every_hidden_character_is_escaped_and_backslashes_stay_unambiguous() -> None:
    assert shown_path(b"a\tb\rc\x00d\x1b[31me\x7f") == "a\\tb\\rc\\x00d\\x1b[31me\\x7f"
    assert shown_path(b"\xff\xfe") == "\\xff\\xfe"  # not UTF-8: the bytes
    assert shown_path("evil\u202etxt.exe") == "evil\\u202etxt.exe"  # bidi override
    assert shown_path("a\U000e0001b") == "a\\U000e0001b"  # a tag character
    assert shown_path(b"back\\slash") == "back\\\\slash"  # so "\\n" above cannot be a name's own text
    assert shown_path("\u00a0") == "\\xa0"  # no-break space: not what it looks like


def test_messages_keep_their_backslashes_but_not_their_newlines() -> None:
    assert one_line("CN=x (public\\, do not trust)") == "CN=x (public\\, do not trust)"
    assert one_line("/tmp/a\nb: cannot open") == "/tmp/a\\nb: cannot open"
