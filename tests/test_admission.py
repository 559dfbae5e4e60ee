"""The worker's door (service.admission): requests past the wait limit are refused before parsing."""

import pytest

import asyncio
import json

from service.admission import BYTES_PER_UNIT, Door, WorkerQueue
from service.errors import REFUSED, RetryLater


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busy_queue(seconds_per_request: float, max_wait_s: float = 0.1) -> tuple[WorkerQueue, Clock]:
    """A queue that has learnt ``seconds_per_request`` for one-unit requests answered back to back."""
    clock = Clock()
    queue = WorkerQueue(max_wait_s, clock)
    for _ in range(int(1 / seconds_per_request)):  # a busy second
        ticket = queue.enter(1.0)
        clock.now += seconds_per_request
        queue.leave(ticket)
    return queue, clock


def test_an_idle_worker_admits_everything_until_it_has_learnt_its_speed():
    queue = WorkerQueue(0.1, Clock())
    for _ in range(1000):
        queue.enter(1.0)
    assert queue.units == 1000


def test_it_learns_the_seconds_per_request_while_busy():
    queue, _ = busy_queue(0.002)
    assert queue.seconds_per_unit == pytest.approx(0.002)


def test_a_request_that_would_wait_past_the_limit_is_refused_with_a_retry_hint():
    queue, clock = busy_queue(0.002, max_wait_s=0.101)
    for _ in range(51):  # 51 x 2 ms ahead: the next one would wait 102 ms
        queue.enter(1.0)
    clock.now += 0.11  # and the oldest has waited past the limit: the queue is real
    with pytest.raises(RetryLater, match=r"about 102 ms of requests are ahead of this one \(limit 101 ms") as refused:
        queue.enter(1.0)
    assert refused.value.retry_after_s == 1
    assert refused.value.retry_after_ms == 102  # the estimate itself, for clients that can act on less than a second
    assert queue.units == 51  # the refused one was never counted


def test_an_estimate_alone_refuses_nobody_until_a_request_has_waited_the_limit():
    """A rate learnt at low concurrency overstates the wait of a burst that batches well."""
    queue, clock = busy_queue(0.002, max_wait_s=0.1)
    for _ in range(500):  # 1 s of estimated work, arriving at once
        queue.enter(1.0)
    clock.now += 0.099
    queue.enter(1.0)
    clock.now += 0.002
    with pytest.raises(RetryLater):
        queue.enter(1.0)


def test_big_bodies_weigh_more_so_fewer_of_them_are_admitted():
    assert WorkerQueue.weigh(0) == 1.0
    assert WorkerQueue.weigh(10 * BYTES_PER_UNIT) == 11.0
    queue, clock = busy_queue(0.002, max_wait_s=0.101)
    admitted = 0
    try:
        for _ in range(100):
            queue.enter(WorkerQueue.weigh(10 * BYTES_PER_UNIT))
            admitted += 1
            clock.now += 0.11
    except RetryLater:
        pass
    assert admitted == 5  # after the fifth: 5 x 11 units x 2 ms = 110 ms ahead


def test_time_spent_idle_is_not_counted_as_work():
    queue, clock = busy_queue(0.002)
    clock.now += 60.0  # a quiet minute
    ticket = queue.enter(1.0)
    clock.now += 0.002
    queue.leave(ticket)
    assert queue.seconds_per_unit == pytest.approx(0.002)


class Client:
    """A request's client, which hangs up when told to."""

    hung_up = False

    def gone(self) -> bool:
        return self.hung_up


def test_requests_whose_clients_hung_up_stop_counting_before_anyone_is_refused():
    queue, clock = busy_queue(0.002, max_wait_s=0.101)
    client = Client()
    for _ in range(51):  # the last one in: 50 x 2 ms = 100 ms ahead of it
        queue.enter(1.0, client)
    clock.now += 0.11
    client.hung_up = True
    queue.enter(1.0)  # admitted: the 50 ahead of it are gone
    assert queue.units == 1.0


def flood(queue: WorkerQueue, clock: Clock, clients: int = 300, answers: int = 3000) -> int:
    """Clients that send again at once after a refusal (0.5 ms of the worker each, as REFUSAL_UNITS
    says); each admitted request takes 1 ms. Returns how many are in flight at the end."""
    in_flight: list = []
    for _ in range(answers):
        for _ in range(clients - len(in_flight)):
            try:
                in_flight.append(queue.enter(1.0))
            except RetryLater:
                clock.now += 0.0005
        clock.now += 0.001
        queue.leave(in_flight.pop(0))
    return len(in_flight)


