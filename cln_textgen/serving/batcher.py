"""Continuous batching: every request waiting joins the running decode.

One worker thread owns the model and runs the one decoding loop
(:func:`cln_textgen.generation.engine.loop`) over a batch of rows from many
requests.  Between two steps it streams each request's new text, hands a
request its result as soon as its last row is done, drops the rows of
requests whose client left, and lets waiting requests join (their prompts run
once, then their rows step with the others).  Each row keeps its own
options, seed and stopping point, so a request's texts do not depend on what
else was in the batch.  The batch is rebuilt (:func:`~cln_textgen.generation.regroup.regroup`)
only when rows join or most of it is done, at a power-of-two number of rows,
so few shapes are compiled.

Beam search keeps whole groups of rows in step, so a beam request decodes on
its own, between two steps of the running batch.
"""

import collections
import concurrent.futures
import threading

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.generation.generate import TextStream, token_events
from cln_textgen.generation.regroup import needed, regroup


class Cancelled(Exception):
    """The client went away: the request's rows leave the batch."""


class Job:
    """One request's rows, their stream, and where its result goes.

    ``rows``: the engine's rows (:class:`~cln_textgen.generation.engine.Row`),
    in result order; ``finish(ids)`` turns the new ids of every row into the
    result; ``on_token(row, id)`` streams (``None`` ends a row);
    ``cancelled()`` says whether the client left.  ``alone``: a callable that
    decodes the request by itself (beam search) instead.
    """

    def __init__(self, rows, finish, on_token=None, cancelled=None, alone=None):
        self.rows, self.finish, self.on_token = rows, finish, on_token
        self.cancelled = cancelled or (lambda: False)
        self.alone = alone
        self.future = concurrent.futures.Future()
        self.ids = [None] * len(rows)
        self.width = len(rows) + sum(row.contrast is not None for row in rows)  # model rows

    def complete(self, error=None):
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            return
        try:
            self.future.set_result(self.finish(self.ids))
        except Exception as e:  # noqa: BLE001 - the request fails, the worker goes on
            self.future.set_exception(e)


class Batcher:
    """Decodes submitted :class:`Job`\\ s on ``engine``, at most ``max_rows``
    model rows at once (a job larger than that runs with nothing beside it)."""

    def __init__(self, engine, max_rows=64):
        self.engine, self.max_rows = engine, max_rows
        self._waiting = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._owners = []  # per text of the batch: (job, index), or None for a filler
        self.steps = 0  # decoding steps run, and the most rows decoded in one
        self.largest = 0
        self._thread = threading.Thread(target=self._work, name="decode", daemon=True)
        self._thread.start()

    def submit(self, job):
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(job)
            self._wake.notify()
        return job.future

    def close(self):
        with self._wake:
            self._closed = True
            self._wake.notify()

    # ------------------------------------------------------------ the worker

    def _work(self):
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    break
            try:
                state = self._between(None)
                if state is not None:
                    self.engine.run(state, on_step=self._between)
            except Exception as e:  # noqa: BLE001 - fail those running, keep serving
                for job in self._running():
                    job.complete(e)
                self._owners = []
        for job in self._running() + list(self._waiting):
            job.complete(Cancelled())

    def _running(self):
        return list({id(o[0]): o[0] for o in self._owners if o is not None}.values())

    def _between(self, state):
        """After a step (or before the first): stream, finish, drop, admit."""
        if state is not None:
            self.steps += 1
            self.largest = max(self.largest, len(self._live_texts(state)))
            self._stream(state)
            state = self._drop_cancelled(state)
        self._finish_done(state)
        alone = self._take_alone()
        for job in alone:
            self._decode_alone(job)
        joining = self._take_joining(state)
        if joining:
            return self._admit(state, joining)
        if state is not None:
            live = self._live_texts(state)
            if live and len(live) <= len(self._owners) // 4:
                return self._rebuild([self._kept(state)])
        return state

    def _stream(self, state):
        done = state.done.numpy()
        for row, token in token_events(state, self.engine.context.stop_id, len(self._owners)):
            owner = self._owners[row]
            if owner is None:
                continue
            job, index = owner
            if token is None and done[row] and job.ids[index] is None:
                job.ids[index] = self._new_ids(state, row)
            if job.on_token is not None and not job.future.done():
                try:
                    job.on_token(index, token)
                except Cancelled:
                    pass  # seen as cancelled below

    def _new_ids(self, state, row):
        start, length = int(state.prompt_length[row]), int(state.length[row])
        ids = state.history[row, start:length].numpy().tolist()
        return ids[:-1] if ids and ids[-1] == self.engine.context.stop_id else ids

    def _drop_cancelled(self, state):
        gone = [job for job in self._running() if job.cancelled()]
        if not gone:
            return state
        rows = [r for r, o in enumerate(self._owners) if o is not None and o[0] in gone]
        rows += state.partner.numpy()[rows].tolist()
        for job in gone:
            job.complete(Cancelled())
        return state._replace(done=tf.tensor_scatter_nd_update(
            state.done, np.array(rows, np.int32)[:, None], tf.ones(len(rows), tf.bool)))

    def _finish_done(self, state):
        for job in self._running():
            if all(ids is not None for ids in job.ids):
                job.complete()
        self._owners = [o if o is not None and not o[0].future.done() else None
                        for o in self._owners]

    def _take_alone(self):
        with self._wake:
            alone = [job for job in self._waiting if job.alone is not None]
            for job in alone:
                self._waiting.remove(job)
        return alone

    @staticmethod
    def _decode_alone(job):
        if job.cancelled():
            job.complete(Cancelled())
            return
        try:
            job.future.set_result(job.alone())
        except Exception as e:  # noqa: BLE001 - the request fails, the worker goes on
            job.future.set_exception(e)

    def _take_joining(self, state):
        """Waiting jobs that fit beside the live rows (the first always does)."""
        live = 0 if state is None else int(np.count_nonzero(~state.done.numpy()))  # all rows
        taken = []
        with self._wake:
            while self._waiting and (not taken and live == 0
                                     or live + self._waiting[0].width <= self.max_rows):
                job = self._waiting.popleft()
                if job.cancelled():
                    job.complete(Cancelled())
                    continue
                taken.append(job)
                live += job.width
        return taken

    @staticmethod
    def _live_texts(state):
        return np.flatnonzero(~state.done.numpy()[:int(state.texts)]).tolist()

    def _kept(self, state):
        """The live texts of ``state`` and their owners."""
        live = self._live_texts(state)
        return state, live, [self._owners[r] for r in live]

    def _admit(self, state, jobs):
        """The batch of the live rows of ``state`` and the rows of ``jobs``."""
        rows = [row for job in jobs for row in job.rows]
        try:
            new = self.engine.start(rows)
        except Exception as e:  # noqa: BLE001 - these requests fail, the batch goes on
            for job in jobs:
                job.complete(e)
            return state
        owners = [(job, i) for job in jobs for i in range(len(job.rows))]
        parts = [] if state is None else [self._kept(state)]
        return self._rebuild(parts + [(new, list(range(len(owners))), owners)])

    def _rebuild(self, parts):
        """One batch of ``(state, rows, owners)`` parts, at a row bucket."""
        parts = [part for part in parts if part[1]]
        most = max(needed(state, index) for state, index, _ in parts)
        size = sum(len(index) for _, index, _ in parts)
        state = regroup([(s, i) for s, i, _ in parts], most, max(self.max_rows, size))
        owners = [owner for _, _, owned in parts for owner in owned]
        self._owners = owners + [None] * (int(state.texts) - len(owners))
        return state
