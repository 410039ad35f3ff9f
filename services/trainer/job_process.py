"""Runs one claimed job in its own process: ``python -m services.trainer.job_process JOB HOLDER ATTEMPT``.

The worker starts one runner per job, so a crash, an out-of-memory kill or a SIGKILL takes
down the job and not the API; peak RSS is the job's own; and the next attempt resumes from
the job's checkpoint directory. The runner renews the job's lease with a heartbeat that
carries its progress every ``heartbeat_seconds`` from a thread (also while loading,
evaluating and publishing), and stops between steps when the job is being cancelled or the
heartbeat says it no longer holds the job.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from services.common.errors import HsigError
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.trainer import jobs
from services.trainer.config import TrainConfig
from services.trainer.loop import LoopHooks, StepReport, Stopped
from services.trainer.settings import TrainerSettings
from services.trainer.training import train

log = logging.getLogger(__name__)


def checkpoint_dir_for(settings: TrainerSettings, job_id: int) -> Path:
    return settings.checkpoints_path / f"job-{job_id}"


class _Reporter:
    """Beats from a thread every ``interval`` seconds, whatever the job is doing (loading a 13B
    base or publishing takes minutes without a step), so a live job never looks stale; each
    beat carries the latest step and tells whether to stop."""

    def __init__(self, database_url: str, claim: jobs.Claim, interval: float) -> None:
        self.database_url, self.claim, self.interval = database_url, claim, interval
        self.latest: StepReport | None = None
        self.stop_reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_done, name="heartbeat", daemon=True)

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat_until_done(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # a database blip must not kill the job; the next beat retries
                log.warning("heartbeat of job %d failed: %s", self.claim.job_id, exc)

    def beat(self) -> None:
        report = self.latest
        if report is None:
            state = jobs.heartbeat(self.database_url, self.claim, 0, 0, None, None, progress=False)
        else:
            rate = report.elapsed_seconds / report.step if report.step else 0.0
            eta = rate * (report.total_steps - report.step)
            state = jobs.heartbeat(
                self.database_url, self.claim, report.step, report.total_steps, report.loss, eta
            )
        if state is None:
            self.stop_reason = "lost"
        elif state == jobs.CANCELLING:
            self.stop_reason = "cancelled"

    def on_step(self, report: StepReport) -> None:
        self.latest = report
        if report.step == report.total_steps:
            self.beat()  # the last step is recorded before the job closes

    def on_checkpoint(self, step: int, path: Path) -> None:
        jobs.record_checkpoint(self.database_url, self.claim, str(path.parent))

    def should_stop(self) -> bool:
        return self.stop_reason is not None


def run_claimed_job(claim: jobs.Claim, settings: TrainerSettings) -> str:
    """Train the claimed job to its end; returns the state it was left in."""
    url = settings.resolved_database_url
    job = jobs.get_job(url, claim.job_id)
    reporter = _Reporter(url, claim, settings.heartbeat_seconds)
    hooks = LoopHooks(
        on_step=reporter.on_step, should_stop=reporter.should_stop, on_checkpoint=reporter.on_checkpoint
    )
    try:
        config = TrainConfig.model_validate(job.config)
        with reporter:
            checkpoint_dir = checkpoint_dir_for(settings, claim.job_id)
            published = train(config, settings, checkpoint_dir=checkpoint_dir, hooks=hooks)
    except Stopped:
        if reporter.stop_reason == "cancelled":
            jobs.mark_cancelled(url, claim)
            return jobs.CANCELLED
        log.warning("job %d was taken over by another worker; stopping", claim.job_id)
        return "lost"
    except (HsigError, ValueError) as exc:
        message = exc.message if isinstance(exc, HsigError) else str(exc)
        jobs.fail(url, claim, f"{type(exc).__name__}: {message}")
        return jobs.FAILED
    manifest = published.manifest
    jobs.finish(
        url,
        claim,
        {
            "adapter": published.name,
            "version": published.version,
            "path": str(published.path),
            "train_seconds": manifest.train_seconds,
            "seconds_per_epoch": manifest.seconds_per_epoch,
            "tokens_per_second": manifest.tokens_per_second,
            "peak_memory_bytes": manifest.peak_memory_bytes,
            "peak_memory_kind": manifest.peak_memory_kind,
            "trainable_parameters": manifest.trainable_parameters,
            "total_parameters": manifest.total_parameters,
            "resumed_from_step": manifest.extra.get("resumed_from_step", 0),
            "evaluation": manifest.extra.get("evaluation"),
            "validation_loss_before": manifest.extra.get("validation_loss_before"),
            "validation_loss_after": manifest.extra.get("validation_loss_after"),
        },
    )
    return jobs.SUCCEEDED


def main(argv: list[str]) -> int:
    settings = get_settings(TrainerSettings)
    configure_logging(settings.log_level)
    job_id, holder, attempt = int(argv[0]), argv[1], int(argv[2])
    state = run_claimed_job(jobs.Claim(job_id, holder, attempt), settings)
    log.info("job %d: %s", job_id, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
