"""Locust scenarios for seqserve: /classify and /forecast with realistic requests, every answer checked.

    locust --config loadtests/locust.conf                # web UI on http://127.0.0.1:8089
    python -m loadtests run --users 64 --duration 60s    # headless, with thresholds (loadtests/runner.py)

``ClassifyUser`` and ``ForecastUser`` run by default; ``StreamTokenUser`` (``/stream/classify`` with state
tokens) and ``StreamSocketUser`` (the ``/stream`` WebSocket) stream to the streamable classifiers
(``python -m loadtests run --scenarios StreamTokenUser,StreamSocketUser``); ``V2BinaryUser`` sends the
same instances to every served model over the Open Inference Protocol with binary tensors
(``--scenarios V2BinaryUser``).

Requests are built from GET /models, read once per process when a test starts: the right feature count,
lengths from short to long, 1 to --max-instances instances per request, each naming one of the served
models of its task. A light task sends a malformed request and expects the 400 that names the instance.
"""

import json
import logging
import time

import gevent
import numpy as np
import requests
from locust import FastHttpUser, User, between, events, task
from locust.exception import StopUser

from loadtests.payloads import (
    STREAM_RESTART_STEPS, V2_HEADER, V2_INPUT, TokenStream, bad_body, bad_request_problem, check_answers, check_stream_answer,
    check_v2_answer, name_of, new_steps, request_body, same_probabilities, served, streamable, v2_body, v2_instances, v2_path,
)

log = logging.getLogger(__name__)
MODELS: list[dict] = []  # what GET /models answered when the test started


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--max-instances", type=int, default=8, help="Most instances in one request (default 8)")
    parser.add_argument("--models", default="", help="Comma-separated names or tags to load (default: all served)")
    parser.add_argument("--worker-stats", default="", help="On a master: write each worker's request and failure "
                        "counts to this JSON file (python -m loadtests run --processes N sets it)")


WORKER_COUNTS: dict[str, dict[str, int]] = {}  # on a master: what each worker reported, added up
OPTIONS = {}  # the parsed options, for listeners that are not handed the environment


@events.init.add_listener
def remember_options(environment, **kwargs):
    OPTIONS["worker_stats"] = getattr(environment.parsed_options, "worker_stats", "") if environment.parsed_options else ""


@events.worker_report.add_listener
def count_worker_requests(client_id, data, **kwargs):
    """On a master: add up each worker's reports (every few seconds and a last one when it stops), so that a
    run can show that every process sent requests and that they add up to the aggregated total. The file is
    rewritten on every report, so it holds the last one whenever the master stops."""
    counts = WORKER_COUNTS.setdefault(client_id, {"requests": 0, "failures": 0})
    counts["requests"] += data["stats_total"]["num_requests"]
    counts["failures"] += data["stats_total"]["num_failures"]
    if OPTIONS.get("worker_stats"):
        with open(OPTIONS["worker_stats"], "w") as f:
            json.dump(WORKER_COUNTS, f, indent=2)


def wanted_models(environment) -> list[str]:
    """The names or tags given with ``--models``; empty: every served model."""
    return [m.strip() for m in environment.parsed_options.models.split(",") if m.strip()]


@events.test_start.add_listener
def read_models(environment, **kwargs):
    """Read the served models; without them a headless run stops at once, a web UI run starts no users."""
    try:
        response = requests.get(f"{environment.host}/models", timeout=10)
        response.raise_for_status()
        MODELS[:] = response.json()
    except (requests.RequestException, ValueError) as err:
        log.error("cannot read %s/models: %s; is seqserve running there?", environment.host, err)
        MODELS.clear()
        if environment.parsed_options.headless:
            environment.process_exit_code = 2
            gevent.spawn(environment.runner.quit)  # not from inside the start this handler is part of


