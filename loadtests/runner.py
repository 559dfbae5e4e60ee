"""``python -m loadtests run``: a headless locust run against seqserve, a summary, and pass/fail thresholds.

Without ``--host`` it serves the store's models itself on 127.0.0.1 (``loadtests/server.py``) and stops
them afterwards. ``--processes N`` spreads the users over N locust worker processes (locust's own
distributed mode, ``loadtests/generator.py``); the summary also says what the generator itself used. Locust runs as a subprocess, bounded by ``--duration`` plus a hard timeout; its CSV
stats, HTML report and log land in ``--out``. The summary reads locust's CSV and the server's
``seqserve_batch_size`` histogram (the difference between ``/metrics`` before and after the run).

Exit status: 0 within the thresholds, 1 when one is crossed (the summary says which), 2 when the run
could not happen (no model in the store, server not answering, locust failed).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Sequence

import httpx

from loadtests import generator
from loadtests.server import started_server

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "loadtests" / "locust.conf"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
DEFAULT_SCENARIOS = ("ClassifyUser", "ForecastUser")
GRACE_S = 60  # on top of the run time and the ramp-up: locust start-up and shutdown


def parse_duration(text: str) -> float:
    """Seconds in a locust-style time span: "90", "60s", "2m", "1h30m"."""
    text = text.strip()
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and parts:
        hours, minutes, secs = (int(p or 0) for p in parts.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    else:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 90, 60s, 2m or 1h30m")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the duration must be more than 0 seconds")
    return seconds


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _number(text: str) -> float:
    """``text`` as a float, NaN where it is none (every range check then fails)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def share(text: str) -> float:
    """A share from 0 to 1, as failure-rate thresholds are given: 0.01 is 1%."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1 (0.01 is 1%), got {text!r}")
    return value


def add_load_options(parser: argparse.ArgumentParser, *, duration: str, users: int, max_p99_ms: float) -> None:
    """The options ``run`` and ``soak`` share: the load, the target, where the results go, the thresholds."""
    add = parser.add_argument
    add("--users", type=positive_int, default=users, help="concurrent simulated clients (default %(default)s)")
    add("--spawn-rate", type=positive_float, default=16, help="clients started per second (default %(default)s)")
    add("--duration", type=parse_duration, default=duration, help=f"run time: 90, 60s, 2m, 1h30m (default {duration})")
    add("--host", help="URL of a running seqserve (default: start one on 127.0.0.1 and stop it afterwards)")
    add("--out", type=Path, help="folder for the CSV stats, report.html and locust.log (default runs/<command>-<time>)")
    add("--max-failure-rate", type=share, default=0.01, help="fail above this share of failures, 0 to 1 (default %(default)s: 1%%)")
    add("--max-p99-ms", type=float, default=max_p99_ms, help="fail above this p99 (default %(default)s)")
    add("--max-instances", type=positive_int, default=8, help="most instances in one request (default %(default)s)")
    add("--models", default="", help="comma-separated names or tags to load; without --host, the ones served")
    add("--scenarios", default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated locust users: ClassifyUser, ForecastUser, StreamTokenUser (/stream/classify with "
        "state tokens), StreamSocketUser (the /stream WebSocket), V2BinaryUser (the Open Inference Protocol with "
        "binary tensors) (default %(default)s)")
    add("--processes", type=positive_int, default=1,
        help="locust worker processes on this machine, the users spread over them; one saturates about a core "
        "(default %(default)s: a single locust process)")
    add("--master-port", type=positive_int, help="with --processes: port of the locust master on 127.0.0.1 (default: a free one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests run", description="A headless locust run against seqserve, a summary and thresholds."
    )
    add_load_options(parser, duration="60s", users=64, max_p99_ms=500)
    return parser


# ---- the server's batch-size histogram --------------------------------------------------------------


def batch_sizes(metrics_text: str) -> dict[str, dict]:
    """``seqserve_batch_size`` from a /metrics page, per model: {"buckets": {bound: cumulative count}, "sum", "count"}.

    Batch sizes are whole numbers, so a bucket (previous bound, bound] holds sizes previous+1 .. bound.
    """
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "seqserve_batch_size":
            continue
        for sample in family.samples:
            entry = found.setdefault(sample.labels.get("model", "?"), {"buckets": {}, "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                entry["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
    return found


def subtract(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict]:
    """What happened between two ``batch_sizes`` snapshots; models with no forward pass in between are left out."""
    delta = {}
    for model, now in after.items():
        then = before.get(model, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = now["count"] - then["count"]
        if count > 0:
            buckets = {le: n - then["buckets"].get(le, 0.0) for le, n in now["buckets"].items()}
            delta[model] = {"buckets": buckets, "sum": now["sum"] - then["sum"], "count": count}
    return delta


def batch_size_line(model: str, histogram: dict) -> str:
    """One model's forward passes: how many, the mean batch size, and the share in each bucket."""
    count, shares, previous, below = histogram["count"], [], 0, 0.0
    for le in sorted(histogram["buckets"]):
        cumulative = histogram["buckets"][le]
        if cumulative > below:
            if math.isinf(le):
                size = f">{previous}"
            else:
                size = str(int(le)) if int(le) == previous + 1 else f"{previous + 1}-{int(le)}"
            share = 100 * (cumulative - below) / count
            shares.append(f"{size}: {share:.0f}%" if share >= 1 else f"{size}: <1%")
        below, previous = cumulative, previous if math.isinf(le) else int(le)
    return (
        f"  {model}: {count:.0f} forward passes, {histogram['sum']:.0f} instances, "
        f"mean batch size {histogram['sum'] / count:.2f}  [{'  '.join(shares)}]"
    )


