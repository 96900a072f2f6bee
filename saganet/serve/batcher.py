"""Dynamic batching, in the spirit of Triton's: tile requests from concurrent clients are
coalesced into batches of at most `max_batch` tiles, waiting at most `max_delay` for company (only
while requests are arriving concurrently); the network runs off the event loop, one batch at a
time, and each caller gets its own rows back.

- A request of more than `max_batch` tiles is split into parts that are batched like requests.
- The queue is bounded in tiles: when it is full, `submit` raises QueueFull at once (the app answers
  503 with Retry-After) instead of letting memory grow; a request larger than the whole queue can
  never fit and raises TooLarge (413).
- When a batch fails, each of its requests is run alone, so only the ones whose tiles fail get the
  error (as Triton's batcher does).
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    pass


class TooLarge(Exception):
    pass


@dataclass
class _Request:
    tiles: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    def __init__(self, engine, max_batch: int, max_delay_s: float, max_queue_tiles: int, lock: threading.Lock,
                 on_batch=None):
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay_s
        self.max_queue, self.lock, self.on_batch = max_queue_tiles, lock, on_batch
        self.queued_tiles = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._held: _Request | None = None  # taken from the queue but too big for the batch it came to
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="saganet-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued (for at most `timeout` seconds), then stop."""
        deadline = time.monotonic() + timeout
        while self.queued_tiles and time.monotonic() < deadline and self._task and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self._pool.shutdown(wait=True)

    async def submit(self, tiles: np.ndarray):
        """(probs, lengths or None, valid_fraction) of `tiles`, in order."""
        n = len(tiles)
        if n > self.max_queue:
            raise TooLarge(f"{n} tiles in one request; at most {self.max_queue} can ever be queued")
        if self.queued_tiles + n > self.max_queue:
            raise QueueFull(f"{self.queued_tiles} tiles are queued; the limit is {self.max_queue}")
        self.queued_tiles += n
        loop = asyncio.get_running_loop()
        parts = [_Request(tiles[s:s + self.max_batch], loop.create_future()) for s in range(0, n, self.max_batch)]
        for part in parts:
            self._queue.put_nowait(part)
        results = await asyncio.gather(*(p.future for p in parts))
        if len(results) == 1:
            return results[0]
        probs, lengths, valid = zip(*results)
        return np.concatenate(probs), None if lengths[0] is None else np.concatenate(lengths), np.concatenate(valid)

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            r, self._held = self._held, None
            return r
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        concurrent = False  # did the last batch gather more than one request?
        while True:
            batch = [await self._next(None)]
            size = len(batch[0].tiles)
            # Take what is already waiting; wait up to max_delay for more only under concurrent
            # load: a lone client would pay the delay on every request for nothing.
            deadline = time.monotonic() + (self.max_delay if concurrent else 0.0)
            while size < self.max_batch:
                nxt = await self._next(deadline - time.monotonic())
                if nxt is None:
                    break
                if size + len(nxt.tiles) > self.max_batch:
                    self._held = nxt  # it opens the next batch
                    break
                batch.append(nxt)
                size += len(nxt.tiles)
            concurrent = len(batch) > 1
            try:
                await self._run(loop, batch)
            finally:
                self.queued_tiles -= size
            if self.on_batch:
                self.on_batch(size)

    async def _run(self, loop, batch: list[_Request]) -> None:
        tiles = np.concatenate([r.tiles for r in batch]) if len(batch) > 1 else batch[0].tiles
        try:
            pred = await loop.run_in_executor(self._pool, self._classify, tiles)
        except Exception as e:
            if len(batch) > 1:  # find the request(s) that fail; the others get their answers
                for r in batch:
                    await self._run(loop, [r])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        start = 0
        for r in batch:
            n = len(r.tiles)
            if not r.future.done():  # a caller that timed out is gone
                r.future.set_result((pred.probs[start:start + n], None if pred.lengths is None
                                     else pred.lengths[start:start + n], pred.valid_fraction[start:start + n]))
            start += n

    def _classify(self, tiles):
        image, mask = self.engine.preprocess(tiles)
        with self.lock:  # slide jobs share the engine; one network call at a time
            return self.engine.run(image, mask)
