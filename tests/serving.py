"""Start the real app in a subprocess on a free port (for browser and HTTP tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def alive(self) -> bool:
        return self.process.poll() is None


def start_server(tmp: Path, *extra: str, panel_serve: bool = False) -> Server:
    """launch.py with ``extra`` arguments; or, with ``panel_serve``, ``panel serve app --args extra``."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {**os.environ, "NETATLAS_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
    command = ([sys.executable, "-m", "panel", "serve", "app", "--port", str(port), "--args", *extra] if panel_serve
               else [sys.executable, str(REPO / "launch.py"), "--port", str(port), "--no-show", *extra])
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}/" + ("app" if panel_serve else "")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return Server(url, process, log)
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not answer within 90 s:\n{log.read_text()}")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
