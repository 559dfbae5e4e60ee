"""Load tests: the payload builder, the answer checks and the /metrics parser, then one short real run."""

import ast
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from loadtests import payloads
from loadtests.runner import ROOT, batch_size_line, batch_sizes, parse_duration, subtract
from tests import tiny_models

CLF = {
    "tag": "clf:v1", "task": "classify", "features": ["x", "y", "z"], "labels": ["walk", "run", "sit"],
    "lookback": None, "horizon": None, "quantiles": [], "max_length": 4096,
}
FC = {
    "tag": "fc:v2", "task": "forecast", "features": ["value"], "labels": [],
    "lookback": 12, "horizon": 3, "quantiles": [0.1, 0.5, 0.9], "max_length": 30,
}
FC2 = {**FC, "tag": "fc2:v1", "features": ["a", "b"]}
MODELS = [CLF, FC, FC2]


def test_served_filters_by_task_and_by_names_or_tags():
    assert payloads.served(MODELS, "classify") == [CLF]
    assert payloads.served(MODELS, "forecast", ["fc2", "clf"]) == [FC2]
    assert payloads.served(MODELS, "forecast", ["fc:v2"]) == [FC]


def test_classify_bodies_have_the_models_feature_count_and_lengths_up_to_the_cap():
    rng = np.random.default_rng(0)
    body, asked = payloads.request_body(rng, "classify", [CLF], 200)
    lengths = [len(i["sequence"]) for i in body["instances"]]
    assert asked == [CLF] * 200 and {i["model"] for i in body["instances"]} == {"clf"}
    assert all(len(step) == 3 for i in body["instances"] for step in i["sequence"])
    assert min(lengths) < 10 and 80 < max(lengths) <= payloads.DEFAULT_CLASSIFY_STEPS
    capped = payloads.classify_instance(rng, {**CLF, "train_max_length": 4})
    assert 1 <= len(capped["sequence"]) <= 8


def test_forecast_bodies_are_flat_for_one_channel_and_between_lookback_and_the_cap():
    body, asked = payloads.request_body(np.random.default_rng(0), "forecast", [FC, FC2], 100)
    assert {e["tag"] for e in asked} == {"fc:v2", "fc2:v1"}
    for instance, entry in zip(body["instances"], asked):
        assert instance["model"] == entry["tag"].split(":")[0]
        assert 12 <= len(instance["history"]) <= 30  # 3x lookback is 36, but max_length is 30
        first = instance["history"][0]
        assert isinstance(first, float) if entry is FC else len(first) == 2


def test_forecast_bodies_for_a_log_model_stay_above_zero():
    log_model = {**FC, "architecture": {"transform": "log", "n_targets": 1}}
    body, _ = payloads.request_body(np.random.default_rng(0), "forecast", [log_model], 200)
    assert min(min(i["history"]) for i in body["instances"]) > 0
    plain, _ = payloads.request_body(np.random.default_rng(0), "forecast", [FC], 200)
    assert min(min(i["history"]) for i in plain["instances"]) < 0  # a model of the values themselves gets any


def test_bad_body_has_one_feature_too_many():
    assert len(payloads.bad_body("classify", CLF)["instances"][0]["sequence"][0]) == 4
    assert len(payloads.bad_body("forecast", FC)["instances"][0]["history"]) == 12


def classification(**changes):
    probabilities = {"walk": 0.2, "run": 0.7, "sit": 0.1}
    return {"model": "clf:v1", "label": "run", "label_index": 1, "probabilities": probabilities} | changes


def forecast(**changes):
    q = {"0.1": [1.0, 2.0, 3.0], "0.5": [1.5, 2.5, 3.5], "0.9": [2.0, 3.0, 4.0]}
    return {"model": "fc:v2", "horizon": 3, "forecast": q["0.5"], "quantiles": q} | changes


def check(task, answers, asked, status=200):
    return payloads.check_answers(task, asked, status, json.dumps(answers))


def test_checks_accept_right_answers():
    walk = classification(label="walk", label_index=0, probabilities={"walk": 0.5, "run": 0.4, "sit": 0.1})
    assert check("classify", [classification(), walk], [CLF, CLF]) is None
    assert check("forecast", [forecast(), forecast(quantiles=None)], [FC, {**FC, "quantiles": []}]) is None


