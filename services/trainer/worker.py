"""The worker loop inside the trainer service: settle jobs whose lease expired, claim one, run
it in a child process (``services.trainer.job_process``), settle what the child left unsettled.

Each claim gets its own holder name (``queue.new_holder``), passed to the child, whose every
write names it: a child that outlived its lease cannot touch the job once another holder has it."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

from services.common.logging import forget, log_once
from services.common.queue import new_holder
from services.trainer import jobs
from services.trainer.metrics import (
    JOB_DURATION,
    JOB_FAILURES,
    JOBS_BY_STATE,
    JOBS_FINISHED,
    PEAK_MEMORY,
    TOKENS_PER_SECOND,
)
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def runner_command(claim: jobs.Claim) -> list[str]:
    """The command line of the child process that runs one claimed job attempt."""
    return [
        sys.executable,
        "-m",
        "services.trainer.job_process",
        str(claim.job_id),
        claim.holder,
        str(claim.attempt),
    ]


def spawn_runner(claim: jobs.Claim) -> subprocess.Popen[bytes]:
    """The child inherits the environment, so it reads the same settings as this process."""
    return subprocess.Popen(runner_command(claim))


def run_one(settings: TrainerSettings, stop: threading.Event | None = None) -> int | None:
    """Claim and run one job to its end in a child process; returns its id, or None if idle."""
    url = settings.resolved_database_url
    claim = jobs.claim(url, new_holder("trainer"))
    if claim is None:
        return None
    started = time.monotonic()
    child = spawn_runner(claim)
    waiter = stop or threading.Event()
    while child.poll() is None:
        if waiter.wait(0.5):
            child.kill()  # shutting down: the job goes back to the queue and resumes elsewhere
            child.wait()
            jobs.release(url, claim)
            return claim.job_id
    if child.returncode != 0:
        state = jobs.after_crash(
            url, claim, f"runner exited with code {child.returncode}", settings.max_attempts
        )
        JOB_FAILURES.labels("crash").inc()
        log.warning("job %d: runner exited with %d; job now %s", claim.job_id, child.returncode, state)
    _observe(url, claim.job_id, time.monotonic() - started)
    return claim.job_id


def _observe(url: str, job_id: int, seconds: float) -> None:
    job = jobs.get_job(url, job_id)
    method = str(job.config.get("method", "lora"))
    JOB_DURATION.labels(method, job.state).observe(seconds)
    if job.state in jobs.FINAL:
        JOBS_FINISHED.labels(job.state).inc()
    if job.state == jobs.FAILED and not (job.error or "").startswith("gave up"):
        JOB_FAILURES.labels("error").inc()
    if job.state == jobs.SUCCEEDED:
        PEAK_MEMORY.labels(method, job.metrics.get("peak_memory_kind", "unknown")).set(
            job.metrics.get("peak_memory_bytes", 0)
        )
        TOKENS_PER_SECOND.labels(method).set(job.metrics.get("tokens_per_second", 0.0))


class Worker(threading.Thread):
    """Runs jobs one at a time until ``stop()``; several services can share one queue."""

    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__(name="trainer-worker", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        url = self.settings.resolved_database_url
        while not self._stop_event.is_set():
            try:
                jobs.recover_stale(url, self.settings.lease_seconds, self.settings.max_attempts)
                for state, count in jobs.count_by_state(url).items():
                    JOBS_BY_STATE.labels(state).set(count)
                ran = run_one(self.settings, self._stop_event)
                forget(log, "worker-loop")
            except Exception as exc:  # the loop must survive a database blip; say so once
                log_once(log, logging.ERROR, "worker-loop", "trainer worker loop failed (retrying): %s", exc)
                ran = None
            if ran is None:
                self._stop_event.wait(self.settings.worker_poll_seconds)