# ---- locust's CSV -------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stats_table(rows: list[dict]) -> list[str]:
    """Per request name and aggregated: count, failures, requests/s, p50/p95/p99 in ms."""
    lines = [f"  {'':28} {'requests':>9} {'failures':>9} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)"]
    for row in rows:
        name = f"{row['Type']} {row['Name']}".strip()
        lines.append(
            f"  {name:28} {row['Request Count']:>9} {row['Failure Count']:>9} {float(row['Requests/s']):>8.1f} "
            f"{row['50%']:>6} {row['95%']:>6} {row['99%']:>6}"
        )
    return lines


# ---- the run ------------------------------------------------------------------------------------------


class RunError(Exception):
    """The load test could not run; the message says why."""


class ServerStopped(Exception):
    """seqserve stopped answering during the run: the run happened, and the service failed it."""


def store_problem(wanted: list[str]) -> str | None:
    """Why the local store cannot serve ``wanted`` (or any model when empty), or None."""
    from models.artifact import list_artifacts  # torch and bentoml: imported only when serving locally

    tags = [info.tag for info in list_artifacts()]
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    if not tags:
        return f"no seqserve model in the BentoML store ({home}); train the default models first: make train-defaults"
    missing = [w for w in wanted if not any(t == w or t.split(":")[0] == w for t in tags)]
    if missing:
        return f"not in the BentoML store ({home}): {', '.join(missing)}; stored: {', '.join(sorted(tags))}"
    return None


def served_problem(host: str, wanted: list[str]) -> str | None:
    """Why the server at ``host`` does not serve every one of ``wanted`` (names or tags), or None; a server that
    does not answer is left to the run, which says so."""
    if not wanted:
        return None
    try:
        tags = [entry["tag"] for entry in httpx.get(f"{host}/models", timeout=10).raise_for_status().json()]
    except (httpx.HTTPError, ValueError, TypeError, KeyError):
        return None
    missing = [w for w in wanted if not any(t == w or t.split(":")[0] == w for t in tags)]
    return f"not served at {host}: {', '.join(missing)}; served: {', '.join(sorted(tags))}" if missing else None


def locust_command(args: argparse.Namespace, host: str, out: Path, extra: Sequence[str] = ()) -> list[str]:
    command = [
        sys.executable, "-m", "locust", "--config", str(CONF), "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--csv", str(out / "locust"), "--html", str(out / "report.html"),
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{math.ceil(args.duration)}s",
        "--host", host, "--max-instances", str(args.max_instances),
        *generator.locust_flags(args.processes, out, args.master_port), *extra,
    ]
    scenarios = [name.strip() for name in getattr(args, "scenarios", "").split(",") if name.strip()]
    return command + (["--models", args.models] if args.models else []) + scenarios  # user classes come last


@contextmanager
def target(args: argparse.Namespace, out: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, int | None]]:
    """The server to load: ``--host`` as given (PID unknown), or one started here from the store with ``env`` added
    to its environment, and its PID."""
    if args.host:
        host = args.host.rstrip("/")
        if problem := served_problem(host, [m.strip() for m in args.models.split(",") if m.strip()]):
            raise RunError(problem)
        yield host, None
        return
    wanted = [m.strip() for m in (args.models or os.environ.get("SEQSERVE_MODELS", "")).split(",") if m.strip()]
    problem = store_problem(wanted)
    if problem:
        raise RunError(problem)
    env = {**(env or {}), **({"SEQSERVE_MODELS": ",".join(wanted)} if wanted else {})}
    try:
        with started_server(env, log=out / "server.log") as server:
            yield server
    except RuntimeError as err:  # the server did not start
        raise RunError(str(err)) from None


