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
* A worker replaced during the soak (it died) fails the run.

Writes soak.txt (what it printed), soak.json, memory.csv and locust's files into ``--out``.
Exit status: 0 within the thresholds, 1 when one is crossed, 2 when the run could not happen.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loadtests import generator
from loadtests.runner import (
    RunError, add_load_options, batch_size_line, failure_lines, is_local, out_folder, parse_duration, read_csv,
    run_locust, stats_table, target, totals,
)

WORKER_MARK = "_bentoml_impl.worker"  # in the command line of every BentoML service worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests soak",
        description="A bounded soak against seqserve: failures, p99 per minute and worker memory growth, with thresholds.",
    )
    add_load_options(parser, duration="5m", users=16, max_p99_ms=1000)
    add = parser.add_argument
    add("--max-memory-growth-mb", type=float, default=64, help="fail when a worker grows more than this after the warm-up (default %(default)s)")
    add("--warmup", type=parse_duration, default="60s", help="time before the memory baseline, at most a quarter of the run (default 60s)")
    add("--sample-every", type=parse_duration, default="5s", help="how often worker memory is sampled (default 5s)")
    add("--server-pid", type=int, help="with --host: PID of its `bentoml serve` on this machine, to measure its workers' memory")
    return parser


@dataclass
class WorkerMemory:
    """RSS in MiB of a server's worker processes over time; every child process when none looks like a worker."""

    server_pid: int
    started: float  # time.time() when the load started
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (seconds in, {pid: MiB})

    def sample(self) -> None:
        try:
            children = psutil.Process(self.server_pid).children(recursive=True)
        except psutil.Error:
            return  # the server is gone; the run will say so
        rss = {}
        for process in children:
            try:
                rss[process.pid] = (process.memory_info().rss / 2**20, WORKER_MARK in " ".join(process.cmdline()))
            except psutil.Error:
                pass  # exited between listing and reading
        workers = {pid: mib for pid, (mib, is_worker) in rss.items() if is_worker} or {p: m for p, (m, _) in rss.items()}
        self.samples.append((time.time() - self.started, workers))

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "pid", "rss_mib"])
            for seconds, workers in self.samples:
                writer.writerows([f"{seconds:.1f}", pid, f"{mib:.1f}"] for pid, mib in sorted(workers.items()))

    def at(self, seconds: float) -> dict[int, float]:
        """The last sample taken at or before ``seconds`` into the run (the first one if none was)."""
        earlier = [workers for t, workers in self.samples if t <= seconds]
        return earlier[-1] if earlier else self.samples[0][1]

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


def per_minute(history: list[dict], started: float, memory: WorkerMemory | None) -> list[dict]:
    """One row per minute of the run: seconds of locust history in it (the last minute may be short), requests,
    failures, the highest 10-second p99, and the largest worker's RSS at its end."""
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
        table.append(entry)
        requests_before, failures_before = requests, failures
    return table


def report(args: argparse.Namespace, host: str, out: Path, started: float, memory: WorkerMemory | None,
           batches: dict[str, dict]) -> dict:
    rows, total, requests, failures, rate = totals(out)
    minutes = per_minute(read_csv(out / "locust_stats_history.csv"), started, memory)
    result = {
        "host": host, "users": args.users, "duration_s": args.duration, "requests": requests, "failures": failures,
        "failure_rate": rate, "p99_ms": float(total["99%"]) if requests else None, "minutes": minutes, "memory": None,
    }
    lines = [f"seqserve soak: {args.users} users for {args.duration:g}s against {host}"]
    lines += stats_table(rows)
    lines.append(f"failures {failures} of {requests} ({100 * rate:.2f}%)")
    lines += failure_lines(out)
    lines.append(f"  {'minute':>6} {'seconds':>7} {'requests':>9} {'failures':>9} {'p99 ms':>7} {'worker RSS MiB':>15}")
    for m in minutes:
        rss = m.get("worker_rss_mib")
        lines.append(
            f"  {m['minute']:>6} {m['seconds']:>7} {m['requests']:>9} {m['failures']:>9} {m['p99_ms'] if m['p99_ms'] is not None else '-':>7} "
            f"{rss if rss is not None else '-':>15}"
        )
    crossed = []
    if not requests:
        crossed.append("no request was made")
    if rate > args.max_failure_rate:
        crossed.append(f"failure rate {100 * rate:.2f}% is above --max-failure-rate {100 * args.max_failure_rate:g}%")
    crossed += [
        f"minute {m['minute']}: p99 {m['p99_ms']:g} ms is above --max-p99-ms {args.max_p99_ms:g}"
        for m in minutes if m["p99_ms"] is not None and m["p99_ms"] > args.max_p99_ms
    ]
    if memory and memory.samples:
        warmup = min(args.warmup, args.duration / 4)
        grown = result["memory"] = memory.growth(warmup)
        lines.append(
            f"worker memory ({grown['samples']} samples every {args.sample_every:g}s; baseline after a {warmup:g}s warm-up): "
            f"growth {grown['growth_mib']} MiB (the largest of any worker), peak {grown['peak_mib']} MiB"
        )
        lines += [
            f"  worker {pid}: {mib} MiB -> {grown['final_mib'][pid]} MiB" for pid, mib in grown["baseline_mib"].items()
        ]
        if grown["growth_mib"] is not None and grown["growth_mib"] > args.max_memory_growth_mb:
            crossed.append(f"a worker grew {grown['growth_mib']} MiB, above --max-memory-growth-mb {args.max_memory_growth_mb:g}")
        if grown["replaced"]:
            crossed.append(f"worker process(es) {grown['replaced']} died and were replaced during the soak; see the server log")
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
        f"worker growth <= {args.max_memory_growth_mb:g} MiB"
    ]
    return {**result, "crossed": crossed, "passed": not crossed, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_folder(args, "soak")
    try:
        with target(args, out) as (host, server_pid):
            server_pid = server_pid or args.server_pid
            started = time.time()
            memory = WorkerMemory(server_pid, started) if server_pid else None
            every = (args.sample_every, memory.sample) if memory else None
            batches = run_locust(args, host, out, extra=["--csv-full-history"], every=every)
            if memory:
                memory.sample()
                memory.write_csv(out / "memory.csv")
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = report(args, host, out, started, memory, batches)
    lines = result.pop("lines")
    (out / "soak.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "soak.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["passed"] else 1
