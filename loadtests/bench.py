"""``python -m loadtests bench``: seqserve next to the model's own speed and three other servers, in one run.

In one run, back to back, with the same single-sequence /classify request (64 steps x 8 features,
GRU 2x64, 5 classes):

1. model only — in-process forward passes at batch 1, 8, 32, 64;
2. HTTP+JSON ceiling — a plain ASGI endpoint that parses the same body and returns a constant;
3. plain BentoML — an adaptive-batching service as the BentoML docs write it;
4. no batching — a plain ASGI endpoint that runs the model once per request;
5. seqserve itself;

then seqserve with 64 instances of 64 x 8 per request, the same instances as JSON on ``/classify``, as
the Open Inference Protocol's JSON and as its binary tensors (``/v2/models/<name>/infer``), next to the
model alone at batch 64; then the streaming table (``loadtests/stream_bench.py``): one new step over the ``/stream`` WebSocket or
with a state token, next to re-sending the whole history to ``/classify``.

How the 64-instance rows compare: the same stored model and the same 64 instances (the JSON rows carry
them as decimals rounded to 6 places, v2 binary as their float32 bytes) go to one seqserve worker with one
torch thread, in turn, from wrk at the same connection counts. The model alone runs in this process, with
one torch thread and nothing else running, over one input batch it reuses (warm in the cache): the most a
worker could do. A 64-instance request fills a batch (the default SEQSERVE_MAX_BATCH_SIZE is 64), and the
worker runs such a batch on its event loop, so a worker does one request's HTTP work, decoding and forward
pass after another: v2 binary cannot beat the model alone, and model alone ÷ /classify JSON is the most v2
binary ÷ /classify JSON can be (the ratio table shows both).

Every server gets one worker and one torch thread. Load comes from ``wrk`` (C, one thread), whose own
CPU use is measured and reported, so the generator is seen not to be the bottleneck. Machines here are
shared and noisy: the ratios (seqserve ÷ plain BentoML, seqserve ÷ ceiling) are the headline.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from loadtests.baselines import websocket_echo
from loadtests.payloads import V2_HEADER, check_answers, check_v2_answer, v2_body
from loadtests.server import free_port, running_process, serve_command
from loadtests.stream_bench import run_streaming, run_websocket_ceiling, store_stream_bench_model, streaming_markdown
from loadtests.wrk import post_script, wrk

ROOT = Path(__file__).resolve().parent.parent
HPARAMS = {"n_features": 8, "n_classes": 5, "hidden_size": 64, "num_layers": 2, "bidirectional": False, "dropout": 0.0}
STEPS = 64
BATCH = 64  # instances per request in the batch table


def store_bench_model() -> str:
    """The benchmark's model, stored through models.artifact like any trained model."""
    import torch

    from models import create_model
    from models.artifact import ModelCard, save_artifact

    torch.manual_seed(0)
    model = create_model("gru_classifier", **HPARAMS)
    card = ModelCard(
        task="classify", model_name="gru_classifier", hparams=HPARAMS,
        features=[f"f{i}" for i in range(8)], labels=[f"class{i}" for i in range(5)], max_length=STEPS,
    )
    return save_artifact("bench-gru", model, card)


def model_only(tag: str, batch_sizes=(1, 8, 32, 64), seconds: float = 2.0) -> list[dict]:
    """Sequences per second of the bare forward pass, in this process with one torch thread."""
    import torch

    from models.artifact import load_artifact

    torch.set_num_threads(1)
    module = load_artifact(tag).module
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, STEPS, 8)
        with torch.inference_mode():
            module(x)  # warm-up
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                module(x)
                calls += 1
        elapsed = time.perf_counter() - started
        rows.append({"batch": batch, "sequences_per_s": calls * batch / elapsed, "ms_per_pass": 1000 * elapsed / calls})
    return rows


def request_body() -> str:
    sequence = np.random.default_rng(1).uniform(-1, 1, size=(STEPS, 8)).round(6).tolist()
    return json.dumps({"instances": [{"sequence": sequence}]})


CEILING = "HTTP+JSON ceiling (parse only)"


