"""The dynamic batcher in process, over a stand-in engine that records every batch: it never exceeds
max_batch, splits large requests, answers 413 for a request that can never fit, and a request whose
tiles fail does not fail the others of its batch."""
import asyncio
import threading

import numpy as np
import pytest

from saganet.engine.base import Prediction
from saganet.serve.batcher import DynamicBatcher, QueueFull, TooLarge

POISON = 255  # a tile whose first pixel is this fails, as a tile the engine refuses would


class RecordingEngine:
    def __init__(self):
        self.batches = []

    def preprocess(self, tiles):
        if (tiles[:, 0, 0, 0] == POISON).any():
            raise ValueError("a poisoned tile")
        return tiles.astype(np.float32), np.ones((len(tiles), 1, 2, 2), np.float32)

    def run(self, image, mask):
        self.batches.append(len(image))
        ids = image[:, 0, 0, 0]  # each tile carries its id: the answer must come back to its own caller
        return Prediction(np.stack([ids, -ids], 1), None, ids / 1000.0)


def _tiles(ids):
    t = np.zeros((len(ids), 2, 2, 3), np.uint8)
    t[:, 0, 0, 0] = ids
    return t


def _run(coro_factory, max_batch=8, max_queue=64, delay=0.02):
    engine = RecordingEngine()

    async def main():
        b = DynamicBatcher(engine, max_batch, delay, max_queue, threading.Lock())
        b.start()
        try:
            return await coro_factory(b)
        finally:
            await b.close()

    return asyncio.run(main()), engine


def test_batches_never_exceed_max_batch_and_answers_go_back_to_their_callers():
    sizes = [3, 5, 7, 2, 8, 1, 6, 4, 20]  # 20 > max_batch: split into parts

    async def clients(b):
        starts = np.cumsum([0] + sizes[:-1])
        return await asyncio.gather(*(b.submit(_tiles(range(s, s + n))) for s, n in zip(starts, sizes)))

    results, engine = _run(clients)
    assert max(engine.batches) <= 8 and sum(engine.batches) == sum(sizes)
    start = 0
    for n, (probs, lengths, valid) in zip(sizes, results):
        assert probs[:, 0].tolist() == list(range(start, start + n)) and lengths is None
        start += n


def test_a_request_larger_than_the_queue_is_413_not_retry():
    async def client(b):
        with pytest.raises(TooLarge):
            await b.submit(_tiles(range(65)))
        b.queued_tiles = 60  # a full queue is a reason to retry
        with pytest.raises(QueueFull):
            await b.submit(_tiles(range(10)))
        b.queued_tiles = 0
        return True

    assert _run(client)[0]


def test_a_failing_request_does_not_fail_the_others_of_its_batch():
    async def clients(b):
        good = [b.submit(_tiles([i + 1, i + 2])) for i in range(0, 12, 4)]
        bad = b.submit(_tiles([POISON, 7]))
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results, engine = _run(clients, max_batch=16, delay=0.05)
    *good, bad = results
    assert isinstance(bad, ValueError)
    assert [r[0][:, 0].tolist() for r in good] == [[1, 2], [5, 6], [9, 10]]
