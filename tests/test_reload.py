"""Live model updates (service.reload): the decisions alone, then a worker's lanes and store with real tiny models,
then one real ``bentoml serve`` of two workers that picks new versions up by itself."""

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.artifact import CARD_FILE, WEIGHTS_FILE
from service.config import Settings
from service.inputs import InstanceError
from service.lanes import VersionGone, load_lanes
from service.reload import RETRY_MAX_S, StoreWatcher, VersionPolicy, watched
from service.schemas import ClassifyInstance, StreamClassifyInstance
from tests import tiny_models
from loadtests.chaos import serving_workers
from loadtests.server import running_server

# ------------------------------------------------------------------------------------------ the decisions


def test_the_newest_version_is_loaded_unless_it_serves_already_or_waits_after_a_failure():
    now = [0.0]
    policy = VersionPolicy(interval_s=10, keep=2, clock=lambda: now[0])
    serving = {"a": "a:1", "b": "b:1"}
    assert policy.to_load({"a": "a:2", "b": "b:1", "c": "c:1"}, serving) == ["a:2"]  # c is not served: not watched
    assert policy.to_load({"a": "a:1"}, {"a": "a:2"}) == ["a:1"]  # the newer one was deleted from the store: back
    waits = [policy.failed("a:2") for _ in range(3)]
    assert waits == [10, 20, 40]
    now[0] = 39.9  # the third failure, at 0, waits 40 s
    assert policy.to_load({"a": "a:2"}, serving) == []
    now[0] = 40.0
    assert policy.to_load({"a": "a:2"}, serving) == ["a:2"]
    assert max(policy.failed("a:2") for _ in range(20)) == RETRY_MAX_S
    policy.served("a:2")
    assert policy.failed("a:2") == 10


def test_old_versions_beyond_the_kept_ones_are_unloaded_but_never_the_default_or_a_pinned_one():
    policy = VersionPolicy(interval_s=10, keep=2)
    assert policy.to_unload(["a:1", "a:2", "a:3"], default="a:3", pinned=set()) == ["a:1"]
    assert policy.to_unload(["a:1", "a:2", "a:3"], default="a:1", pinned=set()) == ["a:2"]
    assert policy.to_unload(["a:1", "a:2", "a:3"], default="a:3", pinned={"a:1"}) == ["a:2"]
    assert policy.to_unload(["a:1", "a:2"], default="a:2", pinned=set()) == []


def test_names_given_alone_are_watched_and_tags_are_pinned():
    lanes = load_lanes(Settings.from_env(), [tiny_models.store_forecaster("watch-fc")])
    assert watched((), lanes) == (["watch-fc"], set())
    assert watched(("watch-fc", "x:1"), lanes) == (["watch-fc"], {"x:1"})


# ----------------------------------------------------------------------- a worker's lanes and the store


def instance(model: str | None, steps: int = 6, seed: int = 0) -> ClassifyInstance:
    return ClassifyInstance(sequence=np.random.default_rng(seed).normal(size=(steps, 3)).tolist(), model=model)


def answered_by(lanes, model: str | None) -> str:
    return json.loads(asyncio.run(lanes.classify([instance(model)])))[0]["model"]


def corrupt_weights(tag: str) -> None:
    weights = Path(bentoml.models.get(tag).path) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])


def test_a_look_that_keeps_failing_logs_its_traceback_once(caplog):
    # A half-copied version (its folder there, its model.yaml not yet) makes the store's listing fail at every look.
    name = "live-half"
    first = tiny_models.store_streaming_classifier(name, seed=0)
    settings = Settings.from_env()
    lanes = load_lanes(settings, [first])
    watcher = StoreWatcher(lanes, settings, *watched((), lanes))
    half = Path(bentoml.models.get(first).path).parent / "halfcopied0000000"
    half.mkdir()
    (half / WEIGHTS_FILE).write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="service.reload"):
        for _ in range(3):
            asyncio.run(watcher.look())
        for path in half.iterdir():
            path.unlink()
        half.rmdir()
        asyncio.run(watcher.look())
    records = [r for r in caplog.records if r.name == "service.reload"]
    assert [r.exc_info is not None for r in records] == [True, False, False, False]
    assert records[0].getMessage().startswith("looking for new model versions failed")
    assert all(r.getMessage().startswith("looking for new model versions still fails (") for r in records[1:3])
    assert records[3].getMessage() == "looking for new model versions works again"
    assert answered_by(lanes, name) == first  # the served version never stopped