def test_a_flood_of_refused_retries_does_not_distort_the_learnt_rate(monkeypatch):
    """Refusals take the worker's time and answer nothing. Counted as the little work they are, the
    learnt time per unit stays the worker's own and the limit's worth stays admitted; counted as
    nothing, every admitted request looks many times slower than it is."""
    queue, clock = busy_queue(0.001, max_wait_s=0.1)
    assert 90 <= flood(queue, clock) <= 110  # 100 ms of 1 ms requests
    assert queue.seconds_per_unit == pytest.approx(0.001, rel=0.05)

    monkeypatch.setattr("service.admission.REFUSAL_UNITS", 0.0)
    queue, clock = busy_queue(0.001, max_wait_s=0.1)
    flood(queue, clock)
    assert queue.seconds_per_unit > 0.005


def test_the_door_answers_503_with_the_wait_in_whole_seconds_and_in_milliseconds():
    queue, clock = busy_queue(0.002, max_wait_s=0.101)
    for _ in range(51):
        queue.enter(1.0)
    clock.now += 0.11
    sent = []

    async def app(scope, receive, send):
        raise AssertionError("a refused request must not reach the app")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"0")]}
    asyncio.run(Door(app, queue, max_body_bytes=1 << 20)(scope, None, send))
    start, body = sent
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert scope[REFUSED] == 1  # the connection is left unread for up to that second (service.framework)
    assert json.loads(body["body"]) == {
        "error": "the server is busy: about 102 ms of requests are ahead of this one (limit 101 ms, "
        "SEQSERVE_MAX_QUEUE_MS); retry shortly",
        "retry_after_s": 1,
        "retry_after_ms": 102,
    }


def test_a_request_counts_as_work_only_once_its_body_is_in_so_a_slow_upload_refuses_nobody():
    # One client sending its body a byte at a time (or not at all, until the body timeout's 408) made the worker
    # look busy while it was idle: its wait counted as work, and as a request waiting past the limit.
    queue, clock = busy_queue(0.002, max_wait_s=0.1)
    door = Door(None, queue, max_body_bytes=1 << 20)
    body_in = asyncio.Event()
    answers = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body", False):
            assert queue.units == 0  # a body still arriving is no work yet
        assert queue.units == 1.0 + 100 / BYTES_PER_UNIT  # now it is, weighed by its Content-Length
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        if not body_in.is_set():
            await body_in.wait()
            return {"type": "http.request", "body": b"x" * 50, "more_body": True}
        return {"type": "http.request", "body": b"x" * 50, "more_body": False}

    async def send(message):
        answers.append(message)

    async def scenario():
        door.app = app
        scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"100")]}
        slow = asyncio.create_task(door(scope, receive, send))
        await asyncio.sleep(0)
        clock.now += 9.0  # nine seconds of a stalled upload: nothing in flight, so nothing learnt, nobody refused
        for _ in range(200):
            queue.leave(queue.enter(1.0))
        body_in.set()
        await slow

    asyncio.run(scenario())
    assert answers[0]["status"] == 200 and queue.units == 0
    assert queue.seconds_per_unit == pytest.approx(0.002)


def test_a_request_answered_unread_counts_its_fixed_cost_while_the_worker_is_busy():
    # A 401 or 415 goes through the middleware without reading its body: it never counts as work in flight, but
    # its time does count as busy time (others are in flight), so its cost goes into what the worker has done.
    queue, clock = busy_queue(0.002)
    door = Door(None, queue, max_body_bytes=1 << 20)

    async def unread(scope, receive, send):
        await send({"type": "http.response.start", "status": 401, "headers": []})

    async def send(message):
        pass

    door.app = unread
    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    busy = queue.enter(1.0)
    done = queue._units_done
    asyncio.run(door(scope, None, send))
    assert queue._units_done == done + 1.0 and queue.units == 1.0
    queue.leave(busy)
    idle_done = queue._units_done
    asyncio.run(door(scope, None, send))  # idle: no busy time counted, so no work either
    assert queue._units_done == idle_done and queue.units == 0
