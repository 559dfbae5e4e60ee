"""The soak's chaos and judgement (loadtests/chaos.py, loadtests/soak.py): shares, even-again time, stalls, the
schedule, then one short real soak that kills a worker and stores a new model version."""

import json
import os
import signal
import subprocess
import sys
import time

from loadtests import gc_pauses
from loadtests.chaos import WorkerShares, worker_counts
from loadtests.runner import ROOT
from loadtests.soak import Ticker, build_parser, option_problem, stalls, warmup_minutes
from tests import tiny_models


def shares_over(samples: list[tuple[float, dict[int, float]]]) -> WorkerShares:
    return WorkerShares("http://unused", 0.0, samples)


def test_worker_counts_are_read_from_metrics():
    text = (
        "# HELP seqserve_worker_requests_total HTTP requests taken in, by worker process id\n"
        "# TYPE seqserve_worker_requests_total counter\n"
        'seqserve_worker_requests_total{worker="101"} 40.0\n'
        'seqserve_worker_requests_total{worker="202"} 2.0\n'
    )
    assert worker_counts(text) == {101: 40.0, 202: 2.0}


def test_shares_and_the_time_they_are_even_again_after_a_kill():
    # Two workers even until 20 s; 1 is killed there, 3 starts at 26 s and catches up from 30 s on.
    samples = [(float(t), {1: 5.0 * t, 2: 5.0 * t}) for t in range(0, 21, 2)]
    samples += [(float(t), {1: 100.0, 2: 100.0 + 10 * (t - 20), **({3: 2.0 * (t - 24)} if t > 24 else {})})
                for t in range(22, 31, 2)]
    samples += [(float(t), {1: 100.0, 2: 200.0 + 5 * (t - 30), 3: 12.0 + 5 * (t - 30)}) for t in range(32, 61, 2)]
    shares = shares_over(samples)
    assert shares.shares(0, 20) == {1: 0.5, 2: 0.5}
    assert shares.requests(20, 30) == {2: 100.0, 3: 12.0}
    assert shares.first_request(3) == 26.0
    # The first 10 s window, all after the kill, with 2 workers each 35-65%: it ends at 40 s (2: 50+, 3: 50-).
    even = shares.even_again(20, workers=2)
    window = shares.shares(even - 10, even)
    assert even == 36.0 and all(0.35 <= share <= 0.65 for share in window.values())
    assert shares.even_again(20, workers=3) is None


def test_stalls_are_full_minutes_above_the_factor_times_the_median_minute_leaving_out_chaos_minutes():
    minutes = [{"minute": i + 1, "seconds": 60, "p99_ms": p99} for i, p99 in enumerate([100, 110, 400, 95, 160, 170])]
    minutes.append({"minute": 7, "seconds": 20, "p99_ms": 900})  # short: not judged
    assert stalls(minutes, 1.5, skip=set()) == (135.0, [3])
    assert stalls(minutes, 1.5, skip={3}) == (110.0, [6])
    assert stalls(minutes[:2], 1.5, skip=set()) == (None, [])


def test_the_warm_up_minutes_are_not_judged_as_stalls():
    assert warmup_minutes(60) == {1}
    assert warmup_minutes(90) == {1, 2}  # minute 2 begins inside the warm-up
    assert warmup_minutes(0) == set()


def test_the_ticker_runs_periodic_jobs_on_their_period_and_one_off_jobs_once():
    calls, now = [], [0.0]
    ticker = Ticker(started=100.0, periodic=[(2.0, lambda: calls.append(f"every 2 at {now[0]:g}"))],
                    once=[(3.0, lambda: calls.append(f"once at {now[0]:g}"))], clock=lambda: 100.0 + now[0])
    for now[0] in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        ticker.tick()
    assert calls == ["every 2 at 0", "every 2 at 2", "once at 3", "every 2 at 4"]


def test_chaos_options_outside_the_run_or_without_a_server_to_kill_are_refused():
    parse = build_parser().parse_args
    assert option_problem(parse(["--duration", "60s", "--kill-worker-at", "90s"])) == (
        "--kill-worker-at 90s is not within the run (--duration 60s)")
    assert "needs --server-pid" in option_problem(parse(["--host", "http://x", "--kill-worker-at", "10s"]))
    assert "leave out --host" in option_problem(parse(["--host", "http://x", "--gc-pauses"]))
    assert option_problem(parse(["--kill-worker-at", "10s", "--store-version-at", "20s"])) is None


def test_a_soak_that_kills_a_worker_and_stores_a_version_reports_both(tmp_path):
    clf = tiny_models.store_classifier("chaos-clf")
    out = tmp_path / "soak"
    command = [sys.executable, "-m", "loadtests", "soak", "--models", "chaos-clf", "--scenarios", "ClassifyUser", "--users", "4",
               "--spawn-rate", "4", "--duration", "14s", "--kill-worker-at", "5s", "--store-version-at", "7s", "--gc-pauses",
               "--sample-every", "1s", "--max-p99-ms", "100000", "--max-failure-rate", "0.5", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          # 4 keep-alive users may all land on one worker at first; a short bound on requests
                          # per connection spreads them over both before the kill at 5 s (as a pool's do in minutes).
                          env={**os.environ, "SEQSERVE_WORKERS": "2", "SEQSERVE_MODEL_POLL_S": "1",
                               "SEQSERVE_CONNECTION_MAX_REQUESTS": "50"})
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "soak.json").read_text())
    kill, stored = report["chaos"]
    assert kill["event"] == "kill" and kill["pid"] and str(kill["pid"]) in kill["shares_before"]
    assert len(kill["shares_before"]) == 2
    assert stored["event"] == "store_version" and stored["model"] == clf and stored["stored"].startswith("chaos-clf:")
    assert stored["stored"] != clf
    # Both workers served the new version as the name's default within the run (a replaced worker loads it at its start).
    assert 7 <= stored["seconds"] <= stored["first_served_s"] <= stored["all_served_s"] <= 14 + 5
    assert "served as its name's default by a first worker" in done.stdout
    assert "failures other than 503 with Retry-After" in done.stdout
    assert report["minutes"][0]["shares"] and "gc_longest_ms" in report["minutes"][0]
    assert f"chaos: worker {kill['pid']} SIGKILLed" in done.stdout and "garbage collector" in done.stdout
    assert "processes that did not run for over 100 ms" in done.stdout
    assert any(label.startswith("load generator ") for label in report["paused"])  # the client is watched too


def test_the_heartbeat_records_a_process_the_machine_paused(tmp_path):
    # SIGSTOP for 0.4 s is what a host that deschedules the VM, or a thread holding the GIL, looks like from
    # inside: the heartbeat wakes that late and the soak can say whose pause a latency spike was.
    env = {**os.environ, **gc_pauses.watched_env(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4.5)"], env=env)
    try:
        time.sleep(1.0)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(0.4)
        os.kill(child.pid, signal.SIGCONT)
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
    found = gc_pauses.read_stalls(tmp_path)[child.pid]
    assert len(found) == 1 and 300 <= found[0][1] <= 1500
