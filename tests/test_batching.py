"""The micro-batcher on its own: merging, order, limits and failures, without a server.

Nothing here reads the wall clock. The batcher times its passes and checks deadlines on its ``clock``;
tests give it a :class:`FakeClock` that a pass moves by as long as it says it took. Its waits (the
merging window, a request's deadline) are the event loop's: :func:`run_in_fake_time` runs them on a
loop whose time is the same fake clock and which, with nothing to do, jumps to its next timer.
"""

import asyncio
import selectors
import threading

import pytest

from service.batching import OFFLOAD_STEPS, ClientGone, DeadlineExceeded, MicroBatcher
from service.errors import RetryLater


class Work:
    """A batcher's work made of plain functions, as ``service.inference``'s passes offer it."""

    def __init__(self, run_batch, cost=lambda item: 1):
        self.run = run_batch
        self.cost_of = cost

    def cost(self, item) -> int:
        return self.cost_of(item)

    def run_batch(self, items):
        return self.run(items)


class Sizes(list):
    """Every batch's size, as a batcher reports them (with their steps)."""

    def observe(self, size: int, steps: int) -> None:
        self.append(size)


class HungUp:
    """A client that has hung up."""

    def gone(self) -> bool:
        return True


class FakeClock:
    """Seconds that pass only when :meth:`advance` is called."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _SkippingSelector(selectors.DefaultSelector):
    """Where the event loop would sleep until its next timer, move the clock there instead."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock

    def select(self, timeout=None):
        ready = super().select(None if timeout is None else 0)
        if not ready and timeout:
            self.clock.advance(timeout)
        return ready


class FakeTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock):
        super().__init__(_SkippingSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock()


def run_in_fake_time(clock: FakeClock, main):
    """``asyncio.run(main)`` with sleeps and timeouts on ``clock``. Passes must stay light (on the loop):
    a pass on the forward-pass thread would not hold the clock back."""
    with asyncio.Runner(loop_factory=lambda: FakeTimeLoop(clock)) as runner:
        return runner.run(main)


def make(max_batch_size=64, max_wait_ms=0.0):
    sizes = Sizes()

    def run_batch(items):
        return [item * 10 for item in items]

    return MicroBatcher(Work(run_batch), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, sizes=sizes), sizes


def test_concurrent_requests_share_a_forward_pass_and_keep_their_order():
    batcher, sizes = make()

    async def main():
        return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))

    results = asyncio.run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert sum(sizes) == 40
    assert max(sizes) > 2  # instances from different requests were merged


def test_a_lone_request_runs_at_once():
    batcher, sizes = make()
    assert asyncio.run(batcher.submit([7])) == [70]
    assert sizes == [1]


def test_batches_never_exceed_the_cap():
    batcher, sizes = make(max_batch_size=8)

    async def main():
        await asyncio.gather(*(batcher.submit([i]) for i in range(50)))

    asyncio.run(main())
    assert max(sizes) <= 8 and sum(sizes) == 50


@pytest.mark.parametrize(("max_wait_ms", "batches"), [(50, [[0, 1, 2, 3], [4]]), (0, [[0], [1], [2], [3], [4]])])
def test_a_wait_window_collects_requests_that_arrive_a_little_later(max_wait_ms, batches):
    """Requests at 0, 10, 20 and 40 ms share the pass a 50 ms window holds back; one at 70 ms gets the next."""
    clock, ran = FakeClock(), []
    batcher = MicroBatcher(Work(lambda items: ran.append(items) or items), max_wait_ms=max_wait_ms, clock=clock)

    async def at(i, seconds):
        await asyncio.sleep(seconds)
        return await batcher.submit([i])

    async def main():
        return await asyncio.gather(*(at(i, s) for i, s in enumerate([0, 0.01, 0.02, 0.04, 0.07])))

    assert run_in_fake_time(clock, main()) == [[0], [1], [2], [3], [4]]
    assert ran == batches


def test_a_failing_forward_pass_reaches_every_caller_of_that_batch():
    def run_batch(items):
        raise RuntimeError("device lost")

    batcher = MicroBatcher(Work(run_batch))

    async def main():
        return await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in results)

    async def again():
        with pytest.raises(RuntimeError):
            await batcher.submit([3])

    asyncio.run(again())  # the batcher survives a failure and keeps serving


# ---------------------------------------------------------------------------------------------- overload


def test_past_the_queue_limit_new_work_is_refused_at_once_with_a_retry_hint():
    clock = FakeClock()

    def run(items):
        clock.advance(0.001 * sum(items))  # 1 ms per step
        return items

    batcher = MicroBatcher(Work(run, cost=lambda item: item), max_queue_ms=100, clock=clock)

    async def main():
        assert await batcher.submit([100]) == [100]  # 100 steps in 100 ms: the rate is learnt
        assert batcher.seconds_per_step == pytest.approx(0.001)
        first = asyncio.ensure_future(batcher.submit([300]))  # 300 steps = ~300 ms queued
        await asyncio.sleep(0)  # queued; the drain task has not run it yet
        with pytest.raises(RetryLater) as refused:
            await batcher.submit([1])  # the 300 steps ahead are still wanted: refused
        assert refused.value.retry_after_s >= 1 and "300 ms of work is queued" in str(refused.value)
        assert (refused.value.retry_after_s, refused.value.retry_after_ms) == (1, 300)
        return await first

    assert asyncio.run(main()) == [300]


