"""A local S3 server for tests and benchmarks: moto in server mode on 127.0.0.1, with its request
recorder (every request's method, URL and headers, e.g. the ``Range`` of each GET)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# moto accepts any credentials; these are placeholders, not secrets
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A moto S3 server process on 127.0.0.1 with its request recorder."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = tmp / "moto_recording.jsonl"
        env = os.environ | FAKE_AWS | {"MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):  # bounded wait for the server to answer
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited at start")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not answer in 10 s")

    def recorder(self, action: str) -> bytes:
        method = "GET" if action == "download-recording" else "POST"
        req = urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


    def recorded(self) -> list[dict]:
        """The requests recorded since ``recorder("start-recording")``."""
        return [json.loads(line) for line in self.recorder("download-recording").decode().splitlines() if line]
