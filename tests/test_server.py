"""One real ``bentoml serve`` on 127.0.0.1: concurrent requests are batched and answer exactly as the model does."""

import asyncio
import json
import shutil
import socket
import time

import httpx
import numpy as np
import pytest

from models.artifact import load_artifact
from service.framework.connections import LINGER_BYTES
from tests import tiny_models
from tests.service_client import served_answers
from loadtests.runner import batch_sizes
from loadtests.server import running_server


@pytest.fixture(scope="module")
def server():
    clf, fc = tiny_models.store_classifier("real-clf"), tiny_models.store_forecaster("real-fc")
    streaming = tiny_models.store_streaming_classifier("real-stream", "gru", 2)
    env = {"SEQSERVE_MODELS": f"{clf},{fc},{streaming}", "SEQSERVE_HEADER_TIMEOUT_S": "1", "SEQSERVE_BODY_TIMEOUT_S": "1"}
    with running_server(env) as url:
        yield url, clf


async def fire(url: str, bodies: list[dict], tries: int = 10) -> list[httpx.Response]:
    """Every body at once, each retried after a 503's Retry-After (at most 1 s) as a polite client does: on a
    busy shared machine 200 requests at once can pass the admission limit (100 ms of queued work)."""
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        async def send(body: dict) -> httpx.Response:
            for _ in range(tries):
                response = await client.post("/classify", json=body)
                if response.status_code != 503:
                    break
                await asyncio.sleep(min(float(response.headers["retry-after"]), 1.0))
            return response

        return await asyncio.gather(*(send(body) for body in bodies))


def batch_totals(url: str, tag: str) -> tuple[float, float]:
    """(instances, forward passes) that went through ``tag``'s batcher, from seqserve_batch_size on /metrics."""
    histogram = batch_sizes(httpx.get(f"{url}/metrics").text).get(tag, {"sum": 0.0, "count": 0.0})
    return histogram["sum"], histogram["count"]


def test_concurrent_requests_are_batched_and_answers_equal_direct_model_calls(server):
    url, tag = server
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(int(n), 3)).astype(np.float32) for n in rng.integers(1, 50, size=200)]
    bad = {"instances": [{"sequence": [[1.0, 2.0]]}]}  # wrong feature count, sent among the good ones
    bodies = []
    for i, s in enumerate(seqs):
        bodies.append({"instances": [{"sequence": s.tolist()}]})
        if i % 10 == 0:
            bodies.append(bad)
    responses = asyncio.run(fire(url, bodies))

    model = load_artifact(tag)
    good = iter(seqs)
    for body, response in zip(bodies, responses):
        if body is bad:
            assert response.status_code == 400 and "instances[0].sequence" in response.json()["error"]
            continue
        assert response.status_code == 200, response.text
        expected = served_answers(model, [next(good)])[0]  # alone: a batch of one
        answer = response.json()[0]
        assert answer["label"] == expected["label"]
        for label, p in expected["probabilities"].items():
            assert abs(answer["probabilities"][label] - p) < 1e-5

    instances, passes = batch_totals(url, tag)
    assert instances == 200  # every good instance went through the batcher, no bad one did
    assert passes < instances, f"no forward pass merged two requests ({passes} passes for {instances} instances)"


def test_models_and_metrics_endpoints(server):
    url, tag = server
    assert tag in {m["tag"] for m in httpx.get(f"{url}/models").json()}
    assert "bentoml_service_request_total" in httpx.get(f"{url}/metrics").text


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_a_connection_that_never_finishes_its_headers_is_closed(server):
    url, _ = server
    with raw_connection(url) as conn:
        conn.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and then nothing
        assert conn.recv(1024) == b""  # closed by the server (the socket timeout would raise instead)


def test_a_body_shorter_than_its_content_length_gets_408(server):
    url, _ = server
    with raw_connection(url) as conn:
        conn.sendall(
            b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"instances\": "
        )
        answer = b""
        while chunk := conn.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body: not received within 1 s" in answer