def test_nobody_waits_past_the_deadline_and_late_work_is_dropped():
    """20 requests with a 100 ms deadline, one pass of 15 ms at a time: the passes that start before the
    deadline (at 0, 15, ..., 90 ms) answer theirs; the other 13 callers hear DeadlineExceeded as soon as
    the pass running at the deadline ends, and their work never reaches the model."""
    clock, ran = FakeClock(), []

    def slow(items):
        clock.advance(0.015)
        ran.extend(items)
        return items

    batcher = MicroBatcher(Work(slow), max_batch_size=1, clock=clock)

    async def timed(i):
        try:
            return await batcher.submit([i], timeout_s=0.1)
        except DeadlineExceeded as late:
            return late, clock() - started

    async def main():
        return await asyncio.gather(*(timed(i) for i in range(20)))

    started = clock()
    results = run_in_fake_time(clock, main())
    assert results[:7] == [[i] for i in range(7)]
    assert all(isinstance(late, DeadlineExceeded) and heard == pytest.approx(0.105) for late, heard in results[7:])
    assert ran == list(range(7))  # the late ones never reached the model


def test_work_of_a_client_that_hung_up_is_dropped_before_it_runs():
    ran: list[str] = []

    def run(items):
        ran.extend(items)
        return items

    batcher = MicroBatcher(Work(run))

    async def main():
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        abandoned = asyncio.ensure_future(batcher.submit(["abandoned"], client=HungUp()))
        await kept
        with pytest.raises(ClientGone):
            await abandoned  # at once, not at the deadline

    asyncio.run(main())
    assert ran == ["kept"]


def test_heavy_batches_leave_the_event_loop_and_light_ones_do_not():
    threads: list[str] = []

    def run(items):
        threads.append(threading.current_thread().name)
        return items

    batcher = MicroBatcher(Work(run, cost=len))
    asyncio.run(batcher.submit(["x" * 10]))
    asyncio.run(batcher.submit(["x" * (OFFLOAD_STEPS + 1)]))
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("seqserve-forward")


def test_abandoned_work_in_the_queue_never_causes_a_503():
    clock = FakeClock()

    def run(items):
        clock.advance(0.001 * sum(items))  # 1 ms per step
        return items

    batcher = MicroBatcher(Work(run, cost=lambda item: item), max_queue_ms=100, clock=clock)

    async def main():
        await batcher.submit([100])  # the rate is learnt: 1 ms per step
        ghost = asyncio.ensure_future(batcher.submit([300], client=HungUp()))
        await asyncio.sleep(0)
        answer = await batcher.submit([1])  # admitted: the ghost's 300 steps are purged first
        with pytest.raises(ClientGone):
            await ghost
        return answer

    assert asyncio.run(main()) == [1]


def test_a_lone_callers_light_work_runs_in_its_own_task_and_never_jumps_the_queue():
    tasks: list[object] = []

    def run(items):
        tasks.append(asyncio.current_task())
        return items

    batcher = MicroBatcher(Work(run))

    async def main():
        assert await batcher.submit(["now"], alone=True) == ["now"]
        ran_here = tasks[-1] is asyncio.current_task()
        # With work queued, `alone` changes nothing: it waits its turn in the drain task.
        queued = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0)
        second = await batcher.submit(["second"], alone=True)
        return ran_here, await queued, second

    ran_here, first, second = asyncio.run(main())
    assert ran_here
    assert (first, second) == (["first"], ["second"])
    assert all(task is not tasks[0] for task in tasks[1:])  # both went through the drain task


def test_the_learnt_cost_weighs_each_batch_by_its_steps_so_lone_steps_do_not_push_full_passes_off_the_loop():
    """A pass has a fixed cost: here 64 streams' steps take 2 ms together and one alone 0.4 ms. A few lone
    steps must not make the next full pass look long enough to leave the event loop (see MicroBatcher._learn)."""
    clock, pass_s = FakeClock(), [0.0]

    def run(items):
        clock.advance(pass_s[0])
        return items

    batcher = MicroBatcher(Work(run), clock=clock)

    def ran(steps: int, seconds: float) -> None:
        pass_s[0] = seconds
        asyncio.run(batcher.submit([0] * steps))  # cost: 1 step per item

    for _ in range(20):
        ran(64, 0.002)
    assert batcher.seconds_per_step == pytest.approx(0.002 / 64, rel=1e-9)
    for _ in range(6):
        ran(1, 0.0004)
    assert batcher.seconds_per_step < 2 * 0.002 / 64
    assert batcher._light([0] * 64)  # the next full pass still runs on the event loop
    for _ in range(30):
        ran(1, 0.0004)  # lone steps only, for a while: the estimate becomes theirs
    assert batcher.seconds_per_step == pytest.approx(0.0004, rel=0.05)
