"""The micro-batcher on its own: merging, order, limits and failures, without a server."""

import asyncio

import pytest

from service.batching import MicroBatcher


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
