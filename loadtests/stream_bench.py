"""The streaming table of ``python -m loadtests bench``: a new step by stream vs re-sending the whole history.

A device has a history of H steps and a new reading. Three ways to get the answer on all H+1 steps:

* **WebSocket** ``/stream``: send the one new step on an open stream (the state stays in the worker);
* **token** ``/stream/classify``: send the new step with the state token of the previous answer;
* **re-send**: send all H+1 steps to ``/classify``, as a client without streaming must.

For each way, history H (64, 512, 4096) and number of concurrent streams C (1, 64, 256), C clients each
first bring a stream to H steps (not timed), then send one new step at a time and wait for the answer,
for ``seconds``. Reported: the p50 time per step (what one new reading costs a client) and steps/s
(answers per second over all clients). The per-step cost of a stream must not depend on H; re-sending
grows with H.

Clients: token and re-send cells are driven by wrk when it is installed (each connection replays one
body; see :func:`_wrk_cell`), so they measure the server. WebSocket cells use the bench's own lean client
(:mod:`loadtests.lean_websocket`: each stream replays one pre-framed step message): one asyncio loop for
many streams, a blocking socket for a lone stream, whose latency is compared with the HTTP ceiling's.
It still shares the cores with the server on a small machine; the table names the client of every cell.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass

import httpx
import numpy as np

from loadtests.lean_websocket import AsyncStream, BlockingStream, client_frame

FEATURES = 8
# The default classifiers' recipe: one-way, running instance normalisation, a causal conv front end.
STREAM_HPARAMS = {"n_features": FEATURES, "n_classes": 5, "hidden_size": 64, "num_layers": 2, "bidirectional": False,
                  "dropout": 0.0, "instance_norm": "running", "conv_stride": 1}
CHUNK = 1024  # steps per message while a stream is brought to its history (SEQSERVE_STREAM_MAX_STEPS)


def store_stream_bench_model() -> str:
    """The streaming benchmark's model (GRU 2x64, 8 features, the default classifiers' recipe)."""
    import torch

    from models import create_model
    from models.artifact import ModelCard, save_artifact

    torch.manual_seed(0)
    model = create_model("gru_classifier", **STREAM_HPARAMS)
    card = ModelCard(task="classify", model_name="gru_classifier", hparams=STREAM_HPARAMS,
                     features=[f"f{i}" for i in range(FEATURES)], labels=[f"class{i}" for i in range(5)], max_length=4096)
    return save_artifact("bench-stream-gru", model, card)


@dataclass(frozen=True)
class BenchModel:
    """The served model a cell streams to: its tag, and its feature count for the random readings."""

    tag: str
    features: int

    def steps(self, rng: np.random.Generator, n: int) -> list[list[float]]:
        return rng.normal(size=(n, self.features)).round(3).tolist()


async def _timed(work, seconds: float) -> tuple[list[float], int]:
    """Run ``work()`` (one step) back to back for ``seconds``: (latencies in s, failures)."""
    latencies, failures, stop = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        try:
            await work()
            latencies.append(time.perf_counter() - started)
        except Exception:  # a 503 or a closed stream: counted, not timed
            failures += 1
    return latencies, failures


async def _websocket_client(url: str, model: BenchModel, history: int, seconds: float, start: asyncio.Barrier,
                            setting_up: asyncio.Semaphore):
    """One of many concurrent streams (lean asyncio client): brought to ``history`` steps, then timed.

    Streams are brought to their history a few at a time, as a well-behaved client fleet would: all at
    once, their long first messages are mostly refused (overloaded), and the retries alone keep the
    worker busy parsing them."""
    rng = np.random.default_rng()
    stream = await AsyncStream.open(url, f"/stream?model={model.tag}")
    try:
        await stream.receive()  # hello
        async with setting_up:
            give_up = time.perf_counter() + 300  # bounded, however slowly the worker lets the histories in
            for done in range(0, history, CHUNK):
                chunk = client_frame(json.dumps({"steps": model.steps(rng, min(CHUNK, history - done))}))
                while True:
                    stream.send(chunk)
                    answer = json.loads(await stream.receive())
                    if "retry_after_s" not in answer or time.perf_counter() > give_up:
                        break
                    await asyncio.sleep(0.05)  # overloaded: the chunk left the state as it was
                if "error" in answer:
                    raise RuntimeError(f"the stream refused its history: {answer}")
        step = client_frame(json.dumps({"steps": model.steps(rng, 1)}))
        await start.wait()
        return await stream.replay(step, seconds)
    finally:
        stream.close()


def _websocket_lone_client(url: str, model: BenchModel, history: int, seconds: float) -> tuple[list[float], int]:
    """One stream on a blocking socket (lean client): the per-step latency a lone device sees, measured
    the way wrk measures the HTTP ceiling (one connection, one request at a time)."""
    rng = np.random.default_rng()
    stream = BlockingStream(url, f"/stream?model={model.tag}")
    try:
        stream.receive()  # hello
        for done in range(0, history, CHUNK):
            stream.send(client_frame(json.dumps({"steps": model.steps(rng, min(CHUNK, history - done))})))
            answer = json.loads(stream.receive())
            if "error" in answer:
                raise RuntimeError(f"the stream refused its history: {answer}")
        step = client_frame(json.dumps({"steps": model.steps(rng, 1)}))
        latencies, failures, stop = [], 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            started = time.perf_counter()
            stream.send(step)
            if b'"error"' in stream.receive():
                failures += 1
            else:
                latencies.append(time.perf_counter() - started)
        return latencies, failures
    finally:
        stream.close()


async def _post(client: httpx.AsyncClient, path: str, body: dict) -> list:
    """POST until it is not a 503 (bringing many streams to their history at once overloads on purpose)."""
    give_up = time.perf_counter() + 120  # bounded: bringing 256 streams to a 4,096-step history sheds for a while
    while time.perf_counter() < give_up:
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.05)
            continue
        if response.status_code != 503:
            response.raise_for_status()
            return response.json()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{path}: no answer but 503 or a dropped connection for 120 s")


async def _token_at(client: httpx.AsyncClient, model: BenchModel, history: int, rng: np.random.Generator) -> str:
    """The state token of a new stream brought to ``history`` steps."""
    state = None
    for done in range(0, history, CHUNK):
        body = {"instances": [{"steps": model.steps(rng, min(CHUNK, history - done)), "state": state, "model": model.tag}]}
        state = (await _post(client, "/stream/classify", body))[0]["state"]
    return state


async def _token_client(client: httpx.AsyncClient, model: BenchModel, history: int, seconds: float, start: asyncio.Barrier):
    rng = np.random.default_rng()
    state = await _token_at(client, model, history, rng)
    step = model.steps(rng, 1)

    async def one():
        nonlocal state
        response = await client.post("/stream/classify", json={"instances": [{"steps": step, "state": state, "model": model.tag}]})
        response.raise_for_status()
        state = response.json()[0]["state"]

    await start.wait()
    return await _timed(one, seconds)


async def _resend_client(client: httpx.AsyncClient, model: BenchModel, history: int, seconds: float, start: asyncio.Barrier):
    body = json.dumps({"instances": [{"sequence": model.steps(np.random.default_rng(), history), "model": model.tag}]})

    async def one():
        response = await client.post("/classify", content=body, headers={"content-type": "application/json"})
        response.raise_for_status()

    await start.wait()
    return await _timed(one, seconds)


async def _warm_up(url: str, model: BenchModel) -> None:
    """One short stream first, so the first timed cell does not pay for the server's first requests."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(20):
            await _post(client, "/stream/classify", {"instances": [{"steps": model.steps(np.random.default_rng(), 4), "model": model.tag}]})


