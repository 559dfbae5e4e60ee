"""``python -m loadtests hostile``: what hostile or careless clients do to a served copy of the store's models.

Starts seqserve on 127.0.0.1 (or uses ``--host``) and, one case at a time, measures the answer, its size,
the time it took, the server workers' peak memory (VmHWM) and how long ``/livez`` took meanwhile:

* a 10 MB body of invalid values, a 200 MB body, a 1 MB model name, a multipart body, a trailing slash
  with a foreign ``Host``, a ``Content-Length`` larger than the body, slow headers;
* inputs near float32's limits (every 200 must be strict JSON);
* the heaviest request the limits allow, and ``/livez`` while the worker is saturated with them;
* 4x overload of small requests: admitted p99 against the unloaded p99, and the share answered 503.

Every load loop is bounded in time and count. Prints a Markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import httpx
import numpy as np

from loadtests.server import started_server


def worker_peak_mb(server_pid: int | None) -> float:
    """Largest peak RSS (VmHWM) among the server's processes, in MB; 0 when unknown (a --host server)."""
    if not server_pid:
        return 0.0
    peak = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != server_pid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ProcessLookupError):
            continue
    return peak / 1024


async def livez_watch(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    """/livez latencies (ms), one probe every 50 ms until ``stop``."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await client.get("/livez", timeout=60)
        except httpx.HTTPError:
            pass
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.05)
    return latencies


async def timed(client: httpx.AsyncClient, name: str, request, server_pid: int | None) -> dict:
    """Run one request (a coroutine factory) with /livez probed beside it."""
    stop = asyncio.Event()
    watcher = asyncio.create_task(livez_watch(client, stop))
    started = time.perf_counter()
    try:
        response = await request()
        status, size, text = response.status_code, len(response.content), response.text[:120]
    except httpx.HTTPError as err:
        status, size, text = type(err).__name__, 0, str(err)[:120]
    seconds = time.perf_counter() - started
    stop.set()
    latencies = await watcher
    return {
        "case": name, "status": status, "answer_bytes": size, "seconds": seconds,
        "livez_max_ms": max(latencies) if latencies else 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": text,
    }


def raw_exchange(url: str, payload: bytes, wait_s: float) -> tuple[str, float]:
    """Send raw bytes, return (first line of the answer or 'closed', seconds until it came)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        conn.sendall(payload)
        try:
            answer = conn.recv(4096)
        except socket.timeout:
            return "still open", time.perf_counter() - started
    line = answer.split(b"\r\n", 1)[0].decode() if answer else "closed by the server"
    return line, time.perf_counter() - started


async def overload(client: httpx.AsyncClient, body: dict, connections: int, seconds: float) -> dict:
    """``connections`` clients sending ``body`` back to back for ``seconds``: latencies of the 200s, count of 503s."""
    ok: list[float] = []
    shed = failed = 0
    deadline = time.perf_counter() + seconds

    async def user():
        nonlocal shed, failed
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await client.post("/classify", json=body, timeout=60)
            except httpx.HTTPError:
                failed += 1
                continue
            if response.status_code == 200:
                ok.append((time.perf_counter() - started) * 1000)
            elif response.status_code == 503:
                shed += 1
                await asyncio.sleep(0.05)  # a client that honours Retry-After loosely
            else:
                failed += 1

    await asyncio.gather(*(user() for _ in range(connections)))
    total = len(ok) + shed + failed
    return {
        "connections": connections, "requests": total, "ok_per_s": len(ok) / seconds,
        "p50_ms": float(np.percentile(ok, 50)) if ok else 0.0, "p99_ms": float(np.percentile(ok, 99)) if ok else 0.0,
        "shed_503_share": shed / total if total else 0.0, "other_failures": failed,
    }


async def run_cases(url: str, server_pid: int | None, seconds: float) -> tuple[list[dict], list[dict]]:
    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        models = (await client.get("/models")).json()
        clf = next(m for m in models if m["task"] == "classify")
        fc = next(m for m in models if m["task"] == "forecast")
        n_features, name = len(clf["features"]), clf["tag"].split(":")[0]
        json_type = {"content-type": "application/json"}
        rng = np.random.default_rng(0)
        rows = []

        def post(body: bytes | str, path: str = "/classify", headers=None):
            return lambda: client.post(path, content=body, headers={**json_type, **(headers or {})})

        bad_values = json.dumps({"instances": [{"sequence": [["x"] * n_features] * 4000, "model": name}] * 60})
        rows.append(await timed(client, f"{len(bad_values) / 1e6:.0f} MB body of invalid values", post(bad_values), server_pid))
        huge = b'{"instances": [' + b"0" * 200_000_000 + b"]}"
        rows.append(await timed(client, "200 MB body", post(huge), server_pid))
        del huge
        long_name = json.dumps({"instances": [{"sequence": [[0.0] * n_features], "model": "m" * 1_000_000}]})
        rows.append(await timed(client, "1 MB model name", post(long_name), server_pid))
        rows.append(await timed(
            client, "multipart/form-data body",
            lambda: client.post("/classify", files={"instances": ("x.json", b"[]")}), server_pid,
        ))
        rows.append(await timed(
            client, "POST /classify/ with Host: evil.example",
            post(json.dumps({"instances": [{"sequence": [[0.0] * n_features] * 10}]}), "/classify/", {"host": "evil.example"}),
            server_pid,
        ))
        for magnitude in (1e37, 4e37, 3.4e38):
            body = json.dumps({"instances": [{"history": (np.sin(np.arange(fc["lookback"])) * magnitude).tolist(), "model": fc["tag"]}]})
            row = await timed(client, f"history values ~{magnitude:.0e}", post(body, "/forecast"), server_pid)
            row["strict_json"] = _strict_json(row["answer"]) if row["status"] == 200 else "-"
            rows.append(row)
        # The heaviest request within the limits: as many long sequences as fit in the body cap.
        steps = min(clf["max_length"], 4096)
        one = json.dumps({"sequence": rng.normal(size=(steps, n_features)).round(5).tolist(), "model": name})
        limit = 4 * 2**20
        count = max(1, min(256, (limit - 100) // (len(one) + 2)))
        heavy = '{"instances": [' + ",".join([one] * count) + "]}"
        rows.append(await timed(client, f"heaviest allowed: {count} x {steps} steps, {len(heavy) / 2**20:.1f} MiB", post(heavy), server_pid))

        # /livez while the worker is saturated with the heaviest allowed requests.
        stop = asyncio.Event()
        watcher = asyncio.create_task(livez_watch(client, stop))
        saturate = asyncio.gather(*(client.post("/classify", content=heavy, headers=json_type) for _ in range(16)), return_exceptions=True)
        statuses = [getattr(r, "status_code", type(r).__name__) for r in await saturate]
        stop.set()
        latencies = await watcher
        rows.append({
            "case": "16 heaviest requests at once", "status": f"{statuses.count(200)}x200 {statuses.count(503)}x503",
            "answer_bytes": 0, "seconds": 0.0, "worker_peak_mb": worker_peak_mb(server_pid),
            "livez_max_ms": max(latencies), "answer": f"/livez p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms",
        })

        # Raw-socket cases: a Content-Length larger than the body, headers that never end.
        line, took = raw_exchange(url, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", 70)
        rows.append({"case": "Content-Length larger than the body", "status": line, "seconds": took, "answer_bytes": 0,
                     "livez_max_ms": 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": ""})
        line, took = raw_exchange(url, b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ", 70)
        rows.append({"case": "headers that never end (slowloris)", "status": line, "seconds": took, "answer_bytes": 0,
                     "livez_max_ms": 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": ""})

        # Overload: one client's latency unloaded, then 4x and 64x the connections the worker can use.
        small = {"instances": [{"sequence": rng.normal(size=(64, n_features)).round(4).tolist(), "model": name}]}
        table = [await overload(client, small, c, seconds) for c in (1, 4, 64, 256)]
        return rows, table


def _strict_json(text: str) -> str:
    try:
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        return "yes"
    except ValueError:
        return "NO"


def format_report(rows: list[dict], table: list[dict]) -> str:
    lines = ["| case | status | answer bytes | seconds | /livez max ms | worker peak MB |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['status']} | {r['answer_bytes']:,} | {r['seconds']:.2f} | {r['livez_max_ms']:.0f} | {r['worker_peak_mb']:.0f} |"
        )
    lines += ["", "Answers:", ""] + [f"- {r['case']}: `{r['answer']}`" for r in rows if r["answer"]]
    lines += ["", "| connections | requests | 200/s | 200 p50 ms | 200 p99 ms | 503 share | other failures |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        lines.append(
            f"| {t['connections']} | {t['requests']} | {t['ok_per_s']:.0f} | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} | "
            f"{t['shed_503_share']:.1%} | {t['other_failures']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="a running seqserve (default: start one on 127.0.0.1 with the store's models)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each overload run (default: 10)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    with nullcontext((args.host, None)) if args.host else started_server() as (url, server_pid):
        rows, table = asyncio.run(run_cases(url, server_pid, args.seconds))
    report = format_report(rows, table)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