def test_a_new_version_becomes_the_default_beside_the_old_and_a_corrupt_one_never_does(caplog):
    name = "live-clf"
    first = tiny_models.store_streaming_classifier(name, seed=0)
    other = tiny_models.store_forecaster("live-other")
    settings = dataclasses.replace(Settings.from_env(), model_versions=2)
    lanes = load_lanes(settings, [first, other])
    watcher = StoreWatcher(lanes, settings, *watched((), lanes))
    assert asyncio.run(watcher.check()) == []  # nothing new

    # A stream that started on the first version.
    token = json.loads(asyncio.run(lanes.step_streams("classify", [StreamClassifyInstance(steps=[[0.1, 0.2, 0.3]], model=name)])))[0]["state"]

    second = tiny_models.store_streaming_classifier(name, seed=1)
    assert asyncio.run(watcher.check()) == [second]
    assert answered_by(lanes, name) == second and answered_by(lanes, None) == second  # the name's and the task's default
    assert answered_by(lanes, first) == first  # the old version answers by its tag
    shown = {info.tag: (info.default, info.name_default) for info in lanes.describe()}
    assert shown == {first: (False, False), second: (True, True), other: (True, True)}
    # The stream goes on on its own version, named by the name alone or by no model at all.
    for model in (name, None):
        stepped = json.loads(asyncio.run(lanes.step_streams("classify", [StreamClassifyInstance(steps=[[0.4, 0.5, 0.6]], state=token, model=model)])))[0]
        assert stepped["model"] == first and stepped["seen"] == 2

    # A corrupt newer version: logged with its reason, and the good one keeps serving; not retried at once.
    broken = tiny_models.store_streaming_classifier(name, seed=2)
    corrupt_weights(broken)
    with caplog.at_level(logging.ERROR, logger="service.reload"):
        assert asyncio.run(watcher.check()) == []
        assert asyncio.run(watcher.check()) == []
    failures = [r.getMessage() for r in caplog.records if broken in r.getMessage()]
    assert failures == [f"new model version {broken} is not served: weights are corrupt (sha256 does not match the one "
                        f"stored at save time); {second} keeps serving (next try in 10 s)"]
    assert answered_by(lanes, name) == second

    # A card this server cannot read fails the same way.
    unreadable = tiny_models.store_streaming_classifier(name, seed=3)
    card = Path(bentoml.models.get(unreadable).path) / CARD_FILE
    card.write_text(json.dumps({**json.loads(card.read_text()), "schema_version": 99}))
    assert asyncio.run(watcher.check()) == [] and answered_by(lanes, name) == second

    # A good newer one is served, and the first version (beyond the 2 kept) is unloaded: its tag and its
    # streams get 410 (VersionGone) saying what serves the name now.
    third = tiny_models.store_streaming_classifier(name, seed=4)
    assert asyncio.run(watcher.check()) == [third]
    assert [lane.tag for lane in lanes.versions(name)] == [second, third]
    with pytest.raises(VersionGone, match=f"instances\\[0\\].model: {first} is no longer served here; {third} serves {name} now"):
        answered_by(lanes, first)
    with pytest.raises(VersionGone, match=f"instances\\[0\\].state: was made by {first}, which is no longer served here "
                                          f"\\({third} serves {name} now\\); start a new stream without a state"):
        asyncio.run(lanes.step_streams("classify", [StreamClassifyInstance(steps=[[0.4, 0.5, 0.6]], state=token, model=name)]))

    # One more: the 410 names the version serving the name now, not the one serving when the first was unloaded.
    fourth = tiny_models.store_streaming_classifier(name, seed=5)
    assert asyncio.run(watcher.check()) == [fourth]
    with pytest.raises(VersionGone, match=f"instances\\[0\\].model: {first} is no longer served here; {fourth} serves {name} now"):
        answered_by(lanes, first)


def test_a_worker_started_after_a_reload_answers_the_versions_others_unloaded_as_they_do():
    # A replaced worker loads only the newest version: the older ones, which the other workers unloaded (410),
    # would be unknown models to it (400; 404 on /v2) and their tokens another model's.
    name = "late-clf"
    first = tiny_models.store_streaming_classifier(name, seed=0)
    settings = dataclasses.replace(Settings.from_env(), model_versions=2)
    old_worker = load_lanes(settings, [first])
    token = json.loads(asyncio.run(old_worker.step_streams("classify", [StreamClassifyInstance(steps=[[0.1, 0.2, 0.3]], model=name)])))[0]["state"]
    old_watcher = StoreWatcher(old_worker, settings, *watched((), old_worker))
    second = tiny_models.store_streaming_classifier(name, seed=1)
    third = tiny_models.store_streaming_classifier(name, seed=2)
    assert asyncio.run(old_watcher.check()) == [third]  # it keeps the 2 last loaded, first and third: second never was
    other = tiny_models.store_forecaster("late-other")
    new_worker = load_lanes(settings, [third, other])
    new_watcher = StoreWatcher(new_worker, settings, *watched((), new_worker))
    # first is past the 2 newest (third, second): no worker keeps it loaded. second may be kept by one that
    # loaded it, so it is not answered as gone, and stays unknown here as before.
    assert new_watcher.retire_older_versions() == [first]
    with pytest.raises(VersionGone, match=f"instances\\[0\\].model: {first} is no longer served here; {third} serves {name} now"):
        answered_by(new_worker, first)
    with pytest.raises(VersionGone, match=f"instances\\[0\\].state: was made by {first}, which is no longer served here"):
        asyncio.run(new_worker.step_streams("classify", [StreamClassifyInstance(steps=[[0.4, 0.5, 0.6]], state=token, model=name)]))
    for unknown in (second, f"{name}:nosuchversion"):
        with pytest.raises(InstanceError, match="unknown model"):
            answered_by(new_worker, unknown)
    assert answered_by(new_worker, name) == third
    # Pinned tags alone: no name is watched, and nothing is retired (the store is not even read).
    pinned = dataclasses.replace(settings, models=(third,))
    assert StoreWatcher(new_worker, pinned, *watched(pinned.models, new_worker)).retire_older_versions() == []