@pytest.mark.parametrize(
    "task, answer, reason",
    [
        ("classify", classification(model="other:v1"), "model is 'other:v1', asked 'clf'"),
        ("classify", classification(probabilities={"walk": 0.2, "run": 0.7, "sit": 0.2}), "sum to 1.100000"),
        ("classify", classification(label="walk", label_index=0), "label 'walk' is not the most probable"),
        ("classify", classification(label_index=2), "label_index 2 does not point at label 'run'"),
        ("classify", classification(probabilities={"a": 1.0}), "probabilities are for ['a']"),
        ("forecast", forecast(forecast=[1.5, 2.5]), "horizon 3 with 2 steps; the model forecasts 3"),
        ("forecast", forecast(quantiles={"0.1": [1, 3, 3], "0.5": [1.5, 2.5, 3.5], "0.9": [2, 3, 4]}), "0.1 is above"),
        ("forecast", forecast(forecast=[1.5, 2.5, 9.0]), "forecast differs from quantile 0.5"),
        ("forecast", forecast(quantiles={"0.5": [1.5, 2.5, 3.5]}), "quantile levels ['0.5']"),
        # Right shape, wrong values: strings, shares outside 0..1 that still sum to 1, NaN (which equals itself
        # once parsed, and never compares above anything)
        ("classify", classification(probabilities={"walk": "0.2", "run": "0.7", "sit": "0.1"}), "not all numbers from 0 to 1"),
        ("classify", classification(probabilities={"walk": -0.7, "run": 1.7, "sit": 0.0}), "not all numbers from 0 to 1"),
        ("forecast", forecast(forecast=[float("nan")] * 3), "forecast is not 3 steps of finite numbers"),
        ("forecast", forecast(quantiles={"0.1": [None] * 3, "0.5": [1.5, 2.5, 3.5], "0.9": [2.0, 3.0, 4.0]}),
         "quantile 0.1 is not 3 steps of finite numbers"),
    ],
)
def test_checks_reject_wrong_answers_with_the_reason(task, answer, reason):
    problem = check(task, [answer], [CLF if task == "classify" else FC])
    assert problem.startswith("answer 0: ") and reason in problem


def test_an_answer_the_checks_cannot_read_is_a_failure_not_an_exception():
    # Inside locust's catch_response an exception marks the request neither failed nor passed: a run of such
    # answers passed its thresholds with 0 failures.
    assert check("forecast", [forecast(quantiles={"mid": [1.0, 2.0, 3.0]})], [FC]).startswith(
        "answer cannot be checked (ValueError: could not convert string to float: 'mid')")
    assert payloads.same_probabilities({"probabilities": None}, classification()).startswith("answer cannot be checked")
    assert payloads.check_stream_answer({"model": "clf:v1", "seen": 1, "probabilities": 5}, CLF, 1, False).startswith(
        "answer cannot be checked")


def test_checks_reject_wrong_status_count_and_body():
    assert check("classify", [classification()], [CLF, CLF]).startswith("expected a list of 2 answers")
    assert payloads.check_answers("classify", [CLF], 503, "overloaded") == "HTTP 503: overloaded"
    assert payloads.check_answers("classify", [CLF], 200, "<html>").startswith("body is not JSON")


def v2_interface(entry: dict):
    from service.v2.protocol import ModelInterface

    return ModelInterface(
        name=payloads.name_of(entry), version="v1", task=entry["task"], versions=["v1"], features=entry["features"], max_instances=8,
        max_length=entry["max_length"], labels=entry["labels"], targets=entry["features"], lookback=entry["lookback"] or 0,
        horizon=entry["horizon"] or 0, quantiles=entry["quantiles"],
    )


def v2_outputs(entry: dict, n: int) -> dict[str, np.ndarray]:
    """Right outputs for ``n`` instances of ``entry``'s model, as the service's infer_arrays gives them."""
    if entry["task"] == "classify":
        probabilities = np.tile(np.array([0.2, 0.7, 0.1], np.float32), (n, 1))
        return {"probabilities": probabilities, "label_index": np.ones(n, np.int64), "label": np.array(["run"] * n, dtype=object)}
    quantiles = np.sort(np.random.default_rng(0).normal(size=(n, 3, 3, 1)), axis=1).astype(np.float32)  # (N, Q, H, K)
    return {"forecast": quantiles[:, 1].copy(), "quantiles": quantiles}


