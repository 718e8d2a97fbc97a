"""Fetching bundles over HTTP is bounded in time and keeps its scheme (audit): a server trickling a
byte at a time no longer holds enroll for ever, and a redirect to ftp: (or from https to http) is
refused. A real HTTP server on 127.0.0.1 in a thread; no internet."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imaguard.keys.signer import Verifier
from imaguard.sign import sources
from imaguard.sign.sources import BundleSource, NoSignature


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/b/slow.bundle":  # a byte every 0.2 s, for ever (until the client leaves)
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(500):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        elif self.path == "/b/ftp.bundle":
            self._redirect("ftp://127.0.0.1:1/ftp.bundle")
        elif self.path == "/b/moved.bundle":
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1]}/b/here.bundle")
        elif self.path == "/b/here.bundle":
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
        else:
            self.send_error(404)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/b"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _source(location: str) -> BundleSource:
    return BundleSource(location, (), Verifier.of([]))


def test_a_trickling_server_is_given_up_at_the_deadline(server, monkeypatch):
    monkeypatch.setattr(sources, "_FETCH_DEADLINE_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(NoSignature) as err:
        _source(server)._fetch("slow.bundle")
    assert time.monotonic() - t0 < 5
    assert (str(err.value), err.value.reason) == (f"{server}/slow.bundle: not received within 1 s",
                                                  "bundle-unavailable")  # fmt: skip


def test_a_redirect_to_another_scheme_is_refused_one_within_it_followed(server):
    with pytest.raises(NoSignature) as err:
        _source(server)._fetch("ftp.bundle")
    assert str(err.value) == (f"{server}/ftp.bundle: <urlopen error redirect to ftp://127.0.0.1:1/ftp.bundle "
                              "refused: it leaves http>")  # fmt: skip
    assert err.value.reason == "bundle-unavailable"
    assert _source(server)._fetch("moved.bundle") == b"hello"
    assert _source(server)._fetch("missing.bundle") is None
