"""Scoring at engine speed (issue 17): our serving path against vLLM's own OpenAI server.

One run, the same tiny model, the same LoRA adapter and the same prompts (a fresh headline and
minute every request, so only the shared instruction prefix comes from the prefix cache; each
server has its own stream of the same sequence):

- engine alone: ``VllmEngine.label_logprobs`` in this process, concurrency 64 (the ceiling);
- our batch path: ``POST /v1/predict`` with 64 items per request, 4 requests in flight;
- our single-item path: ``POST /v1/predict``, one item, concurrency 1 and 64;
- vLLM's own server: ``python -m vllm.entrypoints.openai.api_server`` from this venv,
  ``/v1/completions`` with ``max_tokens`` 1, concurrency 1 and 64.

All three are started once and measured in alternating rounds (12; ``--quick`` 2 short ones),
the order rotating each round, every server but the one under load frozen with SIGSTOP
(``Frozen``): the machine's own speed drifts more between minutes than the servers differ.
Each goal is judged on its per-round paired figures: a 95% interval over the rounds (met only
when all of it is on the goal's side), with their median, range and the rounds that meet it:
single-item c64 >= 1.0x vLLM's server c64 (req/s); our c1 p50 at most 5 ms above vLLM's c1
p50; the 64-item batch >= 0.8x the engine alone (items/s).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scoring.py [--quick] [--rounds N]
        [--direct-ingress] [--ours-only] [--ray-serve-same-loop] [--httpx-client]

``--direct-ingress`` serves our stack through Ray Serve's direct ingress (``HSIG_DIRECT_INGRESS``:
the replica answers HTTP, no proxy hop). ``--ours-only`` leaves vLLM's server out and
``--ray-serve-same-loop`` runs our stack with part of Ray Serve's throughput-optimised settings
(``RAY_SERVE_SAME_LOOP``), for A/B runs. The load average is printed at the start, at every
round and at the end. Requests go only to 127.0.0.1, through aiohttp clients with 64
keep-alive connections, one per server (``LoadClient``; ``--httpx-client`` loads them with the
httpx client earlier runs used, which took up to a core of the two at concurrency 64).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_inference import FIRST_TIME, HEADLINES  # noqa: E402  (the same prompts)

BATCH_ITEMS = 64
BATCH_IN_FLIGHT = 4
GOALS = {"single_c64_vs_vllm_c64": 1.0, "batch_vs_engine": 0.8}
P50_BUDGET_MS = 5.0
MAX_SECONDS_PER_CASE = 90.0
CONNECTIONS = 64
# After a server is thawed: time for the timers that came due while it was stopped to fire
# (keep-alive timeouts, Ray's heartbeats and control loop) before its cases start.
THAW_SECONDS = 1.0
# Before the first round: every server idle together (see settle()).
IDLE_CORES, SETTLE_SECONDS = 0.25, 180.0
# A keep-alive connection the server closed as we reused it: counted, and sent again.
RECONNECT_ERRORS = (httpx.TransportError, aiohttp.ClientConnectionError)
# One engine configuration for all three paths. max_lora_rank matters most: vLLM pads every
# adapter to it, and on these cores rank 16 ran the engine 2-3x slower than rank 8 (measured,
# docs/benchmarks.md); the bench adapter is rank 8. Our service's default is 16, so the stack
# under test is started with these, not its defaults (an earlier version compared ours at 16
# against the other two at 8).
ENGINE = {"max_loras": 4, "max_lora_rank": 8, "max_num_seqs": 64, "max_model_len": 1024}
# Part of Ray Serve 2.60's RAY_SERVE_THROUGHPUT_OPTIMIZED bundle (ray/serve/_private/constants.py):
# user code and the router on the replica's own event loop, request-path logs buffered. Measured
# slower here (docs/benchmarks.md, issue 17), so the service keeps Ray's defaults;
# --ray-serve-same-loop runs our stack with these to measure them again. (A local Ray's
# processes inherit this process's environment.)
RAY_SERVE_SAME_LOOP = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


@dataclass(frozen=True)
class Case:
    path: str
    concurrency: int
    requests: int
    items: int
    seconds: float
    latencies_ms: list[float]

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def line(self) -> str:
        return (
            f"{self.path:34s} c={self.concurrency:<3d} n={self.requests:<5d} "
            f"{self.requests_per_s:8.1f} req/s {self.items_per_s:8.1f} items/s  "
            f"p50 {statistics.median(self.latencies_ms):7.1f} ms  p99 {self.percentile(0.99):7.1f} ms"
        )


async def measure(
    path: str, concurrency: int, requests: int, items_per_request: int, call: Callable[[], Awaitable[None]]
) -> Case:
    """``requests`` calls, ``concurrency`` at a time, capped in time, after one untimed round of
    ``concurrency`` calls at once: the first batch of that size after a quieter case warms the
    engine and the server (one call used to, and the first round of a c64 case then weighed on
    its p99 and its req/s in a 512-request run).

    The bench process's own heap is then frozen out of the garbage collector's reach: the
    engine alone leaves torch, vLLM and transformers loaded here (about 870,000 objects), and
    a full collection of them paused this client for 0.5 s in the middle of whichever case
    tripped it (in a 3 s case: every connection idle, the p99 and the req/s of that server
    alone). Measured with ``gc.callbacks``; the servers are separate processes."""
    await asyncio.gather(*(_retried(call) for _ in range(concurrency)))
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    errors: list[int] = []
    remaining = iter(range(requests))
    deadline = time.perf_counter() + MAX_SECONDS_PER_CASE

    async def worker() -> None:
        for _ in remaining:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            if not await _retried(call):
                errors.append(1)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    case = Case(path, concurrency, len(latencies), len(latencies) * items_per_request, seconds, latencies)
    print(case.line() + (f"  ({len(errors)} reconnects)" if errors else ""), flush=True)
    return case


async def _retried(call: Callable[[], Awaitable[None]]) -> bool:
    """One call; sent once more on a fresh connection if the server closed the keep-alive
    connection as it was reused (a thawed server closes the ones idle past its keep-alive
    timeout). False when it had to be sent again: the latency then includes the retry."""
    try:
        await call()
    except RECONNECT_ERRORS:
        await call()
        return False
    return True


def _item(prompts: Prompts) -> dict[str, str]:
    headline, published_at = prompts.next()
    return {"headline": headline, "published_at": published_at.isoformat()}


class EngineAlone:
    """``VllmEngine.label_logprobs`` in this process, no HTTP: the ceiling the batch goal is
    measured against. Started once; its two engine processes are frozen between its turns."""

    def __init__(self, model_dir: Path, adapter_dir: Path, scratch: Path) -> None:
        from transformers import AutoTokenizer

        from services.common.prompts import TREND_LABELS, bos_id_of, label_token_ids
        from services.inference.engine import EngineConfig, LoraRef, VllmEngine
        from services.inference.settings import InferenceSettings

        # The replica runs under the service's GIL switch interval; the ceiling runs under the same.
        sys.setswitchinterval(InferenceSettings.model_fields["gil_switch_interval_ms"].default / 1000)
        self.engine = VllmEngine.start(EngineConfig(model=str(model_dir), scratch_dir=str(scratch), **ENGINE))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.lora = LoraRef("bench", 1, str(adapter_dir))
        self.labels = label_token_ids(self.tokenizer, TREND_LABELS)
        self.bos = bos_id_of(self.tokenizer)
        self.prompts = Prompts()

    async def load_adapter(self) -> None:
        await self.engine.pin_base()
        await self.engine.add_adapter(self.lora)

    async def case(self, count: int) -> Case:
        from services.common.prompts import btc_trend_prompt

        async def one() -> None:
            headline, published_at = self.prompts.next()
            text = btc_trend_prompt(headline, published_at)
            ids = [self.bos, *self.tokenizer.encode(text, add_special_tokens=False)]
            await self.engine.label_logprobs(ids, self.labels, self.lora)

        return await measure("engine alone", 64, count, 1, one)


class Prompts:
    """A prompt stream of its own per server, the same sequence for each: a real headline and a
    new minute every request (only the shared instruction prefix comes from the prefix cache),
    and in the same round every server scores the same headlines."""

    def __init__(self) -> None:
        self._numbers = itertools.count()

    def next(self) -> tuple[str, datetime]:
        number = next(self._numbers)
        return HEADLINES[number % len(HEADLINES)], FIRST_TIME + timedelta(minutes=number)


class LoadClient:
    """The bench's HTTP client for both servers: aiohttp, ``CONNECTIONS`` keep-alive connections.

    The client shares the 2 cores with the server it measures, so it must cost little. httpx
    did not: its connection pool scans every connection on every request (``has_expired``, a
    ``getpeername`` per connection), and at concurrency 64 a py-spy profile of the bench showed
    it taking 70-100% of a core in the runs where our stack fell behind (``--httpx-client``
    keeps it, for paired runs).
    """

    def __init__(self, base_url: str, use_httpx: bool = False) -> None:
        self.base_url = base_url
        self.use_httpx = use_httpx
        self._httpx: httpx.AsyncClient | None = None
        self._aiohttp: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadClient:
        if self.use_httpx:
            limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
            self._httpx = httpx.AsyncClient(base_url=self.base_url, timeout=300, limits=limits)
        else:
            self._aiohttp = aiohttp.ClientSession(
                base_url=self.base_url,
                connector=aiohttp.TCPConnector(limit=CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=300),
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()
        if self._aiohttp is not None:
            await self._aiohttp.close()

    async def post(self, path: str, body: dict[str, object]) -> tuple[int, str]:
        if self._httpx is not None:
            response = await self._httpx.post(path, json=body)
            return response.status_code, response.text
        assert self._aiohttp is not None, "use LoadClient as an async context manager"
        async with self._aiohttp.post(path, json=body) as answer:
            return answer.status, (await answer.read()).decode()


async def predict_case(
    client: LoadClient,
    adapter: str,
    items: int,
    concurrency: int,
    requests: int,
    label: str = "",
    prompts: Prompts | None = None,
) -> Case:
    """``POST /v1/predict`` with ``items`` fresh headlines per request (also gpu_inference.py's)."""
    stream = prompts or Prompts()

    async def predict() -> None:
        body = {"items": [_item(stream) for _ in range(items)], "adapter": adapter}
        status, text = await client.post("/v1/predict", body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {text[:200]}")

    name = label or f"our /v1/predict, {items} item{'s' if items > 1 else ''}"
    return await measure(name, concurrency, requests, items, predict)


@dataclass(frozen=True)
class Sizes:
    """Requests per case in one round."""

    c1: int
    c64: int
    batches: int


FULL, QUICK = Sizes(c1=32, c64=512, batches=8), Sizes(c1=16, c64=256, batches=4)
ROUNDS = {"full": 12, "quick": 2}  # 6 rounds gave intervals of about +-20% on these cores


class OurPaths:
    def __init__(self, base_url: str, use_httpx: bool) -> None:
        self.client = LoadClient(base_url, use_httpx)
        self.c1, self.c64, self.batch = Prompts(), Prompts(), Prompts()

    async def round(self, sizes: Sizes) -> dict[str, Case]:
        return {
            "ours_c1": await predict_case(self.client, "bench", 1, 1, sizes.c1, prompts=self.c1),
            "ours_c64": await predict_case(self.client, "bench", 1, 64, sizes.c64, prompts=self.c64),
            "ours_batch": await predict_case(
                self.client, "bench", BATCH_ITEMS, BATCH_IN_FLIGHT, sizes.batches, prompts=self.batch
            ),
        }


class VllmPaths:
    def __init__(self, base_url: str, use_httpx: bool) -> None:
        self.client = LoadClient(base_url, use_httpx)
        self.c1, self.c64 = Prompts(), Prompts()

    async def _case(self, concurrency: int, count: int, prompts: Prompts) -> Case:
        from services.common.prompts import btc_trend_prompt

        async def complete() -> None:
            # Text as a client sends it; vLLM adds BOS itself, so the prompt tokens match ours.
            prompt = btc_trend_prompt(*prompts.next())
            body = {"model": "bench", "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 2}
            status, text = await self.client.post("/v1/completions", body)
            if status != 200:
                raise RuntimeError(f"vLLM HTTP {status}: {text[:200]}")

        return await measure("vLLM server /v1/completions", concurrency, count, 1, complete)

    async def round(self, sizes: Sizes) -> dict[str, Case]:
        return {
            "vllm_c1": await self._case(1, sizes.c1, self.c1),
            "vllm_c64": await self._case(64, sizes.c64, self.c64),
        }


class Frozen:
    """One server's processes, stopped (SIGSTOP) while another server is measured.

    On 2 cores the machine's speed drifted by up to 25% between minutes (the engine alone
    158-273 items/s in one hour, the same code), so servers measured one after the other
    compared minutes, not servers. The bench starts every server once and measures them in
    alternating rounds; an idle server is frozen in the meantime, so it takes no CPU at all
    from the one under load (Ray's idle processes take about 7% of a core, vLLM's a little).
    A server's processes are the children this process gained while starting it, and all
    their descendants at the time of each freeze (Ray's raylet starts workers lazily).
    """

    def __init__(self, roots: set[int]) -> None:
        self.roots = roots

    def pids(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, parent in _parents().items():
            children.setdefault(parent, []).append(pid)
        found, todo = set(), list(self.roots)
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, []))
        return found

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)


async def settle(servers: dict[str, Frozen], seconds: float = SETTLE_SECONDS) -> None:
    """Wait until the started servers are idle together (under ``IDLE_CORES`` of CPU over a
    2 s window), so none carries start-up work into its turns: frozen while still starting, a
    server would finish it inside its own timed cases. (In the runs so far they were idle
    within 4 s, and our stack's slower first rounds stayed: docs/benchmarks.md.)"""
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while True:
        pids = set().union(*(server.pids() for server in servers.values()))
        before = _cpu_seconds(pids)
        await asyncio.sleep(2.0)
        used = (_cpu_seconds(pids) - before) / 2.0
        if used < IDLE_CORES or time.monotonic() > deadline:
            print(
                f"servers idle after {time.monotonic() - started:.0f} s ({used:.2f} cores in the last 2 s)",
                flush=True,
            )
            return


def _cpu_seconds(pids: set[int]) -> float:
    ticks = sum(int(fields[11]) + int(fields[12]) for pid in pids if (fields := _stat(pid)))
    return ticks / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    stats = {int(entry): _stat(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()}
    return {pid: int(fields[1]) for pid, fields in stats.items() if fields}


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); empty if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _children_of_this_process() -> set[int]:
    me = os.getpid()
    return {pid for pid, parent in _parents().items() if parent == me}


def start_vllm_server(model_dir: Path, adapter_dir: Path, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "tiny",
        "--enable-lora", "--lora-modules", f"bench={adapter_dir}",
        "--max-loras", str(ENGINE["max_loras"]), "--max-lora-rank", str(ENGINE["max_lora_rank"]),
        "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--max-model-len", str(ENGINE["max_model_len"]),
        "--dtype", "float32", "--seed", "0",
        "--host", "127.0.0.1", "--port", str(port), "--no-enable-log-requests",
    ]  # fmt: skip
    log = open(Path(tempfile.gettempdir()) / "bench-scoring-vllm.log", "wb")  # noqa: SIM115
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("vLLM's server did not become ready")


def start_ours(root: Path, model_dir: Path, database_url: str, direct_ingress: bool) -> str:
    from services.inference import serve_app
    from services.inference.settings import InferenceSettings
    from tests.support.net import free_port

    settings = InferenceSettings(
        data_dir=root,
        database_url=database_url,
        base_model=str(model_dir),
        port=free_port(),
        max_in_flight=512,
        registry_poll_seconds=0,
        **ENGINE,
        direct_ingress=direct_ingress,
        proxy_port=free_port() if direct_ingress else 0,
    )
    # Ray starts its workers (our replica and its engine core among them) at nice 15; vLLM's own
    # server and the engine alone run at nice 0. On a shared machine that alone decides the
    # comparison, so the bench runs every server at the same priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    print("starting our stack (Ray Serve + vLLM)...", flush=True)
    return serve_app.start(settings)


@dataclass
class Rounds:
    """Every case of every round, by path."""

    cases: dict[str, list[Case]] = field(default_factory=dict)

    def add(self, cases: dict[str, Case]) -> None:
        for path, case in cases.items():
            self.cases.setdefault(path, []).append(case)

    def pooled(self, path: str) -> Case:
        rounds = self.cases[path]
        return Case(
            rounds[0].path,
            rounds[0].concurrency,
            sum(case.requests for case in rounds),
            sum(case.items for case in rounds),
            sum(case.seconds for case in rounds),
            [latency for case in rounds for latency in case.latencies_ms],
        )

    def paired(self, figure: Callable[[int], float]) -> list[float]:
        return [figure(index) for index in range(len(self.cases["engine"]))]


async def alternate(
    servers: dict[str, Frozen], runs: dict[str, Callable[[Sizes], Awaitable[dict[str, Case]]]],
    sizes: Sizes, rounds: int,
) -> Rounds:  # fmt: skip
    """``rounds`` rounds; each measures every server once, the others frozen, in an order that
    rotates from round to round (so no server is always the one measured first or last)."""
    names = list(runs)
    measured = Rounds()
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        print(
            f"-- round {number + 1} of {rounds}: {', '.join(order)} (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
        for name in order:
            servers[name].thaw()
            await asyncio.sleep(THAW_SECONDS)
            try:
                measured.add(await runs[name](sizes))
            finally:
                servers[name].freeze()
    return measured


def report(measured: Rounds) -> None:
    """Pooled figures per path, then each goal from its per-round paired figures: their
    median, range and the rounds that meet it, and a 95% interval (Student's t over the
    rounds: on the log of a ratio, so the centre is a geometric mean; on a difference as
    it is). The verdict needs the whole interval on the goal's side: a centre past the goal
    with an interval across it is reported as not shown."""
    print()
    for path in measured.cases:
        print(f"pooled  {measured.pooled(path).line()}")
    rounds = measured.cases
    goals = [
        (
            "batch_vs_engine", "x", GOALS["batch_vs_engine"], True,
            measured.paired(lambda r: rounds["ours_batch"][r].items_per_s / rounds["engine"][r].items_per_s),
        ),
    ]  # fmt: skip
    if "vllm_c64" in rounds:
        goals += [
            (
                "single_c64_vs_vllm_c64", "x", GOALS["single_c64_vs_vllm_c64"], True,
                measured.paired(lambda r: rounds["ours_c64"][r].requests_per_s / rounds["vllm_c64"][r].requests_per_s),
            ),
            (
                "c1 p50 added over vLLM", " ms", P50_BUDGET_MS, False,
                measured.paired(
                    lambda r: statistics.median(rounds["ours_c1"][r].latencies_ms)
                    - statistics.median(rounds["vllm_c1"][r].latencies_ms)
                ),
            ),
        ]  # fmt: skip
    print()
    for name, unit, goal, at_least, values in goals:
        centre, low, high = _interval(values, ratio=unit == "x")
        meets = [value >= goal if at_least else value <= goal for value in values]
        print(
            f"{name:24s} {centre:6.2f}{unit} [95%: {low:.2f} to {high:.2f}]  median {statistics.median(values):.2f}, "
            f"rounds {min(values):.2f} to {max(values):.2f}, {sum(meets)} of {len(values)} meet it  "
            f"goal {'>=' if at_least else '<='} {goal:g}{unit}: {_verdict(low, high, centre, goal, at_least)}"
        )


def _interval(values: list[float], ratio: bool) -> tuple[float, float, float]:
    """Centre and 95% bounds over the rounds (one round: no interval, its value thrice)."""
    from scipy import stats

    points = [math.log(value) for value in values] if ratio else list(values)
    centre = statistics.fmean(points)
    spread = (
        stats.t.ppf(0.975, len(points) - 1) * statistics.stdev(points) / math.sqrt(len(points))
        if len(points) > 1
        else 0.0
    )
    bounds = (centre, centre - spread, centre + spread)
    return tuple(math.exp(b) for b in bounds) if ratio else bounds  # type: ignore[return-value]


def _verdict(low: float, high: float, centre: float, goal: float, at_least: bool) -> str:
    def meets(value: float) -> bool:
        return value >= goal if at_least else value <= goal

    if meets(low) and meets(high):
        return "met"
    if meets(centre):
        return "not shown (the interval crosses the goal)"
    return "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 12, --quick 2)")
    parser.add_argument(
        "--ours-only", action="store_true", help="engine alone and our paths, no vLLM server (A/B runs)"
    )
    parser.add_argument(
        "--ray-serve-same-loop",
        action="store_true",
        help="our stack with RAY_SERVE_SAME_LOOP (part of Ray's throughput-optimised bundle)",
    )
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="our stack with HSIG_DIRECT_INGRESS: the replica answers HTTP itself, no proxy hop",
    )
    parser.add_argument(
        "--httpx-client",
        action="store_true",
        help="load both servers with the earlier httpx client (heavier on the shared cores; paired runs)",
    )
    args = parser.parse_args()
    if args.ray_serve_same_loop:
        os.environ.update(RAY_SERVE_SAME_LOOP)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or ROUNDS["quick" if args.quick else "full"]
    print(f"load average at start: {_load()}", flush=True)

    from services.common.db.migrate import upgrade
    from services.common.tiny_model import build_tiny_model
    from services.inference import serve_app
    from tests.support.adapters import publish_lora
    from tests.support.net import free_port

    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "models" / "tiny-llama")
        database_url = f"sqlite:///{root / 'registry.db'}"
        upgrade(database_url)
        adapter_dir = publish_lora(model_dir, root / "adapters", "bench", seed=1, database_url=database_url)
        servers: dict[str, Frozen] = {}
        vllm: subprocess.Popen[bytes] | None = None
        try:
            vllm_url = ""
            if not args.ours_only:
                print("starting vLLM's own OpenAI server (same venv, model and adapter)...", flush=True)
                vllm_url = f"http://127.0.0.1:{free_port()}"
                vllm = start_vllm_server(model_dir, adapter_dir, int(vllm_url.rsplit(":", 1)[1]))
                servers["vllm"] = Frozen({vllm.pid})
            before = _children_of_this_process()
            our_url = start_ours(root, model_dir, database_url, args.direct_ingress)
            servers["ours"] = Frozen(_children_of_this_process() - before)
            if vllm is not None:
                wait_ready(vllm_url, vllm)
            measured = asyncio.run(
                _measure_all(servers, root, model_dir, adapter_dir, our_url, vllm_url, args, sizes, rounds)
            )
        finally:
            for server in servers.values():
                server.thaw()  # a stopped process would not act on the SIGTERMs below
            serve_app.stop()
            if vllm is not None:
                vllm.terminate()
                vllm.wait(timeout=60)
        report(measured)
    print(f"load average at end: {_load()}", flush=True)


