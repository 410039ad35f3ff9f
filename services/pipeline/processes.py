"""Start a service as a child process, wait until it answers, stop it cleanly.

Used by ``make demo`` and the end-to-end tests, which run every service as the real process
a deployment would run (``hsig <service> serve``), on loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.errors import OperationalError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    _log_handle: object = field(repr=False, default=None)
    signal_group: bool = False

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0, group_grace: float = 5.0) -> None:
        """SIGTERM the service's own process, as a container runtime does; once it has exited,
        its process group (Ray and vLLM spawn children) gets ``group_grace`` seconds to empty,
        then SIGKILL for whatever is left (at once for a service still running after
        ``timeout``). Not SIGTERM to the whole group: it reached Ray's own processes at the
        same moment as the service, whose orderly shutdown (``serve.delete``, ``ray.shutdown``)
        then hung on a dying cluster (the inference service, measured once by hand: more than
        60 s against 2.7 s for the service alone). ``signal_group``: SIGTERM goes to the group
        (a wrapper such as ``buildah run`` that may not pass the signal on)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.signal_group:
                    os.killpg(self.process.pid, signal.SIGTERM)
                else:
                    self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # The group's grace only once the service is gone: still running, it is killed at once.
        deadline = time.monotonic() + (group_grace if self.process.poll() is not None else 0)
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        if self._log_handle is not None:
            self._log_handle.close()  # type: ignore[attr-defined]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def launch_service(
    name: str, args: Sequence[str], port: int, env: Mapping[str, str], log_dir: Path
) -> ServiceProcess:
    """Run ``hsig <args>`` in its own process group; returns at once (see ``wait_ready``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.pipeline.cli", *args],
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches every child
    )
    return ServiceProcess(name, process, f"http://127.0.0.1:{port}", log_path, handle)


def wait_ready(
    service: ServiceProcess, ready_path: str = "/readyz", timeout: float = 180.0
) -> ServiceProcess:
    """Poll ``ready_path`` until it answers 200; stop the service and raise if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            code = service.process.returncode
            service.stop()
            raise OperationalError(f"{service.name} exited with {code}:\n{service.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.base_url + ready_path, timeout=2).status_code == 200:
                return service
        time.sleep(0.5)
    service.stop()
    raise OperationalError(f"{service.name} was not ready after {timeout:.0f} s:\n{service.log_tail()}")


def start_service(
    name: str,
    args: Sequence[str],
    port: int,
    env: Mapping[str, str],
    log_dir: Path,
    ready_path: str = "/readyz",
    timeout: float = 180.0,
) -> ServiceProcess:
    """``launch_service`` then ``wait_ready``."""
    return wait_ready(launch_service(name, args, port, env, log_dir), ready_path, timeout)