async def _cell(way: str, url: str, model: BenchModel, history: int, streams: int, seconds: float) -> dict:
    start = asyncio.Barrier(streams)
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        if way == "websocket" and streams == 1:
            runs = [asyncio.to_thread(_websocket_lone_client, url, model, history, seconds)]
        elif way == "websocket":
            setting_up = asyncio.Semaphore(8)
            runs = [_websocket_client(url, model, history, seconds, start, setting_up) for _ in range(streams)]
        elif way == "token":
            runs = [_token_client(client, model, history, seconds, start) for _ in range(streams)]
        else:
            runs = [_resend_client(client, model, history, seconds, start) for _ in range(streams)]
        results = await asyncio.gather(*runs)
    latencies = [x for lat, _ in results for x in lat]
    client = ("lean, blocking" if streams == 1 else "lean, asyncio") if way == "websocket" else "httpx"
    return {
        "way": way, "history": history, "streams": streams, "client": client, "steps": len(latencies),
        "failures": sum(f for _, f in results), "steps_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * float(np.median(latencies)) if latencies else float("nan"),
    }


def _wrk_cell(way: str, url: str, model: BenchModel, history: int, streams: int, seconds: float) -> dict:
    """A token or re-send cell driven by wrk (C), ``streams`` connections each replaying one body.

    The server keeps nothing between token requests, so replaying one valid token is exactly the work of
    a stream's next step: this measures the server, where a Python client on the same cores measures
    itself as much (on 2 cores httpx held re-sending at 512 steps and 64 streams to 120 requests/s, wrk
    got 258).
    """
    import tempfile
    from pathlib import Path

    from loadtests.bench import WRK_REPORT, wrk

    rng = np.random.default_rng()
    if way == "token":

        async def token() -> str:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await _token_at(client, model, history, rng)

        path, body = "/stream/classify", {"instances": [{"steps": model.steps(rng, 1), "state": asyncio.run(token()), "model": model.tag}]}
    else:
        path, body = "/classify", {"instances": [{"sequence": model.steps(rng, history), "model": model.tag}]}
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.lua"
        script.write_text("wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
                          f"wrk.body = [==[{json.dumps(body)}]==]\n{WRK_REPORT}")
        wrk(url + path, script, min(streams, 8), 1)  # warm-up
        result = wrk(url + path, script, streams, max(1, round(seconds)))
    answered = result["requests"] - result["errors"]  # errors: 503s and other non-2xx, and socket errors
    return {
        "way": way, "history": history, "streams": streams, "client": "wrk", "steps": answered,
        "failures": result["errors"], "steps_per_s": answered / result["seconds"], "p50_ms": result["p50_ms"],
    }