class SeqServeUser(FastHttpUser):
    """A client of ``/{task_name}``: mostly single instances, some multi-instance requests, a few bad ones."""

    abstract = True
    host = "http://127.0.0.1:3000"
    wait_time = between(0.0, 0.1)
    task_name = ""  # "classify" or "forecast"

    def on_start(self):
        options = self.environment.parsed_options
        wanted = wanted_models(self.environment)
        self.entries = self.entries_of(wanted)
        if not self.entries:
            among = f" among {wanted}" if wanted else ""
            log.warning("no %s model served%s; %s stops", self.task_name, among, type(self).__name__)
        self.most = max(1, options.max_instances)
        self.rng = np.random.default_rng()

    def entries_of(self, wanted: list[str]) -> list[dict]:
        """The ``/models`` entries this user sends requests to."""
        return served(MODELS, self.task_name, wanted)

    @property
    def route(self) -> str:
        """The request name's prefix in locust's statistics."""
        return f"/{self.task_name}"

    def served_models(self) -> list[dict]:
        if not self.entries:
            raise StopUser()  # from a task, quietly (locust logs a traceback for one raised in on_start)
        return self.entries

    def post(self, n_instances: int, name: str):
        body, asked = request_body(self.rng, self.task_name, self.served_models(), n_instances)
        with self.client.post(f"/{self.task_name}", json=body, name=name, catch_response=True) as resp:
            problem = check_answers(self.task_name, asked, resp.status_code, resp.text or "")
            if resp.status_code == 503 and not (resp.headers or {}).get("retry-after"):
                problem = f"HTTP 503 without Retry-After: {(resp.text or '')[:200]}"  # an overload must say when to retry
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    @task(6)
    def one_instance(self):
        self.post(1, f"{self.route} [1]")

    @task(3)
    def several_instances(self):
        if self.most < 2:  # --max-instances 1: every request holds one instance
            return self.post(1, f"{self.route} [1]")
        self.post(int(self.rng.integers(2, self.most + 1)), f"{self.route} [2-{self.most}]")

    @task(1)
    def bad_request(self):
        # Locust keeps the function a @task decorates, so a subclass changes what is sent in post_bad.
        self.post_bad(f"{self.route} [bad]")

    def post_bad(self, name: str):
        """A step with one feature too many: the service must answer 400 and name the instance."""
        entries = self.served_models()
        body = bad_body(self.task_name, entries[int(self.rng.integers(len(entries)))])
        with self.client.post(f"/{self.task_name}", json=body, name=name, catch_response=True) as resp:
            problem = bad_request_problem(resp.status_code, resp.text or "", "instances[0]", (resp.headers or {}).get("retry-after"))
            resp.failure(problem) if problem else resp.success()


class ClassifyUser(SeqServeUser):
    task_name = "classify"


class ForecastUser(SeqServeUser):
    task_name = "forecast"


class V2BinaryUser(SeqServeUser):
    """A client of the Open Inference Protocol with binary tensors: ``POST /v2/models/<name>/infer`` to every
    served model, ragged lengths in a ``lengths`` input, binary outputs, every answer checked as
    ``/classify``'s and ``/forecast``'s are; a few bad requests that must get a 400 naming the input."""

    task_name = "classify or forecast"

    def entries_of(self, wanted: list[str]) -> list[dict]:
        return served(MODELS, "classify", wanted) + served(MODELS, "forecast", wanted)

    @property
    def route(self) -> str:
        return "/v2/models/<name>/infer [binary]"

    def pick(self) -> dict:
        entries = self.served_models()
        return entries[int(self.rng.integers(len(entries)))]

    def post(self, n_instances: int, name: str):
        entry = self.pick()
        body, headers = v2_body(entry["task"], *v2_instances(self.rng, entry, n_instances))
        with self.client.post(v2_path(entry), data=body, headers=headers, name=name, catch_response=True) as resp:
            problem = check_v2_answer(entry, n_instances, resp.status_code, resp.content or b"", resp.headers.get(V2_HEADER))
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    def post_bad(self, name: str):
        """Steps with one feature too many: the service must answer 400 and name the input."""
        entry = self.pick()
        values, lengths = v2_instances(self.rng, entry, 1)
        body, headers = v2_body(entry["task"], np.pad(values, ((0, 0), (0, 0), (0, 1))), lengths)
        expected = f"{V2_INPUT[entry['task']]}: shape"
        with self.client.post(v2_path(entry), data=body, headers=headers, name=name, catch_response=True) as resp:
            text = (resp.content or b"").decode(errors="replace")
            problem = bad_request_problem(resp.status_code, text, expected, (resp.headers or {}).get("retry-after"))
            resp.failure(problem) if problem else resp.success()