def test_a_token_stream_counts_only_the_steps_the_server_answered():
    stream = payloads.TokenStream(CLF)
    first, second = [[0.1] * 3] * 2, [[0.3] * 3]
    assert stream.body(first) == {"instances": [{"steps": first, "state": None, "model": "clf"}]}
    assert stream.answered(first, classification(seen=2, state="t1")) is None
    # The next request was refused (a 503 under load): its steps never reached the stream, so the one after
    # it is answered with 3 steps seen, not 3 + the refused ones.
    assert stream.body(second)["instances"][0]["state"] == "t1"
    assert stream.answered(second, classification(seen=3, state="t2")) is None
    assert (stream.sequence, stream.state) == (first + second, "t2")
    assert stream.answered(second, classification(seen=9, state="t3")) == "seen is 9, the stream has sent 4 steps"
    assert (stream.sequence, stream.state) == (first + second, "t2")  # a wrong answer does not move it on


@pytest.mark.parametrize("status, text, retry_after, problem", [
    (400, '{"error": "sequence: shape [1, 5, 4] ..."}', None, None),
    (503, '{"error": "the server is busy"}', "1", 'HTTP 503: {"error": "the server is busy"}'),
    (503, '{"error": "the server is busy"}', None, "expected a 400 naming 'sequence: shape', got HTTP 503: {\"error\": \"the server is busy\"}"),
    (400, '{"error": "history: shape"}', None, "expected a 400 naming 'sequence: shape', got HTTP 400: {\"error\": \"history: shape\"}"),
    (200, "[]", None, "expected a 400 naming 'sequence: shape', got HTTP 200: []"),
])
def test_a_bad_request_shed_by_an_overload_counts_as_an_overload(status, text, retry_after, problem):
    assert payloads.bad_request_problem(status, text, "sequence: shape", retry_after) == problem