def _run(coroutine):
    """Run ``coroutine`` on uvloop when it is there (uvicorn's own loop; a cheaper client), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def run_websocket_ceiling(url: str, streams: list[int], seconds: float) -> list[dict]:
    """WebSocket cells against the WebSocket ceiling (``loadtests.baselines.websocket_echo``): no model, no state."""
    echo = BenchModel("ceiling", FEATURES)
    rows = []
    for n in streams:
        row = {**_run(_cell("websocket", url, echo, 1, n, seconds)), "way": "websocket ceiling (parse only)", "history": None}
        print(f"… websocket ceiling streams {n}: {row['steps_per_s']:.0f} messages/s, p50 {row['p50_ms']:.2f} ms", flush=True)
        rows.append(row)
    return rows


def run_streaming(url: str, tag: str, histories: list[int], streams: list[int], seconds: float) -> list[dict]:
    """Every (way, history, streams) cell against a running seqserve at ``url`` serving the classifier ``tag``.

    Token and re-send cells use wrk when it is installed (see :func:`_wrk_cell`); WebSocket cells, and
    every cell without wrk, use the Python clients."""
    served = httpx.get(f"{url}/models", timeout=30).json()
    info = next((m for m in served if tag in (m["tag"], m["tag"].split(":")[0])), None)
    if info is None:
        raise ValueError(f"{url} does not serve {tag!r}; it serves {', '.join(m['tag'] for m in served)}")
    model = BenchModel(tag, len(info["features"]))
    rows = []
    asyncio.run(_warm_up(url, model))
    for way in ("websocket", "token", "re-send"):
        for history in histories:
            for n in streams:
                if way != "websocket" and shutil.which("wrk"):
                    row = _wrk_cell(way, url, model, history, n, seconds)
                else:
                    row = _run(_cell(way, url, model, history, n, seconds))
                print(f"… {way} history {history} streams {n}: {row['steps_per_s']:.0f} steps/s, p50 {row['p50_ms']:.2f} ms", flush=True)
                rows.append(row)
    return rows


def streaming_markdown(rows: list[dict], seconds: float, ceiling_p50_ms: float | None = None) -> str:
    """The table, and the issue's three targets checked against it."""
    lines = [f"### Streaming: one new step vs re-sending the history ({seconds:g}s per cell, 1 worker)", "",
             "| way | history | streams | client | steps/s | p50 ms per step | failures |", "|---|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['way']} | {r['history'] if r['history'] is not None else '–'} | {r['streams']} | {r.get('client', '')} "
              f"| {r['steps_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['failures']} |" for r in rows]
    cell = {(r["way"], r["history"], r["streams"]): r for r in rows}
    lines += ["", "| target | measured |", "|---|---|"]
    for way in ("websocket", "token"):
        low, high = cell.get((way, 64, 1)), cell.get((way, 4096, 1))
        if low and high:
            lines.append(f"| {way}: per-step p50 within 10% from history 64 to 4096 (1 stream) "
                         f"| {low['p50_ms']:.2f} → {high['p50_ms']:.2f} ms ({100 * (high['p50_ms'] / low['p50_ms'] - 1):+.0f}%) |")
        for n in sorted({r["streams"] for r in rows}):
            ours, resend = cell.get((way, 512, n)), cell.get(("re-send", 512, n))
            if ours and resend and resend["steps_per_s"]:
                lines.append(f"| {way}: ≥50× the steps/s of re-sending at history 512, {n} streams "
                             f"| {ours['steps_per_s'] / resend['steps_per_s']:.1f}× |")
    for n in sorted({r["streams"] for r in rows}):
        ours, floor = cell.get(("websocket", 512, n)), cell.get(("websocket ceiling (parse only)", None, n))
        if ours and floor:
            lines.append(f"| (context) websocket at history 512 ÷ the WebSocket ceiling, {n} streams "
                         f"| {ours['steps_per_s'] / floor['steps_per_s']:.2f}× ({ours['steps_per_s']:,.0f} vs {floor['steps_per_s']:,.0f} messages/s) |")
    one = [r for r in rows if r["way"] == "websocket" and r["streams"] == 1]
    if one and ceiling_p50_ms is not None:
        lines.append(f"| WebSocket p50 at 1 stream within 0.5 ms of the HTTP ceiling's p50 "
                     f"| {min(r['p50_ms'] for r in one):.2f} vs {ceiling_p50_ms:.2f} ms (ceiling by wrk, ours by the lean blocking client) |")
    return "\n".join(lines)
