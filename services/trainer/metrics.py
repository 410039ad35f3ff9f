"""Prometheus metrics of the trainer (module-level, one registration per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_DURATION = Histogram(
    "hsig_trainer_job_duration_seconds",
    "Wall time of a training job attempt, by method and outcome.",
    ["method", "outcome"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200),
)
JOBS_FINISHED = Counter(
    "hsig_trainer_jobs_finished_total", "Training jobs that ended, by outcome.", ["outcome"]
)
JOB_FAILURES = Counter(
    "hsig_trainer_job_failures_total",
    "Training job attempts that failed, by reason (crash: the runner died; error: it reported one).",
    ["reason"],
)
PEAK_MEMORY = Gauge(
    "hsig_trainer_peak_memory_bytes",
    "Peak memory of the last finished job, by method and kind.",
    ["method", "kind"],
)
TOKENS_PER_SECOND = Gauge(
    "hsig_trainer_tokens_per_second", "Training throughput of the last finished job.", ["method"]
)
JOBS_BY_STATE = Gauge("hsig_trainer_jobs", "Training jobs in the queue table, by state.", ["state"])