def run_locust(
    args: argparse.Namespace, host: str, out: Path, extra: Sequence[str] = (),
    every: tuple[float, Callable[[], None]] | None = None, env: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Run locust against ``host``, bounded in time; return the batch sizes the server saw meanwhile.

    ``every=(seconds, call)`` calls ``call`` that often while locust runs (the soak samples memory);
    ``env`` is added to locust's environment.
    """
    try:
        httpx.get(f"{host}/models", timeout=10).raise_for_status()
        before = batch_sizes(httpx.get(f"{host}/metrics", timeout=10).text)
    except httpx.HTTPError as err:
        raise RunError(f"seqserve does not answer at {host}: {err}") from None
    timeout = args.duration + args.users / args.spawn_rate + GRACE_S
    interval, call = every or (1.0, lambda: None)
    log = out / "locust.log"
    with open(log, "w") as f:
        meter = generator.CpuMeter()  # locust and the workers it reaps; nothing else is reaped meanwhile
        process = subprocess.Popen(locust_command(args, host, out, extra), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise RunError(f"locust did not finish within {timeout:.0f}s and was stopped; see {log}")
                call()
                try:
                    process.wait(timeout=interval)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    generator.write_usage(out, meter.stop(args.processes))
    # Locust exits 1 when some requests failed, which the thresholds judge; anything else is a broken run.
    if process.returncode not in (0, 1) or not (out / "locust_stats.csv").exists():
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RunError(f"locust exited with {process.returncode}; the end of {log}:\n{tail}")
    try:
        after = batch_sizes(httpx.get(f"{host}/metrics", timeout=10).text)
    except httpx.HTTPError as err:
        raise ServerStopped(f"seqserve stopped answering at {host} during the run: {err}") from None
    return subtract(after, before)


def totals(out: Path) -> tuple[list[dict], dict, int, int, float]:
    """Locust's per-request stats rows, the Aggregated row, requests, failures and the failure rate."""
    rows = read_csv(out / "locust_stats.csv")
    total = next(row for row in rows if row["Name"] == "Aggregated")
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    return rows, total, requests, failures, (failures / requests if requests else 1.0)


def failure_reasons(out: Path) -> list[tuple[int, str, str]]:
    """Every failure reason of the run, most frequent first: (occurrences, request name, reason as the locustfile wrote it)."""
    rows = sorted(read_csv(out / "locust_failures.csv"), key=lambda r: -int(r["Occurrences"]))
    # locust stores a failure as the repr of an exception around our reason
    return [(int(row["Occurrences"]), row["Name"], re.sub(r"^CatchResponseError\((['\"])(.*)\1\)$", r"\2", row["Error"])) for row in rows]


def failure_lines(out: Path, most: int = 5) -> list[str]:
    """The most frequent failure reasons, as the locustfile wrote them."""
    return [f"  {count:>6} x {name}: {reason[:160]}" for count, name, reason in failure_reasons(out)[:most]]


def summary(args: argparse.Namespace, host: str, out: Path, batches: dict[str, dict]) -> tuple[list[str], list[str]]:
    """The printed summary, and the thresholds crossed (empty when the run passes)."""
    rows, total, requests, failures, rate = totals(out)
    p99 = float(total["99%"]) if requests else math.inf
    spread = f" over {args.processes} locust processes" if args.processes > 1 else ""
    lines = [f"seqserve load test: {args.users} users (+{args.spawn_rate:g}/s){spread} for {args.duration:g}s against {host}"]
    lines += stats_table(rows)
    lines.append(
        f"requests/s {float(total['Requests/s']):.1f}   p50 {total['50%']} ms   p95 {total['95%']} ms   "
        f"p99 {total['99%']} ms   failures {failures} of {requests} ({100 * rate:.2f}%)"
    )
    lines += failure_lines(out)
    lines.append("batch size per forward pass on the server (seqserve_batch_size, this run only):")
    lines += [batch_size_line(model, h) for model, h in sorted(batches.items())] or ["  (no forward pass recorded)"]
    load_lines, warnings = generator.report(out, requests, local_target=is_local(host))
    lines += load_lines + [f"WARNING: {sentence}" for sentence in warnings]
    lines.append(f"report: {out / 'report.html'}   stats: {out / 'locust_stats.csv'}")
    crossed = []
    if not requests:
        crossed.append("no request was made")
    if rate > args.max_failure_rate:
        crossed.append(f"failure rate {100 * rate:.2f}% is above --max-failure-rate {100 * args.max_failure_rate:g}%")
    if p99 > args.max_p99_ms:
        crossed.append(f"p99 {p99:g} ms is above --max-p99-ms {args.max_p99_ms:g}")
    return lines, crossed


def is_local(host: str) -> bool:
    """Whether the service runs on this machine (it then competes with the generator for the cores)."""
    return httpx.URL(host).host in ("127.0.0.1", "localhost", "::1")


def out_folder(args: argparse.Namespace, name: str) -> Path:
    out = args.out or ROOT / "runs" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_folder(args, "loadtest")
    stopped = None
    try:
        with target(args, out) as (host, _):
            try:
                batches = run_locust(args, host, out)
            except ServerStopped as err:  # the run happened: its summary, and a FAIL saying why
                batches, stopped = {}, str(err)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines, crossed = summary(args, host, out, batches)
    crossed += [stopped] if stopped else []
    print("\n".join(lines))
    for reason in crossed:
        print(f"FAIL: {reason}")
    if not crossed:
        print(f"PASS: failure rate <= {100 * args.max_failure_rate:g}%, p99 <= {args.max_p99_ms:g} ms")
    return 1 if crossed else 0
