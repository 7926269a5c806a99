"""The HTTP surface of the served app: it answers for its own host names only."""

from __future__ import annotations

import http.client
import urllib.request

import pytest

from tests.serving import start_server, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("srv"))
    yield server
    stop(server)


def get(server, path: str, host: str) -> int:
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


def test_page_is_served_on_loopback_names(server):
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    assert get(server, "/", f"localhost:{port}") == 200
    assert get(server, "/", f"127.0.0.1:{port}") == 200


def test_forged_host_is_refused_page_and_websocket(server):
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not reach the page or the websocket."""
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    assert get(server, "/", f"evil.example:{port}") == 403
    assert get(server, "/ws", f"evil.example:{port}") == 403
    assert server.alive()


def test_thumbnails_only_for_registered_datasets_and_own_host(server):
    """The thumbnail route answers 404 for a dataset no session opened, and 403 to a foreign Host."""
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    assert get(server, "/thumb/0123456789abcdef/0.png", f"localhost:{port}") == 404
    assert get(server, "/thumb/0123456789abcdef/0.png", f"evil.example:{port}") == 403
    assert get(server, "/thumb/../../etc/passwd", f"localhost:{port}") == 404
    assert server.alive()


def test_panel_serve_app_builds_the_page(tmp_path):
    """`panel serve app` runs app/main.py, which parses --args and builds the same page as launch.py."""
    server = start_server(tmp_path, "--cache-dir", str(tmp_path / "cache"), panel_serve=True)
    try:
        with urllib.request.urlopen(server.url, timeout=60) as response:   # builds one session's page
            page = response.read().decode()
        assert "<title>netatlas</title>" in page
        assert server.alive()
    finally:
        stop(server)
    log = server.log.read_text()
    assert "Traceback" not in log and "Error running application handler" not in log, log
