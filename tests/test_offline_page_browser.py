"""tests/browser.py itself: the offline page that every browser test trusts to say "no request, no problem".

Those tests pass on pages that make no request and log nothing, so they would pass just as well if the
recording or the blocking had stopped working. Here a page does both, against a real local HTTP server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser import launch, offline_page, open_offline, skip_without_browser

pytestmark = pytest.mark.browser

skip_without_browser()


@pytest.fixture
def server():
    """A real HTTP server on a free local port; `.hits` lists the paths it was asked for."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
            self.end_headers()
            self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

        def log_message(self, *args):  # keep the test's output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.hits = hits
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_request_out_is_recorded_and_never_reaches_the_server(server, tmp_path):
    outside = f"http://127.0.0.1:{server.server_port}/pixel.gif"
    html = f'<!doctype html><title>page</title><img src="{outside}">'
    with offline_page(tmp_path / "page.html", html) as opened:
        opened.page.evaluate("1")  # a round trip: every event before it has been delivered
        assert opened.requests == [opened.url, outside]
    assert server.hits == []  # aborted in the browser, not merely listed


def test_console_errors_warnings_and_page_errors_are_problems_and_logs_are_not(tmp_path):
    html = ('<!doctype html><title>page</title><script>console.error("an error"); console.warn("a warning");'
            'console.log("a log");</script><script>throw new Error("uncaught here")</script>')
    with offline_page(tmp_path / "page.html", html) as opened:
        opened.page.evaluate("1")
        assert opened.problems[:2] == ["an error", "a warning"]
        assert len(opened.problems) == 3 and "uncaught here" in opened.problems[2]


def test_a_page_keeps_the_default_viewport_unless_one_is_given(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<!doctype html><title>page</title>", encoding="utf-8")
    with launch() as browser:
        assert open_offline(browser, path).page.viewport_size == {"width": 1280, "height": 720}
        wide = open_offline(browser, path, viewport={"width": 1400, "height": 900})
        assert wide.page.viewport_size == {"width": 1400, "height": 900}
