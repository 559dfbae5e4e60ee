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

The targets are ratios between cells, and this machine's speed drifts by half within minutes. So the
cells of one stream count are all set up first and then take turns, in ``rounds`` short windows
(:func:`compare`): a slow spell slows every cell it is compared with, not one of them.

Clients: token and re-send cells are driven by wrk when it is installed (each connection replays one
body; see :class:`HttpWay`), so they measure the server. WebSocket cells use the bench's own lean client
(:mod:`loadtests.lean_websocket`: each stream replays one pre-framed step message): one asyncio loop for
many streams, a blocking socket for a lone stream, whose latency is compared with the HTTP ceiling's.
It still shares the cores with the server on a small machine; the table names the client of every cell.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np

from loadtests.lean_websocket import AsyncStream, BlockingStream, client_frame
from loadtests.wrk import post_script, wrk

FEATURES = 8
# The default classifiers' recipe: one-way, running instance normalisation, a causal conv front end.
STREAM_HPARAMS = {"n_features": FEATURES, "n_classes": 5, "hidden_size": 64, "num_layers": 2, "bidirectional": False,
                  "dropout": 0.0, "instance_norm": "running", "conv_stride": 1}
CHUNK = 1024  # steps per message while a stream is brought to its history (SEQSERVE_STREAM_MAX_STEPS)
WAYS = ("websocket", "token", "re-send")


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


@dataclass
class Tally:
    """One cell's timed windows so far: answered steps, failures, seconds timed, each window's p50, and the
    streams the server refused or closed (by the reason it gave), which the cell goes on without."""

    way: str
    history: int | None
    streams: int
    client: str
    answered: int = 0
    failures: int = 0
    seconds: float = 0.0
    p50s_ms: list[float] = field(default_factory=list)
    lost: Counter[str] = field(default_factory=Counter)

    def lose(self, err: ConnectionError) -> None:
        self.lost[str(err)] += 1

    def add(self, answered: int, failures: int, seconds: float, p50_ms: float) -> None:
        self.answered, self.failures, self.seconds = self.answered + answered, self.failures + failures, self.seconds + seconds
        self.p50s_ms.append(p50_ms)

    def add_latencies(self, latencies: list[float], failures: int, seconds: float) -> None:
        self.add(len(latencies), failures, seconds, 1000 * float(np.median(latencies)) if latencies else float("nan"))

    def row(self) -> dict:
        """steps/s over all windows; p50: the median of the windows' p50s."""
        return {
            "way": self.way, "history": self.history, "streams": self.streams, "client": self.client,
            "steps": self.answered, "failures": self.failures, "steps_per_s": self.answered / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.median(self.p50s_ms)) if self.p50s_ms else float("nan"), "windows": len(self.p50s_ms),
            "lost_streams": sum(self.lost.values()), "lost_because": dict(self.lost),
        }