class StreamTokenUser(FastHttpUser):
    """A device streaming to ``/stream/classify`` with a state token: 1-4 new readings a request.

    Every answer is checked (model, steps seen, a valid classification, a next token); every tenth is
    also compared with ``/classify`` on the whole sequence so far, which it must equal.
    """

    host = "http://127.0.0.1:3000"
    wait_time = between(0.0, 0.1)

    def on_start(self):
        self.entries = streamable(MODELS, "classify", wanted_models(self.environment))
        self.rng = np.random.default_rng()
        self.restart()

    def restart(self):
        self.entry = self.entries[int(self.rng.integers(len(self.entries)))] if self.entries else None
        self.stream, self.sent = (TokenStream(self.entry) if self.entry else None), 0

    @task
    def send_steps(self):
        if self.entry is None:
            log.warning("no streamable classifier served; %s stops", type(self).__name__)
            raise StopUser()
        steps = new_steps(self.rng, self.entry)
        with self.client.post("/stream/classify", json=self.stream.body(steps), name="/stream/classify [token]", catch_response=True) as resp:
            if resp.status_code != 200:
                return resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            try:
                [answer] = json.loads(resp.text or "")
            except (ValueError, TypeError) as err:  # not JSON, or not a list of one answer: a wrong answer
                resp.failure(f"expected a list of 1 answer ({type(err).__name__}): {(resp.text or '')[:200]}")
                return self.restart()
            problem = self.stream.answered(steps, answer)
            self.sent += 1
            if problem is None and self.sent % 10 == 0:
                problem = self.compare_with_whole(answer)
            if problem:
                resp.failure(problem)
                return self.restart()
            resp.success()
        if len(self.stream.sequence) >= STREAM_RESTART_STEPS:
            self.restart()

    def compare_with_whole(self, answer: dict) -> str | None:
        """Why the stream's ``answer`` differs from /classify on the whole sequence so far (a request of its own,
        checked as every /classify answer is), or None."""
        sent = {"instances": [{"sequence": self.stream.sequence, "model": name_of(self.entry)}]}
        with self.client.post("/classify", json=sent, name="/classify [stream check]", catch_response=True) as whole:
            problem = check_answers("classify", [self.entry], whole.status_code, whole.text or "")
            whole.failure(problem) if problem else whole.success()
        return problem or same_probabilities(answer, json.loads(whole.text)[0])


class StreamSocketUser(User):
    """A device streaming over the ``/stream`` WebSocket: 1-4 new readings a message, every answer checked."""

    host = "http://127.0.0.1:3000"
    wait_time = between(0.0, 0.1)

    def on_start(self):
        self.entries = streamable(MODELS, "classify", wanted_models(self.environment))
        self.rng = np.random.default_rng()
        self.socket = None
        self.open()

    def open(self):
        from websocket import create_connection  # websocket-client: blocking, made cooperative by gevent

        if self.socket is not None:
            self.socket.close()
        self.socket = None
        if not self.entries:
            return
        self.entry = self.entries[int(self.rng.integers(len(self.entries)))]
        url = f"{self.host.replace('http', 'ws', 1)}/stream?model={name_of(self.entry)}"
        self.socket = create_connection(url, timeout=30)
        self.socket.recv()  # the server's hello
        self.seen = 0

    def on_stop(self):
        if self.socket is not None:
            self.socket.close()

    @task
    def send_steps(self):
        if self.socket is None:
            log.warning("no streamable classifier served; %s stops", type(self).__name__)
            raise StopUser()
        steps = new_steps(self.rng, self.entry)
        started = time.perf_counter()
        problem, text = None, ""
        try:
            self.socket.send(json.dumps({"steps": steps}))
            text = self.socket.recv()
            self.seen += len(steps)
            problem = check_stream_answer(json.loads(text), self.entry, self.seen, token=False)
        except Exception as err:  # a closed socket, a timeout, a body that is not JSON
            problem = f"{type(err).__name__}: {err}"
        self.environment.events.request.fire(
            request_type="WS", name="/stream [websocket]", response_time=(time.perf_counter() - started) * 1000,
            response_length=len(text), exception=AssertionError(problem) if problem else None, context={},
        )
        if problem or self.seen >= STREAM_RESTART_STEPS:
            self.open()