def targets(tag: str) -> list[tuple[str, list[str], dict, str, str]]:
    """(label, command, env, ready path, request path) for every server, in the order they run."""
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "loadtests.baselines.plain_http:app", "--host", "127.0.0.1", "--no-access-log", "--port"]

    def bentoml(target: str) -> list[str]:
        return [py, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port"]

    return [
        (CEILING, uvicorn, {"BENCH_MODEL": tag}, "/healthz", "/parse-only"),
        ("plain BentoML batchable", bentoml("loadtests.baselines.plain_bentoml:PlainBatchable"), {"BENCH_MODEL": tag}, "/readyz", "/classify"),
        ("no batching (plain ASGI)", uvicorn, {"BENCH_MODEL": tag}, "/healthz", "/classify"),
        ("seqserve", bentoml("service.app:SeqServe"), {"SEQSERVE_MODELS": tag}, "/readyz", "/classify"),
    ]


def run(tag: str, concurrency: list[int], seconds: int, only: set[str] | None = None) -> dict:
    """The model-only rows and every server of :func:`targets` (or the ``only`` ones) at each connection count."""
    results: dict = {"model_only": model_only(tag) if only is None else [], "servers": {}}
    with tempfile.TemporaryDirectory() as folder:
        body = request_body()
        script = post_script(Path(folder) / "post.lua", body)
        for label, command, env, ready, path in targets(tag):
            if only is not None and label not in only:
                continue
            port = free_port()
            print(f"… {label}", file=sys.stderr, flush=True)
            with running_process(command + [str(port)], port=port, ready_path=ready, env={**env, "OMP_NUM_THREADS": "1"}) as url:
                check = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
                check.raise_for_status()
                wrk(url + path, script, 16, 2)  # warm-up
                results["servers"][label] = [wrk(url + path, script, c, seconds) for c in concurrency]
    return results


def batch_requests(entry: dict) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """(path, body, headers) of each way to send the same BATCH instances of STEPS x 8 to ``entry``'s model."""
    values = np.random.default_rng(2).uniform(-1, 1, size=(BATCH, STEPS, 8)).round(6)  # (N, T, F)
    lengths = np.full(BATCH, STEPS)
    infer = f"/v2/models/{entry['tag'].split(':')[0]}/infer"
    classify = json.dumps({"instances": [{"sequence": sequence.tolist()} for sequence in values]}).encode()
    return {
        "/classify JSON": ("/classify", classify, {"Content-Type": "application/json"}),
        "v2 JSON": (infer, *v2_body("classify", values, lengths, binary=False)),
        "v2 binary": (infer, *v2_body("classify", values, lengths, binary=True)),
    }


def run_batches(tag: str, concurrency: list[int], seconds: int) -> dict[str, list[dict]]:
    """seqserve answering BATCH instances per request, each way of :func:`batch_requests` at each connection count."""
    rows: dict[str, list[dict]] = {}
    port = free_port()
    print(f"… seqserve, {BATCH} instances per request", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as folder, running_process(
        serve_command(port), port=port, ready_path="/readyz", env={"SEQSERVE_MODELS": tag, "OMP_NUM_THREADS": "1"}
    ) as url:
        [entry] = httpx.get(url + "/models", timeout=10).json()
        for way, (path, body, headers) in batch_requests(entry).items():
            check = httpx.post(url + path, content=body, headers=headers, timeout=30)
            if path == "/classify":
                problem = check_answers("classify", [entry] * BATCH, check.status_code, check.text)
            else:
                problem = check_v2_answer(entry, BATCH, check.status_code, check.content, check.headers.get(V2_HEADER))
            if problem:
                raise RuntimeError(f"seqserve answered {way} wrongly: {problem}")
            script = post_script(Path(folder) / f"batch-{len(rows)}.lua", body, headers)
            wrk(url + path, script, 4, 2)  # warm-up
            rows[way] = [wrk(url + path, script, c, seconds) for c in concurrency]
            for row in rows[way]:  # answers other than 2xx (503 when overloaded) carry no sequences
                row["sequences_per_s"] = BATCH * answered_per_s(row)
    return rows


def batch_markdown(results: dict, seconds: int) -> list[str]:
    """The batch table, and the issue's targets: v2 binary against the model alone at batch 64 and against JSON."""
    batches = results.get("batches", {})
    if not batches:
        return []
    lines = ["", f"### {BATCH} instances per request ({STEPS} steps x 8 features each): seqserve, 1 worker, 1 torch thread; "
             f"wrk 1 thread, {seconds}s per cell", ""]
    lines += ["| request | conns | req/s | sequences/s | p50 ms | p99 ms | errors | wrk CPU % |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for way, rows in batches.items():
        for r in rows:
            lines.append(
                f"| {way} | {r['connections']} | {r['requests_per_s']:,.1f} | {r['sequences_per_s']:,.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['errors']} | {r['generator_cpu_pct']:.0f} |"
            )
    alone = next((r["sequences_per_s"] for r in results["model_only"] if r["batch"] == BATCH), None)
    # A request fills a batch (BATCH = the default SEQSERVE_MAX_BATCH_SIZE), so v2 binary runs at most as fast as
    # the model alone at that batch: model alone ÷ /classify JSON is the most v2 binary ÷ /classify JSON can be.
    lines += ["", f"| conns | v2 binary ÷ model alone at batch {BATCH} (target ≥ 0.8) | v2 binary ÷ /classify JSON (target ≥ 2) "
              "| model alone ÷ /classify JSON (the most the previous column can be) | v2 JSON ÷ /classify JSON |",
              "|---:|---:|---:|---:|---:|"]
    for binary, v2_json, classify in zip(batches["v2 binary"], batches["v2 JSON"], batches["/classify JSON"]):
        json_speed = max(classify["sequences_per_s"], 1e-9)
        ratio, bound = (f"{binary['sequences_per_s'] / alone:.2f}×", f"{alone / json_speed:.2f}×") if alone else ("-", "-")
        lines.append(
            f"| {binary['connections']} | {ratio} | {binary['sequences_per_s'] / json_speed:.2f}× | {bound} "
            f"| {v2_json['sequences_per_s'] / json_speed:.2f}× |"
        )
    return lines


def model_markdown(results: dict) -> list[str]:
    """The model-only table: in-process forward passes, the speed every server is compared with."""
    lines = ["### Model only (in-process forward, 1 torch thread)", "", "| batch | sequences/s | ms per pass |", "|---:|---:|---:|"]
    return lines + [f"| {r['batch']} | {r['sequences_per_s']:,.0f} | {r['ms_per_pass']:.2f} |" for r in results["model_only"]]


def answered_per_s(row: dict) -> float:
    """Requests answered with a 2xx per second: a refusal (503 under overload) or an error is no throughput."""
    return (row["requests"] - row["errors"]) / row["seconds"]


def markdown(results: dict, seconds: int) -> str:
    lines = model_markdown(results)
    lines += ["", f"### Servers (1 worker, 1 torch thread; wrk 1 thread, {seconds}s per cell)", ""]
    lines += ["| server | conns | answered/s | p50 ms | p99 ms | errors | wrk CPU % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rows in results["servers"].items():
        for r in rows:
            lines.append(
                f"| {label} | {r['connections']} | {answered_per_s(r):,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['errors']} | {r['generator_cpu_pct']:.0f} |"
            )
    servers = results["servers"]
    ours = {r["connections"]: r for r in servers.get("seqserve", [])}
    lines += ["", "### Ratios (answered per second)", "",
              "| conns | seqserve ÷ plain BentoML | seqserve ÷ ceiling | p50 seqserve − no batching (ms) |", "|---:|---:|---:|---:|"]
    for c, r in ours.items():
        def other(label: str) -> dict:
            return next(x for x in servers[label] if x["connections"] == c)

        lines.append(
            f"| {c} | {answered_per_s(r) / answered_per_s(other('plain BentoML batchable')):.2f}× "
            f"| {answered_per_s(r) / answered_per_s(other(CEILING)):.2f}× "
            f"| {r['p50_ms'] - other('no batching (plain ASGI)')['p50_ms']:+.2f} |"
        )
    return "\n".join(lines + batch_markdown(results, seconds))


def streaming(args: argparse.Namespace) -> list[dict]:
    """The streaming table's rows: seqserve serving the streaming benchmark model, one worker, one torch thread,
    then the WebSocket ceiling (a wsproto server that only parses each message) at the same stream counts."""
    tag = store_stream_bench_model()
    streams = [int(n) for n in args.streams.split(",")]
    port = free_port()
    print("… seqserve streaming", file=sys.stderr, flush=True)
    histories = [int(h) for h in args.histories.split(",")]
    open_at_once = len(histories) * max(streams)  # every history's streams of one stream count (stream_bench.compare)
    # A cell's streams stay silent while the other cells of their stream count are set up: bringing 256 streams
    # to 4,096 steps took 66 s on a quiet 2-core machine and over 200 s on a busy one, and the server closes a
    # stream silent for SEQSERVE_STREAM_IDLE_S (300 s by default; 4408). A device sends readings far more often.
    env = {"SEQSERVE_MODELS": tag, "OMP_NUM_THREADS": "1", "SEQSERVE_STREAM_MAX_OPEN": str(max(1000, 2 * open_at_once)),
           "SEQSERVE_STREAM_IDLE_S": "3600"}
    with running_process(serve_command(port), port=port, ready_path="/readyz", env=env) as url:
        rows = run_streaming(url, tag.split(":")[0], histories, streams, args.stream_seconds, args.stream_rounds)
    port = free_port()
    with running_process(websocket_echo.serve_command(port), port=port, ready_path="/healthz") as url:
        return rows + run_websocket_ceiling(url, streams, args.stream_seconds)


def machine() -> str:
    import bentoml
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"bentoml {bentoml.__version__}, {subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.split(' Copyright')[0]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default: 10)")
    parser.add_argument("--concurrency", default="1,16,64", help="connection counts (default: 1,16,64)")
    parser.add_argument("--batch-concurrency", default="1,4,16",
                        help=f"connection counts of the {BATCH}-instance requests (default: 1,4,16)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for results.json and table.md")
    parser.add_argument("--no-update", action="store_true",
                        help="do not rewrite loadtests/BENCHMARKS.md (--only-streaming and --only-batches never do)")
    parser.add_argument("--streams", default="1,64,256", help="concurrent streams in the streaming table (default: 1,64,256)")
    parser.add_argument("--histories", default="64,512,4096", help="history lengths in the streaming table (default: 64,512,4096)")
    parser.add_argument("--stream-seconds", type=float, default=10, help="length of each streaming cell (default: 10)")
    parser.add_argument("--stream-rounds", type=int, default=5,
                        help="windows each streaming cell is split into, taken in turn with the other cells of its stream count (default: 5)")
    parser.add_argument("--only-streaming", action="store_true", help="only the streaming table (and, with wrk, the HTTP ceiling at 1 connection it is compared with)")
    parser.add_argument("--only-batches", action="store_true",
                        help=f"only the {BATCH}-instance table and the model alone at batch {BATCH} it is compared with")
    args = parser.parse_args(argv)
    if args.only_streaming and args.only_batches:
        parser.error("--only-streaming and --only-batches each ask for one table; give one of them")
    if not args.only_streaming and not shutil.which("wrk"):
        print("error: the benchmark needs wrk (a C load generator): apt-get install wrk", file=sys.stderr)
        return 2
    # A private model store: the benchmark never touches the user's models, and leaves nothing behind.
    os.environ["BENTOML_HOME"] = store = tempfile.mkdtemp(prefix="seqserve-bench-")
    atexit.register(shutil.rmtree, store, True)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.only_batches:
        tag = store_bench_model()
        results = {"model_only": model_only(tag, (BATCH,)), "servers": {}}
        results["batches"] = run_batches(tag, [int(c) for c in args.batch_concurrency.split(",")], args.seconds)
    elif not args.only_streaming:
        tag = store_bench_model()
        results = run(tag, concurrency, args.seconds)
        results["batches"] = run_batches(tag, [int(c) for c in args.batch_concurrency.split(",")], args.seconds)
    elif shutil.which("wrk"):  # the lone stream's target is the HTTP ceiling's p50 at one connection: that server only
        results = run(store_bench_model(), [1], args.seconds, only={CEILING})
    else:
        results = {"model_only": [], "servers": {}}
    if not args.only_batches:
        results["streaming"] = streaming(args)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ceiling = next((r["p50_ms"] for r in results["servers"].get(CEILING, []) if r["connections"] == 1), None)
    if args.only_batches:
        table = "\n".join(model_markdown(results) + batch_markdown(results, args.seconds))
    else:
        table = "" if args.only_streaming else markdown(results, args.seconds) + "\n\n"
        table += streaming_markdown(results["streaming"], args.stream_seconds, ceiling)
    results.update({"machine": machine() if shutil.which("wrk") else platform.platform(), "date": when})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    if args.only_streaming or args.only_batches:  # one table of several: BENCHMARKS.md would lose the others
        print(f"(this table alone is in {args.out / 'table.md'}; loadtests/BENCHMARKS.md is left as it was)")
    elif not args.no_update:
        header = (
            "# Benchmarks\n\nThe latest `python -m loadtests bench` (see `loadtests/bench.py` for what each row is).\n\n"
            f"- date: {when}\n- machine: {results['machine']}\n- request: one sequence of {STEPS} steps x 8 features, GRU 2x64, 5 classes "
            f"({BATCH} of them per request in the {BATCH}-instance table)\n\n"
        )
        (ROOT / "loadtests" / "BENCHMARKS.md").write_text(header + table + "\n")
    return 0
