"""``python -m loadtests hostile``: what hostile or careless clients do to a served copy of the store's models.

Starts seqserve on 127.0.0.1 (or uses ``--host``) and, one case at a time, measures the answer, its size,
the time it took, the server workers' peak memory (VmHWM) and how long ``/livez`` took meanwhile:

* a 10 MB body of invalid values and one just under the body cap, a 200 MB body, a 1 MB model name, a multipart body, a trailing slash
  with a foreign ``Host``, a ``Content-Length`` larger than the body, slow headers;
* inputs near float32's limits (every 200 must be strict JSON);
* the heaviest request the limits allow, and ``/livez`` while the worker is saturated with them;
* overload of small requests: the admitted p99 against the unloaded p99, and the share answered 503;
* the Open Inference Protocol's binary tensors (``/v2/models/<name>/infer``): the largest binary request the
  limits allow, alone and from 16 connections while ``/livez`` is probed; a binary body over its cap (413
  before the body is sent); an ``Inference-Header-Content-Length`` past the body; garbage bytes.

Load for the last two comes from ``wrk`` (C, its own process), and ``/livez`` and the admitted latency
are measured by a probe thread that sends one request at a time on a fresh connection, as a Kubernetes
probe or a single client does; an asyncio client in the same process would measure its own event loop.
Every load loop is bounded in time and count. Prints a Markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import httpx
import numpy as np

from loadtests.payloads import V2_HEADER, v2_body
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


def huge_history(steps: int, magnitude: float) -> list[float]:
    """A history of ``steps`` values between 0.2 and 1 times ``magnitude``: positive, so a forecaster that works on
    logs (a 400 for a value <= 0) is asked about the size of its values too, as every other forecaster is."""
    return (magnitude * (1.5 + np.sin(np.arange(steps))) / 2.5).tolist()


async def timed(client: httpx.AsyncClient, name: str, request, server_pid: int | None) -> dict:
    """Run one request (a coroutine factory) with /livez probed beside it."""
    probe = Probe(str(client.base_url).rstrip("/"))
    probe.start()
    started = time.perf_counter()
    try:
        response = await request()
        status, size, text = response.status_code, len(response.content), response.text[:120]
    except httpx.HTTPError as err:
        status, size, text = type(err).__name__, 0, str(err)[:120]
    seconds = time.perf_counter() - started
    probe.stop.set()
    await asyncio.to_thread(probe.join)
    latencies = probe.latencies()
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


WRK_SCRIPT = """
wrk.method = "POST"
%s
local file = io.open("%s", "rb"); wrk.body = file:read("*a"); file:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok, shed, other = 0, 0, 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 elseif status == 503 then shed = shed + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local o, s, x = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); s = s + t:get("shed"); x = x + t:get("other") end
  io.write(string.format("RESULT %%d %%d %%d %%d %%f\\n", o, s, x,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.duration / 1e6))
end
"""


def wrk_flood(
    url: str, path: str, body: str | bytes, connections: int, seconds: float, timeout_s: float = 30,
    headers: dict[str, str] | None = None,
) -> dict:
    """``connections`` wrk connections posting ``body`` (JSON unless ``headers`` say otherwise) back to back:
    counts of 200, 503, other answers, errors."""
    headers = headers or {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = Path(tmp, "body"), Path(tmp, "flood.lua")
        body_file.write_bytes(body.encode() if isinstance(body, str) else body)
        script.write_text(WRK_SCRIPT % ("\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()), body_file))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", f"{timeout_s:.0f}s", "-s", str(script),
             url + path], capture_output=True, text=True, timeout=seconds + timeout_s + 30,
        ).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\S+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    ok, shed, other, errors, duration = match.groups()
    return {"ok": int(ok), "shed": int(shed), "other": int(other), "errors": int(errors), "seconds": float(duration)}


class Probe(threading.Thread):
    """One request at a time on a fresh connection, ``every`` seconds apart: (status, ms) of each."""

    def __init__(self, url: str, method: str = "GET", path: str = "/livez", body: str | None = None, every: float = 0.05):
        super().__init__(daemon=True)
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.method, self.path, self.body, self.every = int(port), method, path, body, every
        self.results: list[tuple[int | str, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Content-Type": "application/json"} if self.body else {}
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                conn.request(self.method, self.path, body=self.body, headers=headers)
                response = conn.getresponse()
                response.read()
                status: int | str = response.status
                conn.close()
            except OSError as err:
                status = type(err).__name__
            self.results.append((status, (time.perf_counter() - started) * 1000))
            self.stop.wait(self.every)

    def latencies(self, status: int | None = None) -> list[float]:
        return [ms for s, ms in self.results if status is None or s == status]


def probed_flood(
    url: str, path: str, body: str | bytes, connections: int, seconds: float, probe: Probe, headers: dict[str, str] | None = None,
) -> tuple[dict, Probe]:
    """A wrk flood with ``probe`` running beside it (none when ``connections`` is 0)."""
    probe.start()
    try:
        flood = wrk_flood(url, path, body, connections, seconds, headers=headers) if connections else (time.sleep(seconds) or {})
    finally:
        probe.stop.set()
        probe.join()
    return flood, probe


def overload(url: str, body: str, connections: int, seconds: float) -> dict:
    """Admitted latency (a probe request every 50 ms) and the share wrk's ``connections`` got answered 503."""
    flood, probe = probed_flood(url, "/classify", body, connections, seconds, Probe(url, "POST", "/classify", body))
    ok = probe.latencies(200)
    answered = flood.get("ok", 0) + flood.get("shed", 0) + flood.get("other", 0)
    return {
        "connections": connections, "flood_per_s": answered / flood["seconds"] if flood else 0.0,
        "probes": len(probe.results), "probe_ok": len(ok),
        "p50_ms": float(np.percentile(ok, 50)) if ok else 0.0, "p99_ms": float(np.percentile(ok, 99)) if ok else 0.0,
        "max_ms": max(ok, default=0.0),
        "shed_503_share": flood["shed"] / answered if answered else 0.0,
        "other_failures": flood.get("other", 0) + flood.get("errors", 0),
    }


