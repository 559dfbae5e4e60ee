"""``python -m loadtests ab``: steady-state throughput of two server set-ups, in turns, in one run.

A and B are each a checkout (``--tree-a``/``--tree-b``, default this one) and ``SEQSERVE_*`` settings
(``--env-a``/``--env-b KEY=VALUE``). Each round starts both, one after the other, fresh on 127.0.0.1, warms
each up, and loads it with ``wrk`` at ``--connections`` keep-alive connections on ``/classify`` with one small
instance a request (built from ``GET /models``). Turns spread the machine's own drift over both, and odd
rounds run A first, even rounds B first, so that whatever the second run of a round meets (the first
server's processes still exiting, a drift within the round) falls on both alike.

The summary gives each round's requests/s, each worker's share of the measured requests (from
``/metrics``: a keep-alive client's split over the workers is fixed when it connects, and moves throughput
by itself), the workers' CPU time per request, and the medians of B/A. CPU per request is the steadier of
the two on a shared machine: it does not move with the split or with other work taking cores. A setting
that acts only after some seconds (``SEQSERVE_CONNECTION_MAX_AGE_S``) needs ``--seconds`` well past it:
wrk opens its connections when a run starts. Needs ``wrk`` and the store's models (``BENTOML_HOME``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import psutil

from loadtests.chaos import worker_counts
from loadtests.payloads import request_body, served
from loadtests.server import ROOT, free_port, serve_command, started_process, worker_pids
from loadtests.wrk import post_script, wrk


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests ab", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tree-a", type=Path, default=ROOT, help="checkout that serves A (default: this one)")
    add("--tree-b", type=Path, default=ROOT, help="checkout that serves B (default: this one)")
    add("--env-a", action="append", default=[], metavar="KEY=VALUE", help="a setting for A (repeatable)")
    add("--env-b", action="append", default=[], metavar="KEY=VALUE", help="a setting for B (repeatable)")
    add("--rounds", type=int, default=3, help="turns of A and B, A first in odd rounds, B first in even ones (default %(default)s)")
    add("--seconds", type=int, default=30, help="length of each measured wrk run (default %(default)s)")
    add("--connections", type=int, default=64, help="wrk's keep-alive connections (default %(default)s)")
    return parser


def measure(tree: Path, env: dict[str, str], args: argparse.Namespace, folder: Path) -> dict:
    """Serve from ``tree`` with ``env``, warm it up for 5 s, then one wrk run of ``args.seconds``."""
    port = free_port()
    with started_process(serve_command(port), port=port, env=env, cwd=tree, log=folder / "server.log") as (url, server):
        models = httpx.get(f"{url}/models", timeout=10).json()
        body, _ = request_body(np.random.default_rng(0), "classify", served(models, "classify", []), 1)
        script = post_script(folder / "post.lua", json.dumps(body))
        wrk(f"{url}/classify", script, args.connections, 5)
        workers = [psutil.Process(pid) for pid in worker_pids(server.pid)]
        before, cpu_before = worker_counts(httpx.get(f"{url}/metrics", timeout=10).text), _cpu_s(workers)
        result = wrk(f"{url}/classify", script, args.connections, args.seconds)
        after, cpu_after = worker_counts(httpx.get(f"{url}/metrics", timeout=10).text), _cpu_s(workers)
        taken = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        result["shares"] = sorted((n / (sum(taken.values()) or 1) for n in taken.values()), reverse=True)
        result["cpu_ms_per_request"] = 1000 * (cpu_after - cpu_before) / max(result["requests"], 1)
        return result


def _cpu_s(workers: list[psutil.Process]) -> float:
    """User and system CPU seconds the worker processes have used so far."""
    return sum(sum(process.cpu_times()[:2]) for process in workers)


def described(run: dict) -> str:
    shares = "/".join(f"{100 * share:.0f}" for share in run["shares"]) or "-"
    return (f"{run['requests_per_s']:.1f} req/s (p99 {run['p99_ms']:.0f} ms, {run['errors']} errors, workers {shares}%, "
            f"CPU {run['cpu_ms_per_request']:.3f} ms/request)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    envs = [dict(pair.split("=", 1) for pair in pairs) for pairs in (args.env_a, args.env_b)]
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="seqserve-ab-") as folder:
        for round_ in range(1, args.rounds + 1):
            setups = list(zip((args.tree_a, args.tree_b), envs))
            first, second = setups if round_ % 2 else setups[::-1]
            runs = [measure(*first, args, Path(folder)), measure(*second, args, Path(folder))]
            a, b = runs if round_ % 2 else runs[::-1]
            ratios.append(b["requests_per_s"] / a["requests_per_s"])
            cpu_ratios.append(b["cpu_ms_per_request"] / a["cpu_ms_per_request"])
            print(f"round {round_} ({'A then B' if round_ % 2 else 'B then A'}): A {described(a)}, B {described(b)}, B/A {ratios[-1]:.3f}, "
                  f"CPU per request B/A {cpu_ratios[-1]:.3f}", flush=True)
    print(f"B/A median {statistics.median(ratios):.3f} (CPU per request B/A median {statistics.median(cpu_ratios):.3f}) "
          f"over {args.rounds} rounds at {args.connections} connections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