class WebSocketWay:
    """``streams`` WebSocket streams brought to ``history`` steps (not timed); each window, every stream
    replays one new step back to back. One lean asyncio client for many streams, a blocking socket for one.

    A stream the server refuses (1013 past ``SEQSERVE_STREAM_MAX_OPEN``) or closes (4408 when idle) is a
    result, not a crash: it is counted in the row's ``lost_streams`` with the server's reason, and the
    cell goes on with the others."""

    def __init__(self, url: str, model: BenchModel, history: int, streams: int):
        self.url, self.model, self.history = url, model, history
        self.tally = Tally("websocket", history, streams, "lean, blocking" if streams == 1 else "lean, asyncio")
        self.lone: BlockingStream | None = None
        self.step = b""  # the lone stream's step frame
        self.many: list[tuple[AsyncStream, bytes]] = []  # each stream with its step frame

    async def open(self) -> None:
        if self.tally.streams == 1:
            try:
                self.lone, self.step = await asyncio.to_thread(self._open_lone)
            except ConnectionError as err:
                self.tally.lose(err)
            return
        setting_up = asyncio.Semaphore(8)
        opened = await asyncio.gather(*(self._open_one(setting_up) for _ in range(self.tally.streams)), return_exceptions=True)
        self.many = [o for o in opened if not self._lost(o)]

    async def _open_one(self, setting_up: asyncio.Semaphore) -> tuple[AsyncStream, bytes]:
        """One stream opened and brought to its history, a few streams at a time, as a well-behaved fleet
        would: all at once, their long first messages are mostly refused (overloaded), and the retries alone
        keep the worker busy parsing them. ConnectionError when the server refuses or closes the stream."""
        rng = np.random.default_rng()
        async with setting_up:
            stream = await AsyncStream.open(self.url, f"/stream?model={self.model.tag}")
            try:
                await stream.receive()  # hello
                give_up = time.perf_counter() + 300  # bounded, however slowly the worker lets the histories in
                for done in range(0, self.history, CHUNK):
                    chunk = client_frame(json.dumps({"steps": self.model.steps(rng, min(CHUNK, self.history - done))}))
                    while True:
                        stream.send(chunk)
                        answer = json.loads(await stream.receive())
                        if "retry_after_s" not in answer or time.perf_counter() > give_up:
                            break
                        await asyncio.sleep(0.05)  # overloaded: the chunk left the state as it was
                    if "error" in answer:
                        raise RuntimeError(f"the stream refused its history: {answer}")
            except BaseException:
                stream.close()
                raise
        return stream, client_frame(json.dumps({"steps": self.model.steps(rng, 1)}))

    def _lost(self, result) -> bool:
        """Whether a stream's ``result`` (from ``gather(..., return_exceptions=True)``) says the server refused or
        closed it, which is counted; any other exception is raised."""
        if isinstance(result, ConnectionError):
            self.tally.lose(result)
            return True
        if isinstance(result, BaseException):
            raise result
        return False

    def _open_lone(self) -> tuple[BlockingStream, bytes]:
        rng = np.random.default_rng()
        stream = BlockingStream(self.url, f"/stream?model={self.model.tag}")
        stream.receive()  # hello
        for done in range(0, self.history, CHUNK):
            stream.send(client_frame(json.dumps({"steps": self.model.steps(rng, min(CHUNK, self.history - done))})))
            answer = json.loads(stream.receive())
            if "error" in answer:
                stream.close()
                raise RuntimeError(f"the stream refused its history: {answer}")
        return stream, client_frame(json.dumps({"steps": self.model.steps(rng, 1)}))

    async def window(self, seconds: float) -> None:
        started = time.perf_counter()
        if self.lone is not None:
            try:
                latencies, failures = await asyncio.to_thread(self._lone_window, seconds)
            except ConnectionError as err:
                self.tally.lose(err)
                self.lone.close()
                self.lone, latencies, failures = None, [], 0
        else:
            results = await asyncio.gather(*(stream.replay(step, seconds) for stream, step in self.many), return_exceptions=True)
            kept = [(pair, result) for pair, result in zip(self.many, results) if not self._lost(result)]
            self.many = [pair for pair, _ in kept]
            latencies, failures = [x for _, (lat, _) in kept for x in lat], sum(f for _, (_, f) in kept)
        self.tally.add_latencies(latencies, failures, time.perf_counter() - started)

    def _lone_window(self, seconds: float) -> tuple[list[float], int]:
        """The per-step latency a lone device sees, measured the way wrk measures the HTTP ceiling (one
        connection, one request at a time)."""
        latencies, failures, stop = [], 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            started = time.perf_counter()
            self.lone.send(self.step)
            if b'"error"' in self.lone.receive():
                failures += 1
            else:
                latencies.append(time.perf_counter() - started)
        return latencies, failures

    async def close(self) -> None:
        for stream in [self.lone] if self.lone is not None else [s for s, _ in self.many]:
            stream.close()


class HttpWay:
    """``streams`` HTTP clients taking a new step by token (``/stream/classify``) or re-sending the whole
    history (``/classify``).

    With wrk installed, each window is a wrk run, each connection replaying one body. The server keeps
    nothing between token requests, so replaying one valid token is exactly the work of a stream's next
    step: this measures the server, where a Python client on the same cores measures itself as much (on
    2 cores httpx held re-sending at 512 steps and 64 streams to 120 requests/s, wrk got 258). Without
    wrk, httpx clients, each carrying its stream's token forward.
    """

    def __init__(self, way: str, url: str, model: BenchModel, history: int, streams: int, folder: Path):
        self.way, self.url, self.model, self.history, self.folder = way, url, model, history, folder
        self.path = "/stream/classify" if way == "token" else "/classify"
        self.tally = Tally(way, history, streams, "wrk" if shutil.which("wrk") else "httpx")
        self.client: httpx.AsyncClient | None = None
        self.bodies: list[dict] = []  # one per client (httpx, token), else one for every connection
        self.script: Path | None = None  # wrk's

    async def open(self) -> None:
        rng, streams = np.random.default_rng(), self.tally.streams
        limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
        self.client = httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits)
        if self.way == "token":  # one stream's token serves every wrk connection; httpx clients each need one
            tokens = await asyncio.gather(*(_token_at(self.client, self.model, self.history, rng) for _ in range(streams if self.tally.client == "httpx" else 1)))
            self.bodies = [{"instances": [{"steps": self.model.steps(rng, 1), "state": t, "model": self.model.tag}]} for t in tokens]
        else:
            self.bodies = [{"instances": [{"sequence": self.model.steps(rng, self.history), "model": self.model.tag}]}]
        if self.tally.client == "wrk":
            self.script = post_script(self.folder / f"{self.way}-{self.history}.lua", json.dumps(self.bodies[0]))
            await asyncio.to_thread(wrk, self.url + self.path, self.script, min(streams, 8), 1)  # warm-up

    async def window(self, seconds: float) -> None:
        if self.tally.client == "wrk":
            result = await asyncio.to_thread(wrk, self.url + self.path, self.script, self.tally.streams, max(1, round(seconds)))
            answered = result["requests"] - result["errors"]  # errors: 503s and other non-2xx, and socket errors
            self.tally.add(answered, result["errors"], result["seconds"], result["p50_ms"])
        else:
            started = time.perf_counter()
            results = await asyncio.gather(*(_timed(partial(self._step, i), seconds) for i in range(self.tally.streams)))
            self.tally.add_latencies([x for lat, _ in results for x in lat], sum(f for _, f in results), time.perf_counter() - started)
        await self._settle()

    async def _settle(self, quick_s: float = 0.02, give_up_s: float = 30) -> None:
        """Wait until a one-step /classify is answered quickly three times in a row: wrk stops with requests
        in flight (256 re-sent 4,096-step histories are seconds of parsing), and that tail would otherwise
        be timed in the next cell's window."""
        rng, quick, give_up = np.random.default_rng(), 0, time.perf_counter() + give_up_s
        while quick < 3 and time.perf_counter() < give_up:
            started = time.perf_counter()
            response = await self.client.post("/classify", json={"instances": [{"sequence": self.model.steps(rng, 1), "model": self.model.tag}]})
            quick = quick + 1 if response.status_code == 200 and time.perf_counter() - started < quick_s else 0
            await asyncio.sleep(0.01)

    async def _step(self, i: int) -> None:
        body = self.bodies[i % len(self.bodies)]
        response = await self.client.post(self.path, json=body)
        response.raise_for_status()
        if self.way == "token":
            body["instances"][0]["state"] = response.json()[0]["state"]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


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


