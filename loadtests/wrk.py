"""Drive ``wrk`` (a C load generator, one thread) with a POST body and read back its numbers.

The benchmark's tables (:mod:`loadtests.bench`) and the streaming table (:mod:`loadtests.stream_bench`)
both load servers through these two functions.
"""

from __future__ import annotations

import re
import resource
import subprocess
from pathlib import Path

WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %f %f %f %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def post_script(path: Path, body: str | bytes, headers: dict[str, str] | None = None) -> Path:
    """A wrk script at ``path`` that POSTs ``body`` with ``headers`` (default: JSON's content type) on every
    request and prints :data:`WRK_REPORT`'s line. The body is read from a file beside it, byte for byte
    (a Lua string in the script would turn binary tensors' carriage returns into newlines)."""
    body_file = path.with_suffix(".body")
    body_file.write_bytes(body.encode() if isinstance(body, str) else body)
    lines = ["wrk.method = 'POST'"]
    for name, value in (headers or {"Content-Type": "application/json"}).items():
        lines.append(f"wrk.headers['{name}'] = '{value}'")
    lines.append(f"local file = io.open('{body_file}', 'rb'); wrk.body = file:read('*a'); file:close()")
    path.write_text("\n".join(lines) + "\n" + WRK_REPORT)
    return path


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    """One wrk run (1 thread); also how much CPU wrk itself used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"RESULT (\d+) (\S+) (\S+) (\S+) (\d+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, duration, p50, p99, errors = match.groups()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "connections": connections,
        "requests": int(requests),
        "seconds": float(duration),
        "requests_per_s": int(requests) / float(duration),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "errors": int(errors),
        "generator_cpu_pct": 100 * cpu / float(duration),
    }