async def _measure_all(
    servers: dict[str, Frozen], root: Path, model_dir: Path, adapter_dir: Path,
    our_url: str, vllm_url: str, args: argparse.Namespace, sizes: Sizes, rounds: int,
) -> Rounds:  # fmt: skip
    """Start the engine alone (it needs this event loop), then the rounds."""
    before = _children_of_this_process()
    engine = EngineAlone(model_dir, adapter_dir, root / "scratch")
    servers["engine"] = Frozen(_children_of_this_process() - before)
    try:
        await engine.load_adapter()
        ours = OurPaths(our_url, args.httpx_client)
        runs: dict[str, Callable[[Sizes], Awaitable[dict[str, Case]]]] = {
            "engine": lambda size: _engine_round(engine, size),
            "ours": ours.round,
        }
        clients = [ours.client]
        if vllm_url:
            theirs = VllmPaths(vllm_url, args.httpx_client)
            runs["vllm"] = theirs.round
            clients.append(theirs.client)
        await settle(servers)
        for name, server in servers.items():
            print(f"{name}: {len(server.pids())} processes, frozen between its turns", flush=True)
            server.freeze()
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            return await alternate(servers, runs, sizes, rounds)
    finally:
        servers["engine"].thaw()
        engine.engine.shutdown()


async def _engine_round(engine: EngineAlone, sizes: Sizes) -> dict[str, Case]:
    return {"engine": await engine.case(sizes.c64)}


def _load() -> str:
    """The 1, 5 and 15 minute load averages: the figures mean little on a busy machine."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