def test_a_body_over_the_cap_gets_its_413_while_the_client_is_still_sending_it(server):
    """httpx's async client writes a whole body before it reads the answer, and the 413 comes as soon as the
    headers are in: a connection closed with the body still arriving is reset, and a reset can drop the answer.
    The server reads on and drops the rest of the body before it closes, as nginx does."""
    url, _ = server
    body = b'{"instances": [' + b"0" * (3 << 20) + b"]}"  # 3 MiB, over the 1 MiB cap

    async def send() -> list:
        answers = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                answer = await client.post("/classify", content=body, headers={"content-type": "application/json"})
                answers.append((answer.status_code, answer.json()["error"][:40]))
        return answers

    assert asyncio.run(send()) == [(413, "body: 3.0 MiB is over the limit of 1 MiB")] * 6


def test_a_client_that_keeps_sending_after_its_413_is_cut_off(server):
    """Dropping the rest of an answered body is bounded in bytes too, so a client streaming a huge body cannot hold
    the worker's event loop reading for the whole linger time."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    sent, chunk = 0, b"0" * (1 << 20)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /classify HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                     f"content-length: {8 << 30}\r\n\r\n".encode())
        try:
            while sent < 1 << 30:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: the rest was never read
            pass
    assert sent < LINGER_BYTES + (64 << 20)  # the cap, and what the two sockets' buffers held


def served_after_retries(url: str, tries: int = 10) -> httpx.Response:
    """A small /classify as a polite client sends it: retried after each 503's Retry-After (at most 1 s), ``tries`` times."""
    for _ in range(tries):
        small = httpx.post(f"{url}/classify", json={"instances": [{"sequence": [[1.0, 2.0, 3.0]]}]}, timeout=30)
        if small.status_code != 503:
            break
        time.sleep(min(float(small.headers["retry-after"]), 1.0))
    return small