@pytest.mark.parametrize("entry", [CLF, FC, FC2], ids=["classify", "forecast", "forecast-2-features"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_bodies_are_read_by_the_service_and_its_answers_pass_the_checks(entry, binary):
    """The locust user's bodies, decoded by the service's own codec; the service's answers, read by the user's checks."""
    from service.v2.protocol import read_infer_request, write_infer_response

    values, lengths = payloads.v2_instances(np.random.default_rng(0), entry, 5)
    assert values.dtype == np.float32 and values.shape == (5, lengths.max(), len(entry["features"]))
    assert len(set(lengths.tolist())) > 1 and not values[lengths.argmin(), lengths.min():].any()  # ragged, zero-padded
    body, headers = payloads.v2_body(entry["task"], values, lengths, binary=binary)
    model = v2_interface(entry)
    asked = read_infer_request(body, headers.get(payloads.V2_HEADER), model, 1 << 20)
    np.testing.assert_array_equal(asked.values, values)
    np.testing.assert_array_equal(asked.lengths, lengths)
    assert set(asked.outputs.values()) == {binary}
    answer, answer_headers = write_infer_response(model, asked, v2_outputs(entry, 5))
    header_length = answer_headers.get(payloads.V2_HEADER.lower())
    assert payloads.check_v2_answer(entry, 5, 200, answer, header_length) is None


def test_v2_checks_reject_wrong_answers_with_the_reason():
    from service.v2.protocol import InferRequest, write_infer_response

    model = v2_interface(CLF)

    def answer(outputs: dict, n: int = 2) -> str | None:
        asked = InferRequest(np.zeros((n, 1, 3), np.float32), np.ones(n, np.int64), dict.fromkeys(outputs, True))
        body, headers = write_infer_response(model, asked, outputs)
        return payloads.check_v2_answer(CLF, 2, 200, body, headers.get(payloads.V2_HEADER.lower()))

    right = v2_outputs(CLF, 2)
    assert answer(right) is None
    assert answer({**right, "label_index": np.array([1, 2])}) == "instance 1: label_index 2 does not point at label 'run'"
    assert answer({k: v[:1] for k, v in right.items()}).startswith("expected 2 instances in every output")
    assert answer({"probabilities": right["probabilities"]}) == (
        "outputs are ['probabilities'], expected ['label', 'label_index', 'probabilities']")
    assert payloads.check_v2_answer(CLF, 2, 400, b'{"error": "sequence: bad"}', None) == \
        "HTTP 400: b'{\"error\": \"sequence: bad\"}'"
    assert payloads.check_v2_answer(CLF, 2, 200, b"<html>", None).startswith("answer cannot be read (JSONDecodeError")


METRICS = """# HELP seqserve_batch_size Instances merged into one forward pass
# TYPE seqserve_batch_size histogram
{buckets}
# HELP bentoml_service_request_total Total number of requests
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{{endpoint="/classify",http_response_code="200"}} 12.0
"""


def metrics(model: str, cumulative: list[int], total: float) -> str:
    """A /metrics page with one model's seqserve_batch_size histogram (buckets 1, 2, 4, +Inf)."""
    bounds = ["1.0", "2.0", "4.0", "+Inf"]
    lines = [f'seqserve_batch_size_bucket{{le="{le}",model="{model}"}} {n}' for le, n in zip(bounds, cumulative)]
    lines += [f'seqserve_batch_size_sum{{model="{model}"}} {total}']
    lines += [f'seqserve_batch_size_count{{model="{model}"}} {cumulative[-1]}']
    return METRICS.format(buckets="\n".join(lines))


def test_batch_size_histogram_is_parsed_subtracted_and_summarised():
    before = batch_sizes(metrics("clf:v1", [5, 5, 5, 5], 5.0))
    after = batch_sizes(metrics("clf:v1", [8, 10, 15, 16], 53.0) + metrics("idle:v1", [0, 0, 0, 0], 0.0))
    assert before == {"clf:v1": {"buckets": {1.0: 5, 2.0: 5, 4.0: 5, float("inf"): 5}, "sum": 5.0, "count": 5}}
    run = subtract(after, before)
    assert run == {"clf:v1": {"buckets": {1.0: 3, 2.0: 5, 4.0: 10, float("inf"): 11}, "sum": 48.0, "count": 11}}
    line = batch_size_line("clf:v1", run["clf:v1"])
    assert "11 forward passes, 48 instances, mean batch size 4.36" in line
    assert "[1: 27%  2: 18%  3-4: 45%  >4: 9%]" in line
    assert batch_sizes("# nothing here\n") == {}


def test_hostile_huge_histories_are_positive_and_reach_the_magnitude():
    from loadtests.hostile import huge_history

    history = np.array(huge_history(104, 3.4e38))
    assert history.min() > 0 and 0.99 * 3.4e38 < history.max() <= 3.4e38
    assert np.isfinite(history.astype(np.float32)).all()  # within float32: what overflows is the model, not the input


def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "60s", "2m", "1h30m", "1m5s")] == [90, 60, 120, 5400, 65]
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize("flags, said", [
    (["--max-failure-rate", "5"], "expected a share from 0 to 1 (0.01 is 1%), got '5'"),  # 5 (%) could never fail
    (["--spawn-rate", "0"], "expected a number above 0, got '0'"),
    (["--users", "0"], "expected a whole number >= 1, got '0'"),
    (["--max-instances", "0"], "expected a whole number >= 1, got '0'"),
])
def test_load_options_that_cannot_mean_anything_are_refused(capsys, flags, said):
    from loadtests.runner import build_parser

    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(flags)
    assert refused.value.code == 2 and said in capsys.readouterr().err


def test_a_soak_refuses_a_memory_threshold_it_cannot_measure():
    from loadtests.soak import build_parser, option_problem

    given = build_parser().parse_args(["--host", "http://127.0.0.1:3000", "--max-memory-growth-mb", "0"])
    assert option_problem(given) == ("--max-memory-growth-mb with --host needs --server-pid (its `bentoml serve` on "
                                     "this machine) to measure its workers")
    assert option_problem(build_parser().parse_args(["--host", "http://127.0.0.1:3000"])) is None  # not asked for


