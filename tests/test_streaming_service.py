"""Streaming through the service in-process: state tokens on /stream/<task>, and the /stream WebSocket."""

import asyncio
import base64
import json

import numpy as np
import pytest
from starlette.websockets import WebSocketDisconnect

import torch

from models.artifact import load_artifact
from models.padding import pad_sequences
from service.batching import MicroBatcher
from service.errors import RetryLater
from service.config import Settings
from service.lanes import load_lanes
from service.state_token import NOT_CANONICAL, StateSigner, StateTokenError
from tests import tiny_models
from tests.service_client import in_process

CELLS = ("rnn", "gru", "lstm")


@pytest.fixture(scope="module")
def tags():
    tags = {f"{cell}-{stride}": tiny_models.store_streaming_classifier(f"st-{cell}-s{stride}", cell, stride)
            for cell in CELLS for stride in (1, 3)}
    tags["bidi"] = tiny_models.store_classifier("st-bidi")
    tags["fc"] = tiny_models.store_forecaster("st-fc")
    return tags


@pytest.fixture(scope="module")
def client(tags):
    env = {"SEQSERVE_MODELS": ",".join(tags.values()), "SEQSERVE_STREAM_MAX_OPEN": "3", "SEQSERVE_STREAM_MAX_STEPS": "64",
           "SEQSERVE_MAX_LENGTH": "400"}
    with in_process(env) as client:
        yield client


def steps(n: int, seed: int = 0, features: int = 3) -> list[list[float]]:
    return (np.random.default_rng(seed).normal(size=(n, features)) * 2 + 1).round(4).tolist()


def stream(client, task: str, **instance) -> dict:
    response = client.post(f"/stream/{task}", json={"instances": [instance]})
    assert response.status_code == 200, response.text
    return response.json()[0]


def classify(client, tag: str, sequence: list) -> dict:
    response = client.post("/classify", json={"instances": [{"sequence": sequence, "model": tag}]})
    assert response.status_code == 200, response.text
    return response.json()[0]


def assert_same_answer(streamed: dict, whole: dict) -> None:
    assert streamed["model"] == whole["model"] and streamed["label"] == whole["label"]
    np.testing.assert_allclose(list(streamed["probabilities"].values()), list(whole["probabilities"].values()), atol=1e-5, rtol=0)


