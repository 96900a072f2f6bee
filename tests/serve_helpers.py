"""Real server processes on loopback for the server tests and the load benchmark."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m saganet.serve` in its own process; `stop()` sends SIGTERM, `kill()` SIGKILL."""

    def __init__(self, bundle, state_dir, *args, token=None, log=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "saganet.serve", "--model", str(bundle), "--port", str(self.port),
               "--state-dir", str(state_dir), *map(str, args)]
        if token:
            cmd += ["--token", token]
        self.log_path = Path(log or Path(state_dir) / f"server-{self.port}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        self.headers = {"Authorization": f"Bearer {token}".encode("utf-8")} if token else {}  # tokens are UTF-8
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
        try:
            self._wait_ready()
        except BaseException:  # a server that never became ready must not outlive the test
            self.proc.kill()
            self.proc.wait(30)
            raise

    def _wait_ready(self, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.client.get("/healthz").status_code == 200

    def stop(self, timeout=60) -> bool:
        """SIGTERM; True when the server shut down cleanly (uvicorn re-raises the signal after its
        graceful shutdown, so the exit status is -SIGTERM, and our shutdown line is in the log)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.client.close()
        return rc in (0, -signal.SIGTERM) and "saganet.serve: stopped" in self.log()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.client.close()

    def wait_job(self, job_id, states=("done", "failed"), timeout=120, poll=0.05) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            job = self.client.get(f"/v1/slides/{job_id}").json()
            if job["state"] in states:
                return job
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {job}")