def test_headless_run_against_a_server_it_starts_itself(tmp_path):
    tags = f"{tiny_models.store_classifier('lt-clf')},{tiny_models.store_forecaster('lt-fc')}"
    out = tmp_path / "run"
    command = [sys.executable, "-m", "loadtests", "run", "--users", "6", "--spawn-rate", "6", "--duration", "10s",
               "--max-failure-rate", "0", "--scenarios", "ClassifyUser,ForecastUser,V2BinaryUser", "--out", str(out)]
    env = {**os.environ, "SEQSERVE_MODELS": tags}  # BENTOML_HOME: the private store of tests/conftest.py
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "locust_stats.csv").exists() and (out / "report.html").stat().st_size > 1000
    assert "requests/s" in done.stdout and "PASS" in done.stdout
    names = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(open(out / "locust_stats.csv"))}
    assert names.get("/v2/models/<name>/infer [binary] [1]", 0) > 0, names  # V2BinaryUser sent requests, all right
    for tag in tags.split(","):
        assert f"  {tag}: " in done.stdout and "mean batch size" in done.stdout


def test_soak_reports_failures_p99_per_minute_and_worker_memory(tmp_path):
    from loadtests.server import started_server

    tags = f"{tiny_models.store_classifier('soak-clf')},{tiny_models.store_forecaster('soak-fc')}"
    out = tmp_path / "soak"
    with started_server({"SEQSERVE_MODELS": tags}) as (url, pid):
        command = [sys.executable, "-m", "loadtests", "soak", "--host", url, "--server-pid", str(pid), "--users", "2",
                   "--spawn-rate", "2", "--duration", "6s", "--sample-every", "1s", "--max-p99-ms", "100000",
                   "--out", str(out)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "soak.json").read_text())
    assert report["requests"] > 0 and report["passed"] and report["crossed"] == []
    assert [m["minute"] for m in report["minutes"]] == [1] and report["minutes"][0]["requests"] > 0
    assert report["minutes"][0]["p99_ms"] > 0 and report["minutes"][0]["worker_rss_mib"] > 10
    memory = report["memory"]
    assert memory["workers"] == 1 and memory["samples"] >= 3 and memory["growth_mib"] is not None
    assert (out / "memory.csv").read_text().startswith("seconds,pid,rss_mib")
    assert "minute" in done.stdout and "growth" in done.stdout and "PASS" in done.stdout
    assert (out / "soak.txt").read_text() == done.stdout


def test_two_locust_processes_both_send_requests_and_the_summary_adds_them_up(tmp_path):
    tags = f"{tiny_models.store_classifier('dist-clf')},{tiny_models.store_forecaster('dist-fc')}"
    out = tmp_path / "run"
    command = [sys.executable, "-m", "loadtests", "run", "--processes", "2", "--users", "4", "--spawn-rate", "4",
               "--duration", "6s", "--max-failure-rate", "0", "--max-p99-ms", "100000", "--out", str(out)]
    env = {**os.environ, "SEQSERVE_MODELS": tags}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = json.loads((out / "workers.json").read_text())  # what each worker reported to the master
    counts = [w["requests"] for w in workers.values()]
    assert len(counts) == 2 and all(n > 0 for n in counts)
    total = next(row for row in csv.DictReader(open(out / "locust_stats.csv")) if row["Name"] == "Aggregated")
    assert sum(counts) == int(total["Request Count"])
    assert f"2 worker processes sent {counts[0]} + {counts[1]} = {sum(counts)} requests\n" in done.stdout
    assert "over 2 locust processes" in done.stdout and "load generator CPU: " in done.stdout
    assert (out / "report.html").stat().st_size > 1000 and "PASS" in done.stdout


def test_a_saturated_generator_is_warned_about(tmp_path):
    from loadtests import generator

    busy = generator.Usage(processes=1, cpu_seconds=9.5, wall_seconds=10.0, machine_cores=4, machine_busy=0.5)
    generator.write_usage(tmp_path, busy)
    lines, warnings = generator.report(tmp_path, 100, local_target=False)
    assert lines == ["load generator CPU: 9.5 CPU-s in 10.0 s = 95% of its 1 core(s) (1 process(es)); "
                     "this machine's 4 cores were 50% busy"]
    assert warnings == ["the load generator was saturated (95% of its 1 core(s)): this run measured the generator "
                        "as much as the service; use more --processes"]
    calm = generator.Usage(processes=2, cpu_seconds=4.0, wall_seconds=10.0, machine_cores=2, machine_busy=0.95)
    generator.write_usage(tmp_path, calm)
    assert generator.report(tmp_path, 100, local_target=False)[1] == []
    assert "this machine was 95% busy and runs both the service and the load generator" in \
        generator.report(tmp_path, 100, local_target=True)[1][0]