def error_of(response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --------------------------------------------------------------------------------------------- GET /models


def test_models_say_which_can_stream_and_why_not(client, tags):
    models = {m["tag"]: m for m in client.get("/models").json()}
    assert all(models[tags[f"{cell}-1"]]["streamable"] for cell in CELLS) and models[tags["fc"]]["streamable"]
    assert models[tags["bidi"]]["streamable"] is False
    assert models[tags["bidi"]]["not_streamable_because"].startswith("it is bidirectional")


# ------------------------------------------------------------------------------------------- state tokens


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("stride", [1, 3])
def test_token_stream_equals_classify_on_the_sequence_so_far(client, tags, cell, stride):
    tag, sequence = tags[f"{cell}-{stride}"], steps(120, seed=stride)
    state, seen = None, 0
    for k in (1, 1, 4, 1, 50, 63):  # one step, several, many
        answer = stream(client, "classify", steps=sequence[seen : seen + k], state=state, model=tag)
        seen += k
        assert answer["seen"] == seen
        assert_same_answer(answer, classify(client, tag, sequence[:seen]))
        state = answer["state"]


def test_every_step_answers_after_each_new_step(client, tags):
    tag, sequence = tags["gru-3"], steps(9, seed=4)
    first = stream(client, "classify", steps=sequence[:5], model=tag)
    answer = stream(client, "classify", steps=sequence[5:], state=first["state"], model=tag, every_step=True)
    assert [a["seen"] for a in answer["per_step"]] == [6, 7, 8, 9]
    for a in answer["per_step"]:
        assert_same_answer(a, classify(client, tag, sequence[: a["seen"]]))


def test_many_streams_in_one_request_keep_their_own_states(client, tags):
    a_tag, b_tag = tags["lstm-1"], tags["rnn-3"]
    a, b = steps(20, seed=5), steps(20, seed=6)
    first = client.post("/stream/classify", json={"instances": [
        {"steps": a[:7], "model": a_tag}, {"steps": b[:2], "model": b_tag}, {"steps": a[:3], "model": a_tag}]}).json()
    second = client.post("/stream/classify", json={"instances": [
        {"steps": a[7:], "model": a_tag, "state": first[0]["state"]},
        {"steps": b[2:], "model": b_tag, "state": first[1]["state"]},
        {"steps": a[3:9], "model": a_tag, "state": first[2]["state"]}]}).json()
    assert_same_answer(second[0], classify(client, a_tag, a))
    assert_same_answer(second[1], classify(client, b_tag, b))
    assert_same_answer(second[2], classify(client, a_tag, a[:9]))


def test_token_stream_equals_forecast_on_the_history_so_far(client, tags):
    tag = tags["fc"]
    history = (300 + 10 * np.sin(np.arange(40) / 3)).round(3).tolist()
    answer = stream(client, "forecast", steps=history[:5], model=tag, every_step=True)
    # /forecast refuses a history shorter than the lookback (12): the stream says how many steps it still needs.
    assert [(a["seen"], a["forecast"], a["steps_needed"]) for a in answer["per_step"]] == [(n, None, 12 - n) for n in range(1, 6)]
    state, seen = answer["state"], 5
    for k in (6, 1, 1, 20, 2):
        answer = stream(client, "forecast", steps=history[seen : seen + k], state=state, model=tag)
        seen, state = seen + k, answer["state"]
        if seen < 12:
            assert (answer["forecast"], answer["steps_needed"]) == (None, 12 - seen)
            assert client.post("/forecast", json={"instances": [{"history": history[:seen], "model": tag}]}).status_code == 400
            continue
        whole = client.post("/forecast", json={"instances": [{"history": history[:seen], "model": tag}]}).json()[0]
        np.testing.assert_allclose(answer["forecast"], whole["forecast"], atol=1e-5, rtol=0)
        for q in whole["quantiles"]:
            np.testing.assert_allclose(answer["quantiles"][q], whole["quantiles"][q], atol=1e-5, rtol=0)


def tampered(token: str, at: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[at] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_altered_truncated_foreign_and_garbage_tokens_are_refused_by_name(client, tags):
    tag, other = tags["gru-1"], tags["gru-3"]
    token = stream(client, "classify", steps=steps(3), model=tag)["state"]

    def refused(state, model=tag):
        return error_of(client.post("/stream/classify", json={"instances": [{"steps": steps(1), "state": state, "model": model}]}))

    assert refused(tampered(token, 40)) == ("instances[0].state: signature does not match: the token was altered, "
                                            "or signed with another SEQSERVE_STATE_KEY")
    assert refused(token[:-10]).startswith("instances[0].state: is truncated: ")
    assert refused(token, model=other) == (f"instances[0].state: was made by {tag}, not {other}; "
                                           "send it with the model that made it, or start a new stream without a state")
    assert refused("not a token!") == "instances[0].state: is not a state token: not base64url text"
    assert refused(tampered(token, 0)) == "instances[0].state: token version 0 is not one this server reads (1)"


def test_a_token_sent_without_a_model_goes_on_with_the_model_that_made_it(client, tags):
    served = client.get("/models").json()
    default = next(m["tag"] for m in served if m["task"] == "classify" and m["default"])
    other = next(tag for tag in (tags["gru-1"], tags["gru-3"]) if tag != default)
    sequence = steps(5, seed=7)
    token = stream(client, "classify", steps=sequence[:3], model=other)["state"]
    answer = stream(client, "classify", steps=sequence[3:], state=token)  # no model: the token names it
    assert answer["model"] == other and answer["seen"] == 5
    assert_same_answer(answer, classify(client, other, sequence))


def test_a_token_signed_under_another_deployment_key_is_refused(tags):
    model = load_artifact(tags["gru-1"])
    mine, theirs = StateSigner("k" * 32, [model]), StateSigner("x" * 32, [model])
    token = theirs.seal(model, b"\0" * 8)
    with pytest.raises(StateTokenError, match="signature does not match"):
        mine.open(token, model, 8)
    assert mine.open(mine.seal(model, b"\1" * 8), model, 8) == b"\1" * 8


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
UNUSED_BITS = {0: 0, 2: 4, 3: 2}  # unused low bits of the last character, by the token's length mod 4
NOT_TEXT = "is not a state token: not base64url text"


def other_spellings(token: str) -> dict[str, str]:
    """Every way to write ``token`` that a lenient base64 decoder reads as the same bytes, or nearly."""
    last = BASE64URL.index(token[-1])
    spellings = {f"unused bit {bit} of the last character set": token[:-1] + BASE64URL[last ^ (1 << bit)]
                 for bit in range(UNUSED_BITS[len(token) % 4])}
    spellings["a character appended"] = token + "A"
    spellings["padded"] = token + "=" * (-len(token) % 4 or 1)
    spellings["'+' for a character"] = token[:5] + "+" + token[6:]
    spellings["'/' for a character"] = token[:5] + "/" + token[6:]
    spellings["a non-ASCII letter for a character"] = token[:5] + "\u00e9" + token[6:]
    spellings["a newline inside"] = token[:10] + "\n" + token[10:]
    spellings["a space inside"] = token[:10] + " " + token[10:]
    spellings["a newline at the end"] = token + "\n"
    return spellings


def refusals_of_other_spellings(token: str, tag: str) -> dict[str, str]:
    """The refusal each of :func:`other_spellings` of ``token`` (a token of model ``tag``) must get."""
    size = len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    expected = {name: NOT_TEXT for name in other_spellings(token)}
    expected.update({f"unused bit {bit} of the last character set": NOT_CANONICAL for bit in range(UNUSED_BITS[len(token) % 4])})
    # A fifth character after a full quartet is dropped by the decoder (the same bytes); after a partial one it adds a byte.
    expected["a character appended"] = (NOT_CANONICAL if len(token) % 4 == 0
                                        else f"is too long: {size + 1} bytes, a state token of {tag} has {size}")
    return expected


@pytest.mark.parametrize("state_bytes", [8, 9, 10])  # 33, 34, 35 bytes: tokens of length 0, 2 and 3 mod 4
def test_a_token_has_exactly_one_spelling(tags, state_bytes):
    model = load_artifact(tags["gru-1"])
    signer = StateSigner("k" * 32, [model])
    state = bytes(range(1, state_bytes + 1))
    token = signer.seal(model, state)
    assert len(token) % 4 == (0, 2, 3)[state_bytes - 8] and "=" not in token
    assert signer.open(token, model, state_bytes) == state
    refusals = {}
    for name, spelling in other_spellings(token).items():
        with pytest.raises(StateTokenError) as refused:
            signer.open(spelling, model, state_bytes)
        refusals[name] = str(refused.value)
    assert refusals == refusals_of_other_spellings(token, model.tag)


def test_another_spelling_of_a_token_gets_a_400_naming_the_field(client, tags):
    tag = tags["gru-1"]
    token = stream(client, "classify", steps=steps(3), model=tag)["state"]
    refusals = {}
    for name, spelling in other_spellings(token).items():
        response = client.post("/stream/classify", json={"instances": [{"steps": steps(1), "state": spelling, "model": tag}]})
        refusals[name] = error_of(response)
    assert refusals == {name: f"instances[0].state: {why}" for name, why in refusals_of_other_spellings(token, tag).items()}
    assert stream(client, "classify", steps=steps(1), state=token, model=tag)["seen"] == 4


def test_bidirectional_models_and_bad_steps_get_400s_that_say_why(client, tags):
    assert error_of(client.post("/stream/classify", json={"instances": [{"steps": steps(2), "model": tags["bidi"]}]})) == (
        f"instances[0].model: {tags['bidi']} cannot stream: it is bidirectional: its backward pass reads the whole "
        "sequence again with every new step; train it with --no-bidirectional to stream")
    assert error_of(client.post("/stream/classify", json={"instances": [{"steps": steps(65), "model": tags["gru-1"]}]})) == (
        "instances[0].steps: has 65 steps; the limit is 64")
    assert error_of(client.post("/stream/classify", json={"instances": [{"steps": [[1.0, 2.0]], "model": tags["gru-1"]}]})) == (
        f"instances[0].steps: step 0 has 2 features but {tags['gru-1']} expects 3")


# ---------------------------------------------------------------------------------------------- WebSocket


def test_websocket_stream_equals_classify_and_survives_bad_messages(client, tags):
    tag, sequence = tags["lstm-3"], steps(40, seed=8)
    with client.websocket_connect(f"/stream?model={tag}") as ws:
        hello = ws.receive_json()
        assert (hello["model"], hello["task"], hello["max_steps"]) == (tag, "classify", 64)
        ws.send_json({"steps": sequence[:10]})
        assert_same_answer(ws.receive_json(), classify(client, tag, sequence[:10]))
        ws.send_json({"steps": [[1.0, 2.0]]})  # bad input: an error on this stream, the state is unchanged
        assert ws.receive_json() == {"error": f"steps: step 0 has 2 features but {tag} expects 3"}
        ws.send_text("{not json")
        assert ws.receive_json()["error"].startswith("message: ")
        ws.send_json({"steps": steps(65)})
        assert ws.receive_json() == {"error": "steps: has 65 steps; the limit is 64"}
        ws.send_json({"steps": sequence[10:13], "every_step": True})  # one message per step
        for n in (11, 12, 13):
            answer = ws.receive_json()
            assert answer["seen"] == n
            assert_same_answer(answer, classify(client, tag, sequence[:n]))
        ws.send_text(" " * (1 << 20) + "{}")  # over SEQSERVE_MAX_BODY_MB: closed, as uvicorn closes it in a real server
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009


def test_an_overloaded_model_says_when_to_retry_in_milliseconds_too(client, tags, monkeypatch):
    """A wait of 3 ms is 1 s in Retry-After (whole seconds only) and 3 in retry_after_ms, on HTTP and on a WebSocket."""
    busy = "the model is busy: about 3 ms of work is queued (limit 2 ms)"

    async def refuse(batcher):
        raise RetryLater(busy, retry_after_ms=3)

    monkeypatch.setattr(MicroBatcher, "admit", refuse)
    tag = tags["gru-1"]
    response = client.post("/stream/classify", json={"instances": [{"steps": steps(2), "model": tag}]})
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"error": busy, "retry_after_s": 1, "retry_after_ms": 3}
    with client.websocket_connect(f"/stream?model={tag}") as ws:
        ws.receive_json()
        ws.send_json({"steps": steps(2)})
        assert ws.receive_json() == {"error": busy, "retry_after_s": 1, "retry_after_ms": 3}
    monkeypatch.undo()
    assert stream(client, "classify", steps=steps(2), model=tag)["seen"] == 2


def test_a_non_finite_value_in_a_step_is_reported_once_at_the_value(client, tags):
    tag, fc = tags["gru-1"], tags["fc"]
    with client.websocket_connect(f"/stream?model={tag}") as ws:
        ws.receive_json()
        ws.send_text('{"steps": [[1.0, 2.0, 3.0], [NaN, 1.0, 2.0]]}')
        assert ws.receive_json() == {"error": "steps[1][0]: Input should be a finite number"}
        ws.send_text('{"steps": [[1.0, 2.0, 3.0], [1.0, 2.0, Infinity]]}')
        assert ws.receive_json() == {"error": "steps[1][2]: Input should be a finite number"}
        ws.send_json({"steps": steps(1)})
        assert ws.receive_json()["seen"] == 1  # the bad messages left the stream's state alone
    body = '{"instances": [{"steps": [[1.0], [NaN]], "model": "%s"}]}' % fc
    response = client.post("/stream/forecast", content=body, headers={"content-type": "application/json"})
    assert error_of(response) == "instances[0].steps[1][0]: Input should be a finite number"


def test_every_step_takes_true_or_false_only(client, tags):
    tag = tags["gru-1"]
    for loose in ("yes", 1, "true"):  # pydantic's lax mode read these as true
        response = client.post("/stream/classify", json={"instances": [{"steps": steps(2), "model": tag, "every_step": loose}]})
        assert error_of(response) == "instances[0].every_step: Input should be a valid boolean"
    with client.websocket_connect(f"/stream?model={tag}") as ws:
        ws.receive_json()
        ws.send_json({"steps": steps(1), "every_step": "yes"})
        assert ws.receive_json() == {"error": "every_step: Input should be a valid boolean"}


def test_websocket_forecast_by_task_default_and_unknown_models_close_with_4400(client, tags):
    with client.websocket_connect(f"/stream?model={tags['fc']}") as ws:
        assert ws.receive_json()["task"] == "forecast"
        ws.send_json({"steps": [300.0] * 3})
        assert ws.receive_json()["steps_needed"] == 9
    wrong_task = f"task: {tags['fc']} is a forecast model; use ?task=forecast, or leave task out"
    for query, reason in [("model=nope", "model: unknown model 'nope'"), (f"model={tags['bidi']}", "model: "),
                          (f"model={tags['fc']}&task=classify", wrong_task)]:
        with client.websocket_connect(f"/stream?{query}") as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == 4400 and closed.value.reason.startswith(reason)


def test_websocket_open_streams_are_capped_per_worker(client, tags):
    url = f"/stream?model={tags['gru-1']}"
    with client.websocket_connect(url) as a, client.websocket_connect(url) as b, client.websocket_connect(url) as c:
        for ws in (a, b, c):
            ws.receive_json()
        with client.websocket_connect(url) as refused:
            with pytest.raises(WebSocketDisconnect) as closed:
                refused.receive_json()
        assert closed.value.code == 1013 and "SEQSERVE_STREAM_MAX_OPEN" in closed.value.reason
        a.send_json({"steps": steps(2)})  # the open ones are untouched
        assert a.receive_json()["seen"] == 2
    with client.websocket_connect(url) as again:  # closing frees the places
        assert again.receive_json()["model"] == tags["gru-1"]


# --------------------------------------------------------------------------------------------- batching


def test_concurrent_streams_share_forward_passes(tags, monkeypatch):
    monkeypatch.setenv("SEQSERVE_MODELS", tags["gru-3"])
    lane = load_lanes(Settings.from_env(), [tags["gru-3"]]).get(tags["gru-3"])
    lane.stream_batcher.sizes = sizes = BatchSizesHeard()
    model, stream = lane.model, lane.stream
    sequences = [np.asarray(steps(6, seed=s), dtype=np.float32) for s in range(16)]

    async def run_streams():
        return await asyncio.gather(*(lane.step_message(stream.initial(), seq.tolist(), False, alone=False) for seq in sequences))

    results = asyncio.run(run_streams())
    assert max(sizes) > 1  # streams were advanced together
    for seq, (_, replies) in zip(sequences, results):
        with torch.inference_mode():
            whole = torch.softmax(model.module(*pad_sequences([seq]))[0], dim=-1).numpy()
        np.testing.assert_allclose(list(json.loads(replies[-1])["probabilities"].values()), whole, atol=1e-5, rtol=0)


class BatchSizesHeard(list):
    """A batcher's batch sizes, as it reports them (service.metrics.BatchSizes in a server)."""

    def observe(self, size: int, steps: int) -> None:
        self.append(size)
