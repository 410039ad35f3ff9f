"""ServiceProcess.stop: SIGTERM to the service alone, as a container runtime sends it, then
nothing of its process group left (the inference service's Ray children hung its shutdown when
they took the SIGTERM too)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from services.pipeline.processes import ServiceProcess

# The leader starts a child that records any SIGTERM and otherwise lives on; the leader itself
# exits on SIGTERM without stopping it (a service that leaves a child behind).
LEADER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[4]])
    open(sys.argv[3], "w").write(str(child.pid))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(600)
    """
)
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    def record(*_):
        open(sys.argv[1], "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, record)
    open(sys.argv[2], "w").write("ready")
    time.sleep(600)
    """
)


def _start(tmp_path: Path, signal_group: bool) -> tuple[ServiceProcess, Path, int]:
    marker, pid_file, ready = tmp_path / "child-signal", tmp_path / "child-pid", tmp_path / "child-ready"
    process = subprocess.Popen(
        [sys.executable, "-c", LEADER, CHILD, str(marker), str(pid_file), str(ready)], start_new_session=True
    )
    deadline = time.monotonic() + 30  # until the child's handler is installed and its pid known
    while not (ready.exists() and pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    service = ServiceProcess(
        "leader", process, "http://127.0.0.1:1", tmp_path / "log", signal_group=signal_group
    )
    return service, marker, int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_stop_signals_the_service_alone_and_leaves_nothing_of_its_group(tmp_path: Path) -> None:
    service, marker, child = _start(tmp_path, signal_group=False)
    service.stop(timeout=10, group_grace=1)
    assert service.process.returncode == 0  # the leader's own SIGTERM handler ran
    assert not marker.exists(), "the child got the SIGTERM meant for the service"
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "a child the service left behind outlived stop()"


def test_signal_group_sends_the_sigterm_to_every_process_of_the_group(tmp_path: Path) -> None:
    service, marker, child = _start(tmp_path, signal_group=True)
    service.stop(timeout=10, group_grace=1)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "SIGTERM"
    assert not _alive(child)
