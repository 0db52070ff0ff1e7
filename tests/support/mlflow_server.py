"""A throwaway `mlflow server` for tests (full mlflow, from the dev extra): a sqlite backend store and local
artifacts in a temporary directory, on a free port; killable and restartable on the same port with its data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.redis_server import free_port


class MlflowServer:
    """`MlflowServer().start()`; `url` is the tracking/registry URI (`http://127.0.0.1:PORT`)."""

    def __init__(self, port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="serving-mlflow-"))
        self.log = log or self.dir / "mlflow-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MlflowServer:
        mlflow = Path(sys.executable).with_name("mlflow")
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.dir}/mlflow.db",
                 "--artifacts-destination", str(self.dir / "artifacts")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self._tail()}")
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer /health within {timeout_s:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        """The end of the server's log (the directory is removed at stop, so errors carry it)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log})"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
