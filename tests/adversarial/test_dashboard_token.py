"""The dashboard's token stays secret: raw HTTP against a real dashboard, and ``--open`` through the CLI.

- every method without the token (and every method but GET, even with it) answers 403 with an empty body: no
  501 and no HTML page that echoes the request; a malformed request gets its status and an empty body too;
- a Host header other than the bound address or localhost is refused even with the token (DNS rebinding), and
  so are a missing Host and two Hosts;
- ``tether dashboard --open`` never puts the token on the browser's command line (the "browser" is a script that
  records its argv): it gets a page only this user can read, which forwards to the URL with the token, and
  following it opens the dashboard.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.helpers import wait_for, write_project
from tests.integration.dashboard.test_dashboard import CHROMIUM, CHROMIUM_ARGS
from tether import config
from tether.dashboard.server import Dashboard, host_allowed

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND")


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dashboard]:
    project = config.load(write_project(tmp_path / "proj", items=3) / "tether.toml")
    board = Dashboard(project, port=0, poll_s=30).start()
    try:
        yield board
    finally:
        board.stop()


def request(
    port: int, method: str, path: str, *, host: str | None = None, hosts: int = 1, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request by http.client; ``host`` replaces the Host header (``hosts`` times)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for _ in range(hosts):
            conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_every_method_without_the_token_is_403_with_an_empty_body(dash: Dashboard) -> None:
    for method in METHODS:
        for path in ("/", "/?token=wrong", "/api/snapshot", "/api/events?token=", "/static/app.js"):
            body = b'{"x": 1}' if method in ("POST", "PUT", "PATCH") else None
            assert request(dash.port, method, path, body=body) == (403, b""), (method, path)


def test_only_get_is_served_even_with_the_token(dash: Dashboard) -> None:
    path = f"/?token={dash.token}"
    status, page = request(dash.port, "GET", path)
    assert status == 200 and b"tether dashboard" in page
    for method in METHODS[1:]:
        assert request(dash.port, method, path) == (403, b""), method


def test_a_malformed_request_gets_no_page(dash: Dashboard) -> None:
    """A request line the server cannot read gets its 4xx with an empty body (one without a version is
    HTTP/0.9, answered by nothing at all), never the standard error page that echoes what was sent."""
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", dash.port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert body == b"" and b"<" not in answer, (raw[:20], answer[:200])
        assert answer == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", head), (raw[:20], answer[:200])  # 0.9: no head


def test_a_foreign_host_is_refused_even_with_the_token(dash: Dashboard) -> None:
    path = f"/?token={dash.token}"
    port = dash.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1", f"LOCALHOST:{port}"):
        assert request(port, "GET", path, host=host)[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"127.0.0.1:{port + 1}", ""):
        assert request(port, "GET", path, host=host) == (403, b""), host
    assert request(port, "GET", path, hosts=0) == (403, b"")  # no Host at all
    assert request(port, "GET", path, hosts=2) == (403, b"")  # two Hosts: which one would a proxy believe?


def test_the_host_rule_on_other_addresses() -> None:
    assert host_allowed(["[::1]:80"], "::1", 80) and not host_allowed(["[::2]:80"], "::1", 80)
    assert host_allowed(["127.0.0.1:80"], "localhost", 80)
    assert host_allowed(["192.168.1.5:80"], "0.0.0.0", 80)  # any interface: an IP literal cannot be rebound
    assert not host_allowed(["attacker.example:80"], "0.0.0.0", 80)


RECORDER = """\
import json, sys
with open({out!r}, "w") as fh:
    json.dump(sys.argv, fh)
"""


def test_open_never_puts_the_token_on_a_command_line(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=3)
    argv_file = tmp_path / "browser-argv.json"
    browser = tmp_path / "browser"
    browser.write_text("#!" + sys.executable + "\n" + textwrap.dedent(RECORDER.format(out=str(argv_file))))
    browser.chmod(0o700)
    env = {**os.environ, "BROWSER": str(browser), "DISPLAY": ""}
    with subprocess.Popen(
        [sys.executable, "-m", "tether", "dashboard", "--port", "0", "--poll", "1h", "--open"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _open_and_follow(proc, argv_file)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def _open_and_follow(proc: subprocess.Popen[str], argv_file: Path) -> None:
    """The browser's argv holds no token, only a private page that forwards to the URL with it; following that
    opens the dashboard, and the page is removed once used."""
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    token = re.search(r"token=([^&\s]+)", url)
    assert token, url
    argv = wait_for(lambda: argv_file.exists() and argv_file.read_text(), timeout=60, what="the browser")
    assert token.group(1) not in argv, argv
    opened = [a for a in json.loads(argv)[1:] if a.startswith("file://")]
    assert len(opened) == 1, argv
    page = Path(unquote(urlparse(opened[0]).path))
    mode = page.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.getuid()
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    forward = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', page.read_text())
    assert forward and forward.group(1).replace("&amp;", "&") == url
    port = urlparse(url).port
    assert port is not None
    status, body = request(port, "GET", url[url.index("/", len("http://")) :])
    assert status == 200 and b"tether dashboard" in body  # the browser got there, with the token
    wait_for(lambda: not page.exists(), timeout=30, what="the forwarding page to be removed once used")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_real_browser_follows_the_forwarding_page_to_the_live_page(dash: Dashboard) -> None:
    """What --open hands the browser, opened in a real one: it lands on the live page with the token."""
    from playwright.sync_api import sync_playwright

    opener = dash.write_opener()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(opener.as_uri())
            page.wait_for_url(dash.url, timeout=20_000)
            page.wait_for_selector("#project", state="attached", timeout=20_000)
            assert page.title() in ("tether dashboard", "tether proj")  # the project's name once the data came
        finally:
            browser.close()
    wait_for(lambda: not opener.exists(), timeout=30, what="the forwarding page to be removed once used")


def test_a_reader_that_goes_away_leaves_no_traceback(dash: Dashboard, capfd: pytest.CaptureFixture[str]) -> None:
    """A browser tab closed mid-request resets its connection: the terminal running `tether dashboard` shows no
    traceback for it (the server's other errors still print theirs)."""
    before = threading.active_count()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10)
        sock.sendall(f"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a clean close
    assert request(dash.port, "GET", "/")[0] == 403  # the server still answers
    wait_for(lambda: threading.active_count() <= before, 30, "the reset connections' handlers to end")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