def test_work_of_clients_that_hung_up_is_not_computed(server):
    url, tag = server
    instances_before, _ = batch_totals(url, tag)
    body = json.dumps({"instances": [{"sequence": [[0.5, -0.5, 1.0]] * 4000}] * 8}).encode()
    request = (
        b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    connections = [raw_connection(url) for _ in range(20)]
    for conn in connections:
        conn.sendall(request)
    for conn in connections:
        conn.close()  # hang up at once, all 20
    # Until the server has read the 14 MB sent and seen the hang-ups, the work looks real and a newcomer
    # may be told to come back (503 + Retry-After); once it has, the newcomer is served.
    small = served_after_retries(url)
    assert small.status_code == 200, small.text
    instances_after, _ = batch_totals(url, tag)
    computed = instances_after - instances_before - 1
    assert computed < 20 * 8, f"all {computed} abandoned instances were computed"


def test_metrics_stay_open_and_unknown_paths_get_404_json(server):
    url, _ = server
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.get(f"{url}/no/such/path").status_code == 404


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk (a C load generator) is not installed")
def test_hostile_overload_counts_wrks_answers_and_times_a_probe_beside_it(server):
    from loadtests.hostile import overload

    url, tag = server
    body = json.dumps({"instances": [{"sequence": [[0.0] * 3] * 10, "model": tag}]})
    row = overload(url, body, connections=4, seconds=2)
    assert row["flood_per_s"] > 0 and row["other_failures"] == 0
    assert row["probes"] > 0 and row["probe_ok"] == row["probes"]
    assert row["max_ms"] >= row["p99_ms"] >= row["p50_ms"] > 0


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk (a C load generator) is not installed")
def test_hostile_v2_cases_against_the_real_server(server):
    """`loadtests hostile`'s binary cases, briefly: the largest allowed request is answered, under a flood too;
    over the cap is 413 from the headers alone; a header length past the body and garbage get their 400s."""
    from loadtests.hostile import v2_cases

    url, tag = server
    clf = next(m for m in httpx.get(f"{url}/models").json() if m["tag"] == tag)

    async def cases():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await v2_cases(client, clf, None, 1, 4 << 20)

    largest, over, past, garbage, random_values, flood = asyncio.run(cases())
    assert largest["status"] == 200 and largest["case"].startswith("v2 binary, largest allowed: 256 x 1364 steps x 3, 4.00 MiB")
    assert flood["status"].endswith(" 0 other") and flood["answer"].endswith("; 0 not 200")
    assert over["status"] == "HTTP/1.1 413 Request Entity Too Large" and over["seconds"] < 5
    assert past["status"] == 400 and "Inference-Header-Content-Length: " in past["answer"] and "past the end" in past["answer"]
    assert garbage["status"] == 400 and "body: is not valid JSON" in garbage["answer"]
    assert random_values["status"] == 400 and "is not a finite 32-bit number" in random_values["answer"]
    # The flood's 4 MiB bodies may still be read and dropped for a moment (503 + Retry-After meanwhile); then
    # the server takes new work again on its own.
    assert served_after_retries(url).status_code == 200


def test_streams_through_the_real_server_by_token_and_websocket(server):
    """Both ways in through `bentoml serve`: the answers equal /classify, and /metrics counts streams and steps."""
    from websocket import create_connection

    url, _ = server
    tag = next(m["tag"] for m in httpx.get(f"{url}/models").json() if m["tag"].startswith("real-stream"))
    sequence = np.random.default_rng(3).normal(size=(30, 3)).round(4).tolist()

    def whole(n):
        return httpx.post(f"{url}/classify", json={"instances": [{"sequence": sequence[:n], "model": tag}]}).json()[0]

    state = None
    for start, stop in ((0, 1), (1, 9), (9, 30)):
        response = httpx.post(f"{url}/stream/classify", json={"instances": [
            {"steps": sequence[start:stop], "state": state, "model": tag}]})
        assert response.status_code == 200, response.text
        answer = response.json()[0]
        state = answer["state"]
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(whole(stop)["probabilities"].values()), atol=1e-5)
    ws = create_connection(f"{url.replace('http', 'ws')}/stream?model={tag}", timeout=30)
    try:
        assert json.loads(ws.recv())["model"] == tag
        ws.send(json.dumps({"steps": sequence[:12]}))
        answer = json.loads(ws.recv())
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(whole(12)["probabilities"].values()), atol=1e-5)
        metrics = httpx.get(f"{url}/metrics").text
        assert "seqserve_open_streams 1.0" in metrics
    finally:
        ws.close()
    assert f'seqserve_stream_steps_total{{model="{tag}"}} 42.0' in metrics
    assert f'seqserve_state_batch_size_count{{model="{tag}"}}' in metrics


def test_streaming_bench_cells_run_against_the_real_server(server):
    """`loadtests bench`'s streaming table, in miniature: every way in answers steps, with no failures."""
    from loadtests.stream_bench import run_streaming, streaming_markdown

    url, _ = server
    tag = next(m["tag"] for m in httpx.get(f"{url}/models").json() if m["tag"].startswith("real-stream"))
    rows = run_streaming(url, tag, histories=[8, 20], streams=[1, 3], seconds=0.3, rounds=2)
    assert [(r["way"], r["history"], r["streams"]) for r in rows] == [
        (w, h, n) for w in ("websocket", "token", "re-send") for h in (8, 20) for n in (1, 3)
    ]
    for row in rows:
        assert row["steps"] > 0 and row["failures"] == 0 and row["p50_ms"] > 0 and row["windows"] == 2, row
    assert {r["client"] for r in rows if r["way"] == "websocket"} == {"lean, blocking", "lean, asyncio"}
    assert "| websocket | 8 | 3 | lean, asyncio |" in streaming_markdown(rows, 0.3)
