"""The micro-batcher on its own: merging, order, limits and failures, without a server."""

import asyncio
import threading
import time

import pytest

from service.batching import OFFLOAD_STEPS, ClientGone, DeadlineExceeded, MicroBatcher, Overloaded


def make(max_batch_size=64, max_wait_ms=0.0):
    sizes: list[int] = []

    def run_batch(items):
        return [item * 10 for item in items]

    return MicroBatcher(run_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, on_batch=sizes.append), sizes


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


def test_a_wait_window_collects_requests_that_arrive_a_little_later():
    batcher, sizes = make(max_wait_ms=50)

    async def late(i):
        await asyncio.sleep(0.005 * i)
        return await batcher.submit([i])

    async def main():
        await asyncio.gather(*(late(i) for i in range(5)))

    asyncio.run(main())
    assert sum(sizes) == 5 and len(sizes) < 5  # merged, though a busy machine may split them differently


def test_a_failing_forward_pass_reaches_every_caller_of_that_batch():
    def run_batch(items):
        raise RuntimeError("device lost")

    batcher = MicroBatcher(run_batch)

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
    batcher = MicroBatcher(lambda items: items, cost=lambda item: item, max_queue_ms=100)
    batcher.seconds_per_step = 0.001  # as if learnt: 1 ms per step

    async def main():
        first = asyncio.ensure_future(batcher.submit([300]))  # 300 steps = ~300 ms queued
        await asyncio.sleep(0)  # queued; the drain task has not run it yet
        with pytest.raises(Overloaded) as refused:
            await batcher.submit([1])  # the 300 steps ahead are still wanted: refused
        assert refused.value.retry_after_s >= 1 and "300 ms of work is queued" in str(refused.value)
        assert (refused.value.retry_after_s, refused.value.retry_after_ms) == (1, 300)
        return await first

    assert asyncio.run(main()) == [300]


def test_nobody_waits_past_the_deadline_and_late_work_is_dropped():
    ran: list[int] = []

    def slow(items):
        time.sleep(0.03)
        ran.extend(items)
        return items

    batcher = MicroBatcher(slow, max_batch_size=1)

    async def main():
        started = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit([i], timeout_s=0.1) for i in range(20)), return_exceptions=True)
        return results, time.perf_counter() - started

    results, elapsed = asyncio.run(main())
    answered = [r for r in results if not isinstance(r, Exception)]
    late = [r for r in results if isinstance(r, DeadlineExceeded)]
    assert answered and late and len(answered) + len(late) == 20
    assert len(ran) < 20  # the late ones never reached the model


def test_work_of_a_client_that_hung_up_is_dropped_before_it_runs():
    ran: list[str] = []

    def run(items):
        ran.extend(items)
        return items

    batcher = MicroBatcher(run)

    def gone() -> bool:
        return True

    async def main():
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        abandoned = asyncio.ensure_future(batcher.submit(["abandoned"], client_gone=gone))
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

    batcher = MicroBatcher(run, cost=len)
    asyncio.run(batcher.submit(["x" * 10]))
    asyncio.run(batcher.submit(["x" * (OFFLOAD_STEPS + 1)]))
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("seqserve-forward")


def test_abandoned_work_in_the_queue_never_causes_a_503():
    batcher = MicroBatcher(lambda items: items, cost=lambda item: item, max_queue_ms=100)
    batcher.seconds_per_step = 0.001

    def gone() -> bool:
        return True

    async def main():
        ghost = asyncio.ensure_future(batcher.submit([300], client_gone=gone))
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

    batcher = MicroBatcher(run)

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
    batcher = MicroBatcher(lambda items: items)

    def ran(steps: int, seconds: float) -> None:
        batcher._learn(time.perf_counter() - seconds, [0] * steps)  # cost: 1 step per item

    for _ in range(20):
        ran(64, 0.002)
    assert batcher.seconds_per_step == pytest.approx(0.002 / 64, rel=0.05)
    for _ in range(6):
        ran(1, 0.0004)
    assert batcher.seconds_per_step < 2 * 0.002 / 64
    assert batcher._light([0] * 64)  # the next full pass still runs on the event loop
    for _ in range(30):
        ran(1, 0.0004)  # lone steps only, for a while: the estimate becomes theirs
    assert batcher.seconds_per_step == pytest.approx(0.0004, rel=0.05)
