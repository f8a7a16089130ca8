"""Server-side batching, like TF Serving's `--enable_batching`: concurrent requests to the same
(model, version, signature) are concatenated along dim 0, run once, and the outputs split.

A queue per key and input shape collects requests (only requests whose inputs agree on
dtype and on every dimension but the first can be concatenated; the others are batched
separately); a batch runs when its queue holds `max_batch_size` rows or its oldest request
has waited `batch_timeout`. A request of `max_batch_size` rows or more runs alone. If a
merged run fails, each request is run alone, so that one bad request fails by itself.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Tuple

import numpy as np

Arrays = Dict[str, np.ndarray]
Function = Callable[[Arrays], Arrays]


class _Task:
    def __init__(self, inputs: Arrays):
        self.inputs = inputs
        self.rows = len(next(iter(inputs.values())))
        # Requests merge only when every input agrees on dtype and trailing dims.
        self.shape_key = tuple(sorted((name, array.dtype.str, array.shape[1:])
                                      for name, array in inputs.items()))
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None


class BatchScheduler:
    def __init__(self, max_batch_size: int, batch_timeout_s: float, num_threads: int = 2,
                 on_batch: Optional[Callable[[Any, int, int], None]] = None):
        """on_batch(key, requests, rows) is called for every merged run (for metrics); key
        is the one given to run()."""
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_s
        self.on_batch = on_batch
        self._queues: Dict[Hashable, Tuple[Function, Deque[_Task]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(max(1, num_threads))]
        for thread in self._threads:
            thread.start()

    def run(self, key: Hashable, function: Function, inputs: Arrays) -> Arrays:
        """function(inputs), possibly merged with other callers' inputs for the same key.
        All inputs have the same dim 0 (validated before)."""
        task = _Task(inputs)
        with self._cond:
            queued = task.rows < self.max_batch_size and not self._closed
            if queued:
                queue = self._queues.setdefault((key, task.shape_key),
                                                (function, collections.deque()))
                queue[1].append(task)
                self._cond.notify()
        if not queued:
            return function(inputs)
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None  # set by _execute when there was no error
        return task.outputs

    def pending(self) -> int:
        """Requests waiting in a queue."""
        with self._cond:
            return sum(len(queue) for _, queue in self._queues.values())

    def close(self):
        """Runs what is queued at once (no more waiting to fill), then stops the threads;
        later requests run unbatched."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _work(self):
        while True:
            with self._cond:
                key = self._ready()
                while key is None:
                    if self._closed:
                        return
                    self._cond.wait(self._until_due())
                    key = self._ready()
                function, tasks = self._take(key)
            self._execute(key[0], function, tasks)

    def _ready(self) -> Optional[Hashable]:
        now = time.monotonic()
        for key, (_, queue) in self._queues.items():
            if (self._closed or now - queue[0].enqueued >= self.timeout
                    or sum(t.rows for t in queue) >= self.max_batch_size):
                return key
        return None

    def _until_due(self) -> Optional[float]:
        if not self._queues:
            return None
        oldest = min(queue[0].enqueued for _, queue in self._queues.values())
        return max(0.0, oldest + self.timeout - time.monotonic())

    def _take(self, key) -> Tuple[Function, List[_Task]]:
        """The oldest requests of a queue, up to max_batch_size rows (at least one)."""
        function, queue = self._queues[key]
        taken: List[_Task] = []
        rows = 0
        while queue and (not taken or rows + queue[0].rows <= self.max_batch_size):
            taken.append(queue.popleft())
            rows += taken[-1].rows
        if not queue:
            del self._queues[key]
        return function, taken

    def _execute(self, key, function: Function, tasks: List[_Task]):
        try:
            if len(tasks) > 1 and self._merged(function, tasks):
                if self.on_batch:
                    self.on_batch(key, len(tasks), sum(t.rows for t in tasks))
                return
            for task in tasks:
                try:
                    task.outputs = function(task.inputs)
                except Exception as error:  # handed to the caller, who maps it
                    task.error = error
            if self.on_batch:
                for task in tasks:
                    self.on_batch(key, 1, task.rows)
        finally:
            for task in tasks:
                task.done.set()

    @staticmethod
    def _merged(function: Function, tasks: List[_Task]) -> bool:
        """Runs the tasks as one batch and splits the outputs; False if that did not work."""
        merged = {name: np.concatenate([t.inputs[name] for t in tasks])
                  for name in tasks[0].inputs}
        rows = sum(t.rows for t in tasks)
        try:
            outputs = function(merged)
        except Exception:
            return False
        if any(np.ndim(v) == 0 or len(v) != rows for v in outputs.values()):
            return False  # an output without the batch dimension cannot be split
        start = 0
        for task in tasks:
            task.outputs = {name: v[start:start + task.rows] for name, v in outputs.items()}
            start += task.rows
        return True
