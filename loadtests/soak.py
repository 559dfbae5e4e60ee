"""``python -m loadtests soak``: a bounded soak to run before shipping: failures, p99 per minute, worker memory.

The same locust scenarios and the same server start as ``python -m loadtests run`` (``loadtests/runner.py``),
held at a steady load for ``--duration`` (default 5m). It reports, minute by minute, requests, failures,
p99 and the server workers' memory, and judges the run against three thresholds.

* **p99 per minute** comes from locust's stats history (``--csv-full-history``): every second locust writes
  the p99 of the last 10 seconds; a minute's p99 is the highest of those, so one slow stretch shows.
* **Worker memory** is the resident set (RSS) of each worker process of the server (BentoML's
  ``_bentoml_impl.worker`` children of ``bentoml serve``), sampled every ``--sample-every`` seconds with
  psutil. Growth is a worker's last sample minus its sample at the end of the warm-up (``--warmup``, at most
  a quarter of the run): workers grow while the first batches of each size arrive, then should stay flat.
  With ``--host`` the workers can only be found with ``--server-pid`` (``bentoml serve`` on this machine).
* A worker replaced during the soak (it died) fails the run, unless the soak killed it (``--kill-worker-at``).
* **Stalls**: a full minute whose p99 is above ``--max-p99-over-median`` (1.5) times the median full minute's
  fails the run and is marked in the table. Minutes with a chaos event, and the minutes of the warm-up
  (``--warmup``: every client connecting at once and each model's first batches, a cold start rather than
  a stall that comes back), are reported and marked, not judged.
* **Worker shares** come from ``seqserve_worker_requests_total{worker}`` on ``/metrics``, sampled every
  :data:`SHARE_EVERY_S` (``loadtests/chaos.py``): each worker's share of the requests, per minute and around a kill.

Chaos (``loadtests/chaos.py``): ``--kill-worker-at 2m`` SIGKILLs the busiest worker at that time (the server
must be one the soak started, or ``--server-pid``); the summary then gives each worker's share of the
requests before the kill and at the end, the seconds until the shares were even again (each worker 35-65%
of the requests over 10 s, for two workers) and p99 the minute before and the last minute.
``--store-version-at 3m`` stores a new version of the first served model under the same name, in this
machine's store; the summary says when a first worker and every worker served it (service.reload), and
every run counts its failures other than 503s with ``Retry-After``. ``--gc-pauses`` times every garbage-collector pass in the server's processes
(``loadtests/gc_pauses``) and adds the longest pause to each minute.

Writes soak.txt (what it printed), soak.json, memory.csv and locust's files into ``--out``.
Exit status: 0 within the thresholds, 1 when one is crossed, 2 when the run could not happen.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import psutil

from loadtests import gc_pauses, generator
from loadtests.chaos import EVEN, WorkerShares, kill_worker, sample_at, serving_workers, store_new_version
from loadtests.runner import (
    RunError, ServerStopped, add_load_options, batch_size_line, failure_lines, failure_reasons, is_local, out_folder, parse_duration, read_csv,
    run_locust, stats_table, target, totals,
)
from loadtests.gc_pauses.sitecustomize import STALL_S
from loadtests.server import worker_pids

SHARE_EVERY_S = 2.0  # how often the workers' request counts are read from /metrics
FULL_MINUTE_S = 55  # a minute with at least this many seconds of locust history is judged for stalls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests soak",
        description="A bounded soak against seqserve: failures, p99 per minute and worker memory growth, with thresholds.",
    )
    add_load_options(parser, duration="5m", users=16, max_p99_ms=1000)
    add = parser.add_argument
    add("--max-memory-growth-mb", type=float, default=None,
        help=f"fail when a worker grows more than this after the warm-up (default {MEMORY_GROWTH_MB:g} where the workers "
        "can be measured: a server the soak starts, or --server-pid)")
    add("--warmup", type=parse_duration, default="60s", help="time before the memory baseline, at most a quarter of the run (default 60s)")
    add("--sample-every", type=parse_duration, default="5s", help="how often worker memory is sampled (default 5s)")
    add("--server-pid", type=int, help="with --host: PID of its `bentoml serve` on this machine, to measure its workers' memory")
    add("--max-p99-over-median", type=float, default=1.5,
        help="fail when a full minute's p99 is above this times the median full minute's (default %(default)s; needs 3 full minutes)")
    add("--kill-worker-at", type=parse_duration, help="SIGKILL the busiest server worker this far into the run (e.g. 2m)")
    add("--store-version-at", type=parse_duration,
        help="store a new version of the first served model under its name this far into the run (this machine's store)")
    add("--gc-pauses", action="store_true", help="time every garbage-collector pass in the server it starts (loadtests/gc_pauses)")
    return parser


MEMORY_GROWTH_MB = 64  # --max-memory-growth-mb where the workers are measured and none is given


def growth_limit(args: argparse.Namespace) -> float:
    return MEMORY_GROWTH_MB if args.max_memory_growth_mb is None else args.max_memory_growth_mb


def option_problem(args: argparse.Namespace) -> str | None:
    """Why the chaos options cannot be honoured as given, or None."""
    for name in ("kill_worker_at", "store_version_at"):
        at = getattr(args, name)
        if at is not None and at >= args.duration:
            return f"--{name.replace('_', '-')} {at:g}s is not within the run (--duration {args.duration:g}s)"
    if args.kill_worker_at is not None and args.host and not args.server_pid:
        return "--kill-worker-at with --host needs --server-pid (its `bentoml serve` on this machine)"
    if args.max_memory_growth_mb is not None and args.host and not args.server_pid:
        return "--max-memory-growth-mb with --host needs --server-pid (its `bentoml serve` on this machine) to measure its workers"
    if args.gc_pauses and args.host:
        return "--gc-pauses times a server the soak starts itself; leave out --host"
    return None


@dataclass
class WorkerMemory:
    """RSS in MiB of a server's worker processes over time (loadtests.server.worker_pids)."""

    server_pid: int
    started: float  # time.time() when the load started
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (seconds in, {pid: MiB})

    def sample(self) -> None:
        pids = worker_pids(self.server_pid)
        if not pids:
            return  # the server is gone; the run will say so
        workers = {}
        for pid in pids:
            try:
                workers[pid] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                pass  # exited between listing and reading
        self.samples.append((time.time() - self.started, workers))

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "pid", "rss_mib"])
            for seconds, workers in self.samples:
                writer.writerows([f"{seconds:.1f}", pid, f"{mib:.1f}"] for pid, mib in sorted(workers.items()))

    def at(self, seconds: float) -> dict[int, float]:
        """The last sample taken at or before ``seconds`` into the run (the first one if none was)."""
        return sample_at(self.samples, seconds)

    def growth(self, warmup_s: float) -> dict:
        """Per worker: RSS at the end of the warm-up and at the end, growth, peak; and workers that were replaced."""
        baseline, final = self.at(warmup_s), self.samples[-1][1]
        peak = max((mib for _, workers in self.samples for mib in workers.values()), default=0.0)
        both = sorted(set(baseline) & set(final))
        growth = {pid: final[pid] - baseline[pid] for pid in both}
        return {
            "workers": len(final), "warmup_s": warmup_s, "samples": len(self.samples),
            "baseline_mib": {str(pid): round(baseline[pid], 1) for pid in both},
            "final_mib": {str(pid): round(final[pid], 1) for pid in sorted(final)},
            "growth_mib": round(max(growth.values()), 1) if growth else None,
            "peak_mib": round(peak, 1),
            "replaced": sorted(set(pid for _, workers in self.samples for pid in workers) - set(final)),
        }