def test_a_new_version_of_another_task_is_refused():
    name = "live-task"
    first = tiny_models.store_forecaster(name)
    settings = Settings.from_env()
    lanes = load_lanes(settings, [first])
    watcher = StoreWatcher(lanes, settings, [name], set())
    other_task = tiny_models.store_classifier(name)
    assert asyncio.run(watcher.check()) == []
    assert lanes.by_name[name].tag == first and watcher.policy._failed[other_task][0] == 1


def test_a_pinned_version_is_not_replaced():
    pinned = tiny_models.store_forecaster("live-pinned")
    settings = dataclasses.replace(Settings.from_env(), models=(pinned,))
    lanes = load_lanes(settings, [pinned])
    watcher = StoreWatcher(lanes, settings, *watched(settings.models, lanes))
    tiny_models.store_forecaster("live-pinned", seed=1)
    assert watcher.names == [] and asyncio.run(watcher.check()) == [] and lanes.by_name["live-pinned"].tag == pinned


# -------------------------------------------------------------------------------------- a real server


def failures_of(metrics: str, tag: str) -> float:
    for family in text_string_to_metric_families(metrics):
        if family.name == "seqserve_model_load_failures":
            return sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels["model"] == tag)
    return 0.0


def wait_for(condition, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds:g} s")


def test_a_server_of_two_workers_serves_a_new_version_within_the_poll_interval(tmp_path):
    name = "served-live"
    first = tiny_models.store_streaming_classifier(name, seed=0)
    env = {"SEQSERVE_MODELS": name, "SEQSERVE_WORKERS": "2", "SEQSERVE_MODEL_POLL_S": "0.5"}
    log = tmp_path / "server.log"
    with running_server(env, log=log) as url, httpx.Client(base_url=url, timeout=10) as client:
        body = {"instances": [{"steps": [[0.1, 0.2, 0.3]], "model": name}]}
        token = client.post("/stream/classify", json=body).json()[0]["state"]
        def serving(tag: str) -> set[str]:  # the workers that serve tag as the name's default
            return serving_workers(client.get("/metrics").text, tag)

        workers = wait_for(lambda: len(serving(first)) == 2 and serving(first))  # one series per worker, once both are up

        broken = tiny_models.store_streaming_classifier(name, seed=1)
        corrupt_weights(broken)
        wait_for(lambda: failures_of(client.get("/metrics").text, broken) >= 2)  # each worker tried, and failed
        assert client.post("/classify", json={"instances": [{"sequence": [[0.0] * 3] * 4, "model": name}]}).json()[0]["model"] == first

        second = tiny_models.store_streaming_classifier(name, seed=2)
        wait_for(lambda: serving(second) == workers, seconds=10)
        listed = {m["tag"]: m["name_default"] for m in client.get("/models").json()}
        assert listed == {first: False, second: True}
        for model, expected in ((name, second), (first, first), (second, second)):
            answer = client.post("/classify", json={"instances": [{"sequence": [[0.0] * 3] * 4, "model": model}]})
            assert answer.status_code == 200 and answer.json()[0]["model"] == expected
        streamed = client.post("/stream/classify", json={"instances": [{**body["instances"][0], "state": token}]}).json()[0]
        assert streamed["model"] == first and streamed["seen"] == 2

        third = tiny_models.store_streaming_classifier(name, seed=3)  # the first is unloaded: 410 for its tag and tokens
        wait_for(lambda: serving(third) == workers, seconds=10)
        gone = client.post("/stream/classify", json={"instances": [{**body["instances"][0], "state": token}]})
        assert gone.status_code == 410 and "start a new stream" in gone.json()["error"]
        assert client.post("/classify", json={"instances": [{"sequence": [[0.0] * 3] * 4, "model": first}]}).status_code == 410
        first_v2 = f"/v2/models/{name}/versions/{first.split(':')[1]}"  # the Open Inference Protocol says 410 too
        sequence = {"name": "sequence", "datatype": "FP32", "shape": [1, 4, 3], "data": [0.0] * 12}
        gone = client.post(f"{first_v2}/infer", json={"inputs": [sequence]})
        assert gone.status_code == 410 and gone.json() == {"error": f"model: {first} is no longer served here; {third} serves {name} now"}
        assert [client.get(f"{first_v2}{route}").status_code for route in ("", "/ready", "/config")] == [410] * 3
    lines = log.read_text()
    assert f"new model version {broken} is not served: weights are corrupt" in lines
    assert f"{second} serves {name} now, in place of {first}" in lines