def test_lean_websocket_frames_are_masked_and_split_server_frames_are_reassembled():
    import struct

    from loadtests.lean_websocket import FrameReader, client_frame

    for size in (5, 300, 70_000):  # the 7-bit, 16-bit and 64-bit length forms
        text = "x" * size
        frame = client_frame(text)
        start = {5: 2, 300: 4, 70_000: 10}[size]
        assert frame[0] == 0x81 and frame[1] & 0x80  # final text frame, masked
        mask, body = frame[start : start + 4], frame[start + 4 :]
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)).decode() == text
    server_frames = b"".join(
        bytes([0x81, n]) + b"a" * n if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n) + b"b" * n for n in (3, 200)
    ) + bytes([0x89, 4]) + b"ping" + bytes([0x81, 127]) + struct.pack("!Q", 70_000) + b"c" * 70_000
    reader, frames = FrameReader(), []
    for i in range(0, len(server_frames), 7):  # bytes arrive in arbitrary pieces
        frames += reader.feed(server_frames[i : i + 7])
    assert [(op, len(p)) for op, p in frames] == [(0x1, 3), (0x1, 200), (0x9, 4), (0x1, 70_000)]
    assert reader.buffer == b""


def test_the_websocket_ceiling_answers_the_streaming_cells():
    """The streaming table's ceiling row: the lean clients against the parse-only WebSocket server."""
    from loadtests.baselines import websocket_echo
    from loadtests.server import free_port, running_process
    from loadtests.stream_bench import run_websocket_ceiling

    port = free_port()
    with running_process(websocket_echo.serve_command(port), port=port, ready_path="/healthz", timeout=60) as url:
        rows = run_websocket_ceiling(url, [1, 3], 0.3)
    assert [r["streams"] for r in rows] == [1, 3]
    assert all(r["way"] == "websocket ceiling (parse only)" and r["steps"] > 0 and r["failures"] == 0 for r in rows)


def test_no_load_test_imports_the_service():
    """Load tests drive the service over HTTP only: what they need from it is passed in (flags, env of a server they start)."""
    imports = {}
    for path in sorted((ROOT / "loadtests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            imports.setdefault(path.name, set()).update(n for n in names if n.split(".")[0] == "service")
    assert {name: found for name, found in imports.items() if found} == {}


def test_bench_batch_table_shows_the_most_v2_binary_over_json_can_be():
    from loadtests.bench import batch_markdown

    def row(sequences_per_s):
        return {"connections": 1, "requests_per_s": sequences_per_s / 64, "sequences_per_s": sequences_per_s,
                "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0, "generator_cpu_pct": 1.0}

    ways = {"/classify JSON": 4000.0, "v2 JSON": 4400.0, "v2 binary": 7000.0}
    results = {"model_only": [{"batch": 64, "sequences_per_s": 8000.0}], "batches": {way: [row(s)] for way, s in ways.items()}}
    ratios = batch_markdown(results, 8)[-1]
    # v2 binary ÷ model alone, v2 binary ÷ JSON, model alone ÷ JSON (the bound), v2 JSON ÷ JSON
    assert ratios == "| 1 | 0.88× | 1.75× | 2.00× | 1.10× |"


def test_bench_counts_answered_requests_not_refusals_as_throughput():
    from loadtests import bench

    def row(requests: int, errors: int) -> dict:
        return {"connections": 16, "requests": requests, "errors": errors, "seconds": 10.0, "requests_per_s": requests / 10,
                "p50_ms": 2.0, "p99_ms": 9.0, "generator_cpu_pct": 50}

    servers = {"seqserve": [row(20000, 1000)], "plain BentoML batchable": [row(10000, 0)], bench.CEILING: [row(40000, 0)],
               "no batching (plain ASGI)": [row(15000, 0)]}
    table = bench.markdown({"model_only": [], "servers": servers}, 10)
    assert "| seqserve | 16 | 1,900 |" in table  # 2,000 requests a second, 100 of them refused
    assert "| 16 | 1.90× | 0.47× | +0.00 |" in table