async def _warm_up(url: str, model: BenchModel) -> None:
    """One short stream first, so the first timed cell does not pay for the server's first requests."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(20):
            await _post(client, "/stream/classify", {"instances": [{"steps": model.steps(np.random.default_rng(), 4), "model": model.tag}]})


async def compare(url: str, model: BenchModel, histories: list[int], streams: int, seconds: float, rounds: int,
                  ways: tuple[str, ...] = WAYS) -> list[dict]:
    """The cells of one stream count, every way at every history: all are set up first (streams brought to
    their histories, untimed), then they take turns, ``rounds`` windows of ``seconds / rounds`` each, so a
    slow spell of a shared machine falls on every cell alike and the ratios between them hold."""
    with tempfile.TemporaryDirectory() as folder:
        cells: list[WebSocketWay | HttpWay] = []
        try:
            for history in histories:
                for way in ways:
                    cells.append(WebSocketWay(url, model, history, streams) if way == "websocket"
                                 else HttpWay(way, url, model, history, streams, Path(folder)))
                    await cells[-1].open()
            for _ in range(rounds):
                for cell in cells:
                    await cell.window(seconds / rounds)
        finally:
            for cell in cells:
                await cell.close()
    return [cell.tally.row() for cell in cells]


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
        [row] = _run(compare(url, echo, [1], n, seconds, rounds=1, ways=("websocket",)))
        row.update(way="websocket ceiling (parse only)", history=None)
        print(f"… websocket ceiling streams {n}: {row['steps_per_s']:.0f} messages/s, p50 {row['p50_ms']:.2f} ms", flush=True)
        rows.append(row)
    return rows


def run_streaming(url: str, tag: str, histories: list[int], streams: list[int], seconds: float, rounds: int = 5) -> list[dict]:
    """Every (way, history, streams) cell against a running seqserve at ``url`` serving the classifier ``tag``:
    ``seconds`` each, in ``rounds`` windows taken in turn with every other cell of the same stream count."""
    served = httpx.get(f"{url}/models", timeout=30).json()
    info = next((m for m in served if tag in (m["tag"], m["tag"].split(":")[0])), None)
    if info is None:
        raise ValueError(f"{url} does not serve {tag!r}; it serves {', '.join(m['tag'] for m in served)}")
    model = BenchModel(tag, len(info["features"]))
    rows = []
    asyncio.run(_warm_up(url, model))
    for n in streams:
        for row in _run(compare(url, model, histories, n, seconds, rounds)):
            lost = f", {row['lost_streams']} streams lost" if row.get("lost_streams") else ""
            print(f"… {row['way']} history {row['history']} streams {n}: {row['steps_per_s']:.0f} steps/s, p50 {row['p50_ms']:.2f} ms{lost}", flush=True)
            rows.append(row)
    return sorted(rows, key=lambda r: (WAYS.index(r["way"]), r["history"], r["streams"]))


def streaming_markdown(rows: list[dict], seconds: float, ceiling_p50_ms: float | None = None) -> str:
    """The table, and the issue's three targets checked against it."""
    windows = max((r.get("windows", 1) for r in rows), default=1)
    lines = [f"### Streaming: one new step vs re-sending the history ({seconds:g}s per cell in {windows} windows, "
             "taken in turn with the other cells of its stream count; 1 worker)", "",
             "| way | history | streams | client | steps/s | p50 ms per step | failures |", "|---|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['way']} | {r['history'] if r['history'] is not None else '–'} | {r['streams']} | {r.get('client', '')} "
              f"| {r['steps_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['failures']} |" for r in rows]
    lines += [f"\n{r['way']}, history {r['history']}, {r['streams']} streams: {r['lost_streams']} streams refused or closed by the server, "
              f"measured without them ({'; '.join(f'{n}x {why}' for why, n in r['lost_because'].items())})"
              for r in rows if r.get("lost_streams")]
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