@dataclass
class Ticker:
    """Calls jobs while locust runs (``run_locust`` calls :meth:`tick` every second): each periodic job every
    ``period`` seconds, each one-off job once when the run is ``at`` seconds in."""

    started: float  # time.time() when the load started
    periodic: list[tuple[float, Callable[[], None]]]  # (period, call)
    once: list[tuple[float, Callable[[], None]]]  # (at, call)
    clock: Callable[[], float] = time.time
    _last: dict[int, float] = field(default_factory=dict)  # periodic job index -> seconds in when last called

    def tick(self) -> None:
        now = self.clock() - self.started
        for index, (period, call) in enumerate(self.periodic):
            if now - self._last.get(index, -period) >= period:
                self._last[index] = now
                call()
        due = [job for job in self.once if job[0] <= now]
        self.once = [job for job in self.once if job[0] > now]
        for _, call in due:
            call()


@dataclass
class Chaos:
    """The soak's chaos events (``--kill-worker-at``, ``--store-version-at``) and what each did."""

    host: str
    server_pid: int | None
    started: float
    shares: WorkerShares
    events: list[dict] = field(default_factory=list)  # {"seconds", "event", ...}

    def kill(self) -> None:
        now = time.time() - self.started
        self.shares.sample()
        busiest = sorted(self.shares.requests(now - 10, now + 1).items(), key=lambda item: -item[1])
        pid = kill_worker(self.server_pid, [pid for pid, _ in busiest]) if self.server_pid else None
        self.events.append({"seconds": round(now, 1), "event": "kill", "pid": pid})

    def store_version(self) -> None:
        now = time.time() - self.started
        event = {"seconds": round(now, 1), "event": "store_version"}
        try:
            tag = httpx.get(f"{self.host}/models", timeout=10).json()[0]["tag"]
            event.update(model=tag, stored=store_new_version(tag))
        except Exception as err:  # the soak goes on and reports why: a chaos step must not end the run
            event["error"] = f"{type(err).__name__}: {err}"
        self.events.append(event)

    def watch_switch(self) -> None:
        """Once a version was stored: note when a first worker, and when every worker of the server (known with its
        PID), served it as its name's default (``seqserve_model_version`` on /metrics)."""
        event = next((e for e in self.events if "stored" in e and "all_served_s" not in e), None)
        if event is None:
            return
        try:
            serving = serving_workers(httpx.get(f"{self.host}/metrics", timeout=5).text, event["stored"])
        except httpx.HTTPError:
            return  # a busy server: the next look will do
        if not serving:
            return
        now = round(time.time() - self.started, 1)
        event.setdefault("first_served_s", now)
        workers = {str(pid) for pid in worker_pids(self.server_pid)} if self.server_pid else set()
        if workers and workers <= serving:
            event["all_served_s"] = now

    def minutes(self) -> set[int]:
        """Minutes (1-based) in which an event happened."""
        return {int(event["seconds"] // 60) + 1 for event in self.events}


def per_minute(history: list[dict], started: float, memory: WorkerMemory | None, shares: WorkerShares | None = None,
               gc_passes: list[tuple[float, int, float]] | None = None) -> list[dict]:
    """One row per minute of the run: seconds of locust history in it (the last minute may be short), requests,
    failures, the highest 10-second p99, the largest worker's RSS at its end, each worker's share of the
    requests, and the longest garbage-collector pause in any worker."""
    rows = [r for r in history if r["Name"] == "Aggregated"]
    minutes: dict[int, list[dict]] = {}
    for row in rows:
        minutes.setdefault(max(0, int((int(row["Timestamp"]) - started) // 60)), []).append(row)
    table, requests_before, failures_before = [], 0, 0
    for minute in sorted(minutes):
        last = minutes[minute][-1]
        requests, failures = int(last["Total Request Count"]), int(last["Total Failure Count"])
        p99s = [float(r["99%"]) for r in minutes[minute] if r["99%"] not in ("", "N/A")]
        entry = {
            "minute": minute + 1, "seconds": len(minutes[minute]), "requests": requests - requests_before, "failures": failures - failures_before,
            "p99_ms": max(p99s) if p99s else None,
        }
        if memory and memory.samples:
            workers = memory.at((minute + 1) * 60)
            entry["worker_rss_mib"] = round(max(workers.values()), 1) if workers else None
        if shares is not None:
            entry["shares"] = {str(pid): round(share, 3) for pid, share in shares.shares(minute * 60, (minute + 1) * 60).items()}
        if gc_passes is not None:
            pauses = [ms for when, _, ms in gc_passes if minute * 60 <= when - started < (minute + 1) * 60]
            entry["gc_longest_ms"] = round(max(pauses), 1) if pauses else 0.0
        table.append(entry)
        requests_before, failures_before = requests, failures
    return table


def stalls(minutes: list[dict], factor: float, skip: set[int]) -> tuple[float | None, list[int]]:
    """The median full minute's p99 and the full minutes whose p99 is above ``factor`` times it, leaving out the
    minutes in ``skip``; (None, []) with fewer than three full minutes to judge."""
    judged = [m for m in minutes if m["seconds"] >= FULL_MINUTE_S and m["p99_ms"] is not None and m["minute"] not in skip]
    if len(judged) < 3:
        return None, []
    median = statistics.median(m["p99_ms"] for m in judged)
    return median, [m["minute"] for m in judged if m["p99_ms"] > factor * median]


def warmup_minutes(warmup_s: float) -> set[int]:
    """The minutes (1-based) that lie within the first ``warmup_s`` seconds, or begin inside them."""
    return {minute + 1 for minute in range(int(math.ceil(warmup_s / 60)))}


def percent(shares: dict) -> str:
    return ", ".join(f"{pid} {100 * share:.0f}%" for pid, share in shares.items()) or "-"


def kill_lines(kill: dict, shares: WorkerShares, minutes: list[dict], duration: float) -> tuple[list[str], dict]:
    """What a worker kill did: shares before it and at the end, when the replacement served, when the shares
    were even again, p99 the minute before and the last minute."""
    at, killed = kill["seconds"], kill["pid"]
    before = shares.shares(max(0.0, at - 60), at)
    end = shares.samples[-1][0] if shares.samples else duration
    after = shares.shares(max(at, end - 30), end)
    workers = len(before)
    replacement = next((pid for pid in after if pid not in before), None)
    first = shares.first_request(replacement) if replacement else None
    even = shares.even_again(at, workers) if workers > 1 else None
    p99 = {m["minute"]: m["p99_ms"] for m in minutes}
    minute_before, last = int(at // 60), max((m["minute"] for m in minutes if m["seconds"] >= FULL_MINUTE_S), default=None)
    low, high = (100 * bound / max(workers, 1) for bound in EVEN)
    lines = [
        f"chaos: worker {killed} SIGKILLed at {at:g}s",
        f"  shares of the requests, the minute before the kill: {percent(before)}",
        f"  shares of the requests, the last 30 s: {percent(after)}",
        f"  replacement {replacement or '-'}: first request {f'{first - at:.0f}s after the kill' if first else 'not seen'}",
        f"  shares even again ({low:.0f}-{high:.0f}% each over {10:g}s): "
        + (f"{even - at:.0f}s after the kill" + (f", {even - first:.0f}s after the replacement's first request" if first else "")
           if even else "not within the run"),
        f"  p99: {p99.get(minute_before, '-')} ms in minute {minute_before or '-'} (before the kill), "
        f"{p99.get(last, '-')} ms in minute {last or '-'} (the last full one)",
    ]
    result = {**kill, "shares_before": {str(k): round(v, 3) for k, v in before.items()},
              "shares_end": {str(k): round(v, 3) for k, v in after.items()}, "replacement": replacement,
              "replacement_first_request_s": first, "even_again_s": even,
              "p99_minute_before_ms": p99.get(minute_before), "p99_last_minute_ms": p99.get(last)}
    return lines, result


def store_lines(event: dict) -> list[str]:
    """What storing a new version did: when it was stored, and when a first worker and every worker served it."""
    if "stored" not in event:
        return [f"chaos: storing a new version at {event['seconds']:g}s failed: {event['error']}"]
    at, first, every = event["seconds"], event.get("first_served_s"), event.get("all_served_s")
    lines = [f"chaos: at {at:g}s stored {event['stored']} beside {event['model']}"]
    if first is None:
        lines.append("  not served within the run (its name pinned as name:version in SEQSERVE_MODELS, or SEQSERVE_MODEL_POLL_S=0?)")
        return lines
    lines.append(f"  served as its name's default by a first worker {first - at:.0f}s later"
                 + (f", by every worker {every - at:.0f}s later" if every is not None else ""))
    return lines


def report(args: argparse.Namespace, host: str, out: Path, started: float, memory: WorkerMemory | None,
           batches: dict[str, dict], shares: WorkerShares | None = None, chaos: Chaos | None = None,
           gc_passes: dict[int, list] | None = None, paused: dict[str, list] | None = None) -> dict:
    rows, total, requests, failures, rate = totals(out)
    every_pass = [one for passes in (gc_passes or {}).values() for one in passes] if gc_passes is not None else None
    minutes = per_minute(read_csv(out / "locust_stats_history.csv"), started, memory, shares, every_pass)
    result = {
        "host": host, "users": args.users, "duration_s": args.duration, "requests": requests, "failures": failures,
        "failure_rate": rate, "p99_ms": float(total["99%"]) if requests else None, "minutes": minutes, "memory": None,
    }
    events = chaos.events if chaos else []
    warmup = min(args.warmup, args.duration / 4)  # the warm-up's seconds: not judged, and the memory and gc baselines
    warming = warmup_minutes(warmup)
    median, stalled = stalls(minutes, args.max_p99_over_median, warming | (chaos.minutes() if chaos else set()))
    result["stalls"] = {"median_minute_p99_ms": median, "minutes": stalled}
    lines = [f"seqserve soak: {args.users} users for {args.duration:g}s against {host}"]
    lines += stats_table(rows)
    lines.append(f"failures {failures} of {requests} ({100 * rate:.2f}%)")
    lines += failure_lines(out)
    # The locustfile writes an overload answered as it should be (503 with Retry-After) as "HTTP 503: ...".
    result["failures_not_503"] = sum(count for count, _, reason in failure_reasons(out) if not reason.startswith("HTTP 503:"))
    lines.append(f"failures other than 503 with Retry-After: {result['failures_not_503']}")
    pids = sorted({int(pid) for m in minutes for pid in m.get("shares", {})})
    lines.append(
        f"  {'minute':>6} {'seconds':>7} {'requests':>9} {'failures':>9} {'p99 ms':>7} {'worker RSS MiB':>15}"
        + (f"  {'gc ms':>6}" if every_pass is not None else "") + ("  shares % (workers " + ", ".join(map(str, pids)) + ")" if pids else "")
    )
    for m in minutes:
        rss = m.get("worker_rss_mib")
        line = (
            f"  {m['minute']:>6} {m['seconds']:>7} {m['requests']:>9} {m['failures']:>9} {m['p99_ms'] if m['p99_ms'] is not None else '-':>7} "
            f"{rss if rss is not None else '-':>15}"
        )
        if every_pass is not None:
            line += f"  {m['gc_longest_ms']:>6}"
        if pids:
            line += "  " + "/".join(f"{100 * m['shares'][str(pid)]:.0f}" if str(pid) in m["shares"] else "-" for pid in pids)
        line += "  stall" if m["minute"] in stalled else ""
        line += "  chaos" if chaos and m["minute"] in chaos.minutes() else ""
        line += "  warm-up" if m["minute"] in warming else ""
        lines.append(line)
    if median is not None:
        lines.append(f"stalls: {len(stalled)} full minute(s) with p99 above {args.max_p99_over_median:g} x the median minute's {median:g} ms")
    crossed = []
    if not requests:
        crossed.append("no request was made")
    if rate > args.max_failure_rate:
        crossed.append(f"failure rate {100 * rate:.2f}% is above --max-failure-rate {100 * args.max_failure_rate:g}%")
    crossed += [
        f"minute {m['minute']}: p99 {m['p99_ms']:g} ms is above --max-p99-ms {args.max_p99_ms:g}"
        for m in minutes if m["p99_ms"] is not None and m["p99_ms"] > args.max_p99_ms
    ]
    crossed += [f"minute {minute}: p99 is above {args.max_p99_over_median:g} x the median minute's ({median:g} ms): a stall"
                for minute in stalled]
    result["chaos"] = []
    for event in events:
        if event["event"] == "kill" and shares is not None and event["pid"]:
            chaos_lines, outcome = kill_lines(event, shares, minutes, args.duration)
            lines += chaos_lines
            result["chaos"].append(outcome)
        elif event["event"] == "kill":
            lines.append(f"chaos: no worker to kill at {event['seconds']:g}s")
            result["chaos"].append(event)
        else:
            lines += store_lines(event)
            result["chaos"].append(event)
    if every_pass is not None:
        summaries = {pid: gc_pauses.summary([p for p in passes if p[0] - started >= warmup]) for pid, passes in sorted(gc_passes.items())}
        lines.append(f"garbage collector, after the {warmup:g}s warm-up (loadtests/gc_pauses):")
        lines += [f"  worker {pid}: {summary}" for pid, summary in summaries.items()]
        result["gc"] = {str(pid): summary for pid, summary in summaries.items()}
    if paused is not None:
        lines.append(f"processes that did not run for over {STALL_S * 1000:.0f} ms (a heartbeat thread woke that late; loadtests/gc_pauses):")
        for label, found in paused.items():
            lines.append(f"  {label}: " + (", ".join(f"minute {int((when - started) // 60) + 1} (+{when - started:.0f}s) {ms:.0f} ms"
                                                      for when, ms in found) or "none"))
        result["paused"] = {label: [[round(when - started, 1), ms] for when, ms in found] for label, found in paused.items()}
    if memory and memory.samples:
        grown = result["memory"] = memory.growth(warmup)
        lines.append(
            f"worker memory ({grown['samples']} samples every {args.sample_every:g}s; baseline after a {warmup:g}s warm-up): "
            f"growth {grown['growth_mib']} MiB (the largest of any worker), peak {grown['peak_mib']} MiB"
        )
        lines += [
            f"  worker {pid}: {mib} MiB -> {grown['final_mib'][pid]} MiB" for pid, mib in grown["baseline_mib"].items()
        ]
        if grown["growth_mib"] is not None and grown["growth_mib"] > growth_limit(args):
            crossed.append(f"a worker grew {grown['growth_mib']} MiB, above --max-memory-growth-mb {growth_limit(args):g}")
        killed = {event["pid"] for event in events if event["event"] == "kill"}
        died = [pid for pid in grown["replaced"] if pid not in killed]
        if died:
            crossed.append(f"worker process(es) {died} died and were replaced during the soak; see the server log")
    else:
        lines.append("worker memory: not measured (with --host, give --server-pid of its `bentoml serve` on this machine)")
    lines.append("batch size per forward pass on the server (seqserve_batch_size, this run only):")
    lines += [batch_size_line(model, h) for model, h in sorted(batches.items())] or ["  (no forward pass recorded)"]
    load_lines, warnings = generator.report(out, requests, local_target=is_local(host))
    lines += load_lines + [f"WARNING: {sentence}" for sentence in warnings]
    memory_csv = f"   memory: {out / 'memory.csv'}" if memory else ""
    lines.append(f"report: {out / 'soak.json'}   locust: {out / 'report.html'}{memory_csv}")
    lines += [f"FAIL: {reason}" for reason in crossed] or [
        f"PASS: failure rate <= {100 * args.max_failure_rate:g}%, p99 <= {args.max_p99_ms:g} ms every minute, "
        f"no minute's p99 above {args.max_p99_over_median:g} x the median's, "
        + (f"worker growth <= {growth_limit(args):g} MiB" if memory else "worker memory not measured")
    ]
    return {**result, "crossed": crossed, "passed": not crossed, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = option_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = out_folder(args, "soak")
    gc_folder = out / "gc" if args.gc_pauses else None
    stopped = None
    try:
        with target(args, out, gc_pauses.watched_env(gc_folder) if gc_folder else None) as (host, server_pid):
            server_pid = server_pid or args.server_pid
            started = time.time()
            memory = WorkerMemory(server_pid, started) if server_pid else None
            shares = WorkerShares(host, started)
            chaos = Chaos(host, server_pid, started, shares)
            periodic = [(SHARE_EVERY_S, shares.sample)] + ([(args.sample_every, memory.sample)] if memory else [])
            if args.store_version_at is not None:
                periodic.append((SHARE_EVERY_S, chaos.watch_switch))
            once = [(at, call) for at, call in ((args.kill_worker_at, chaos.kill), (args.store_version_at, chaos.store_version))
                    if at is not None]
            ticker = Ticker(started, periodic, once)
            try:
                batches = run_locust(args, host, out, extra=["--csv-full-history"], every=(1.0, ticker.tick),
                                     env=gc_pauses.watched_env(gc_folder / "generator") if gc_folder else None)
            except ServerStopped as err:  # the soak happened: its summary, and a FAIL saying why
                batches, stopped = {}, str(err)
            shares.sample()
            if memory:
                memory.sample()
                memory.write_csv(out / "memory.csv")
            workers = {pid for _, counts in shares.samples for pid in counts} | set(memory.at(0) if memory and memory.samples else {})
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gc_passes = {pid: gc_pauses.read(gc_folder, pid, started) for pid in sorted(workers)} if gc_folder else None
    paused = None
    if gc_folder:
        paused = {f"{'worker' if pid in workers else 'server process'} {pid}": found
                  for pid, found in gc_pauses.read_stalls(gc_folder, started).items()}
        paused.update({f"load generator {pid}": found for pid, found in gc_pauses.read_stalls(gc_folder / "generator", started).items()})
    result = report(args, host, out, started, memory, batches, shares if shares.samples else None, chaos, gc_passes, paused)
    lines = result.pop("lines")
    if stopped:
        result.update(crossed=result["crossed"] + [stopped], passed=False)
        lines = [line for line in lines if not line.startswith("PASS: ")] + [f"FAIL: {stopped}"]
    (out / "soak.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "soak.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["passed"] else 1