async def run_cases(
    url: str, server_pid: int | None, seconds: float, max_body_bytes: int, max_binary_body_bytes: int,
) -> tuple[list[dict], list[dict]]:
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

        bad_one = json.dumps({"sequence": [["x"] * n_features] * 4000, "model": name})
        for count in (10_000_000 // len(bad_one), (max_body_bytes - 100) // (len(bad_one) + 2)):
            bad_values = '{"instances": [' + ",".join([bad_one] * count) + "]}"
            rows.append(await timed(client, f"{len(bad_values) / 2**20:.1f} MiB body of invalid values", post(bad_values), server_pid))
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
            post(json.dumps({"instances": [{"sequence": [[0.0] * n_features] * 10, "model": name}]}), "/classify/", {"host": "evil.example"}),
            server_pid,
        ))
        for magnitude in (1e37, 4e37, 3.4e38):
            body = json.dumps({"instances": [{"history": huge_history(fc["lookback"], magnitude), "model": fc["tag"]}]})
            row = await timed(client, f"history values ~{magnitude:.0e}", post(body, "/forecast"), server_pid)
            row["strict_json"] = _strict_json(row["answer"]) if row["status"] == 200 else "-"
            rows.append(row)
        # The heaviest request within the limits: as many long sequences as fit in the body cap.
        steps = min(clf["max_length"], 4096)
        one = json.dumps({"sequence": rng.normal(size=(steps, n_features)).round(5).tolist(), "model": name})
        limit = max_body_bytes
        count = max(1, min(256, (limit - 100) // (len(one) + 2)))
        heavy = '{"instances": [' + ",".join([one] * count) + "]}"
        rows.append(await timed(client, f"heaviest allowed: {count} x {steps} steps, {len(heavy) / 2**20:.1f} MiB", post(heavy), server_pid))

        # /livez while the worker is saturated with the heaviest allowed requests (wrk keeps 16 in flight).
        flood, probe = probed_flood(url, "/classify", heavy, 16, seconds, Probe(url))
        rows.append(livez_row(f"/livez while 16 connections send the heaviest request for {seconds:.0f} s", flood, probe, server_pid))

        # Raw-socket cases: a Content-Length larger than the body, headers that never end.
        line, took = raw_exchange(url, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", 70)
        rows.append({"case": "Content-Length larger than the body", "status": line, "seconds": took, "answer_bytes": 0,
                     "livez_max_ms": 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": ""})
        line, took = raw_exchange(url, b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ", 70)
        rows.append({"case": "headers that never end (slowloris)", "status": line, "seconds": took, "answer_bytes": 0,
                     "livez_max_ms": 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": ""})

        # Overload: a probe's latency alone, then beside wrk at 64 connections (the bench's saturating
        # load) and at 4x that; the probe's 200s are the admitted latency.
        small = json.dumps({"instances": [{"sequence": rng.normal(size=(64, n_features)).round(4).tolist(), "model": name}]})
        table = [overload(url, small, c, seconds) for c in (0, 64, 256)]
        rows += await v2_cases(client, clf, server_pid, seconds, max_binary_body_bytes)
        return rows, table


def livez_row(case: str, flood: dict, probe: Probe, server_pid: int | None) -> dict:
    """A report row of /livez's latencies while a flood ran."""
    latencies = probe.latencies()
    return {
        "case": case, "status": f"{flood['ok']}x200 {flood['shed']}x503 {flood['other'] + flood['errors']} other",
        "answer_bytes": 0, "seconds": flood["seconds"], "worker_peak_mb": worker_peak_mb(server_pid),
        "livez_max_ms": max(latencies),
        "answer": f"/livez p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms, "
                  f"max {max(latencies):.0f} ms over {len(latencies)} probes; {sum(s != 200 for s, _ in probe.results)} not 200",
    }


async def v2_cases(client: httpx.AsyncClient, clf: dict, server_pid: int | None, seconds: float, max_binary_body_bytes: int) -> list[dict]:
    """The Open Inference Protocol's binary tensors: the largest request the limits allow, a body over the binary
    cap, a header length past the body, garbage, then the largest from 16 connections with /livez probed."""
    url = str(client.base_url).rstrip("/")
    name = clf["tag"].split(":")[0]
    path = f"/v2/models/{name}/infer"
    limits = (await client.get(f"/v2/models/{name}")).json()["parameters"]
    n_features = len(clf["features"])
    rows = []

    def post(body: bytes, headers: dict[str, str]):
        return lambda: client.post(path, content=body, headers=headers)

    # The largest: as many instances as allowed, as many steps as then fit in the binary cap (room kept for the JSON).
    n = limits["max_instances"]
    steps = max(1, min(limits["max_length"], (max_binary_body_bytes - 4096) // (n * n_features * 4)))
    values = np.random.default_rng(0).normal(size=(n, steps, n_features))
    largest, largest_headers = v2_body("classify", values, np.full(n, steps))
    case = f"v2 binary, largest allowed: {n} x {steps} steps x {n_features}, {len(largest) / 2**20:.2f} MiB"
    rows.append(await timed(client, case, post(largest, largest_headers), server_pid))

    # Over the cap: the headers alone must be answered 413, before a byte of the body is sent.
    over = max_binary_body_bytes + 1
    line, took = raw_exchange(url, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n{V2_HEADER}: 200\r\n"
        f"Content-Length: {over}\r\n\r\n").encode(), 30)
    rows.append({"case": f"v2 binary body 1 byte over the {max_binary_body_bytes / 2**20:g} MiB cap (headers only sent)", "status": line,
                 "seconds": took, "answer_bytes": 0, "livez_max_ms": 0.0, "worker_peak_mb": worker_peak_mb(server_pid), "answer": ""})

    few = values[:8, : min(steps, 64)]  # (8, T, F)
    small, headers = v2_body("classify", few, np.full(len(few), few.shape[1]))
    past = {**headers, V2_HEADER: str(len(small) + 100)}
    rows.append(await timed(client, "v2 Inference-Header-Content-Length past the body", post(small, past), server_pid))
    garbage = np.random.default_rng(1).bytes(len(small))
    rows.append(await timed(client, "v2 garbage bytes, header length 64", post(garbage, {**headers, V2_HEADER: "64"}), server_pid))
    # A valid header and lengths, the values random bit patterns: about one float32 in 128 is NaN or infinite.
    start = int(headers[V2_HEADER])
    end = start + few.size * 4
    random_values = small[:start] + garbage[start:end] + small[end:]
    rows.append(await timed(client, f"v2 valid header, {few.size} random float32 bit patterns", post(random_values, headers), server_pid))

    # Last, as the worker may still be busy with the flood when wrk stops: /livez beside 16 connections of the largest.
    flood, probe = probed_flood(url, path, largest, 16, seconds, Probe(url), headers=largest_headers)
    rows.append(livez_row(f"/livez while 16 connections send the largest v2 binary request for {seconds:.0f} s", flood, probe, server_pid))
    return rows


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
    lines += ["", "| wrk connections | wrk answers/s | wrk 503 share | wrk other failures | probe 200s | admitted p50 ms | "
              "admitted p99 ms | admitted max ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        lines.append(
            f"| {t['connections']} | {t['flood_per_s']:.0f} | {t['shed_503_share']:.1%} | {t['other_failures']} | "
            f"{t['probe_ok']}/{t['probes']} | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} | {t['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="a running seqserve (default: start one on 127.0.0.1 with the store's models); "
                        "pass its SEQSERVE_MAX_BODY_MB as --max-body-mb and its SEQSERVE_MAX_BINARY_BODY_MB as "
                        "--max-binary-body-mb, to size the heaviest requests")
    parser.add_argument("--max-body-mb", type=float, default=1.0,
                        help="the server's body cap in MiB, its SEQSERVE_MAX_BODY_MB (default: 1, the server's default); "
                        "a server started here is given it")
    parser.add_argument("--max-binary-body-mb", type=float, default=4.0,
                        help="the server's cap of bodies with binary tensors in MiB, its SEQSERVE_MAX_BINARY_BODY_MB "
                        "(default: 4, the server's default); a server started here is given it")
    parser.add_argument("--seconds", type=float, default=10, help="length of each load run (default: 10)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("error: the hostile run needs wrk (a C load generator): apt-get install wrk", file=sys.stderr)
        return 2
    # The load test never imports the service: the cap is passed in, and a server started here is given the same.
    server_env = {"SEQSERVE_MAX_BODY_MB": str(args.max_body_mb), "SEQSERVE_MAX_BINARY_BODY_MB": str(args.max_binary_body_mb)}
    caps = int(args.max_body_mb * 2**20), int(args.max_binary_body_mb * 2**20)
    with nullcontext((args.host, None)) if args.host else started_server(server_env) as (url, server_pid):
        rows, table = asyncio.run(run_cases(url, server_pid, args.seconds, *caps))
    report = format_report(rows, table)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
