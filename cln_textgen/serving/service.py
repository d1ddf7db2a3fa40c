"""One loaded run answering generation requests, one at a time.

The model is not safe to call from two threads, and on a CPU two decodes side
by side are no faster than one after the other, so requests queue in FIFO
order for a single worker thread.  The HTTP layer (:mod:`.app`) only parses,
waits and streams; everything a request may ask is checked here, before it
joins the queue, so a bad request never holds a slot.
"""

import concurrent.futures
import dataclasses
import threading

from cln_textgen.errors import UserError
from cln_textgen.generation.conditions import condition_name
from cln_textgen.runs.restore import checkpoint_step
from cln_textgen.serving.requests import RequestError, parse_request


@dataclasses.dataclass(frozen=True)
class Limits:
    max_n: int = 16  # texts per label in one request
    max_new_tokens: int = 256
    max_body_bytes: int = 64 * 1024
    max_queue: int = 32  # requests waiting or running; more are refused with 503

    def check(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be >= 1")
        return self


class Cancelled(Exception):
    """The client went away: the decode stops at its next token."""


class Busy(Exception):
    """The queue is full."""


class GenerationService:
    def __init__(self, generator, run_path, limits=None):
        self.generator = generator
        self.run_path = str(run_path)
        self.limits = (limits or Limits()).check()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                             thread_name_prefix="decode")
        self._pending = 0
        self._counts = {"served": 0, "cancelled": 0, "failed": 0}
        self._lock = threading.Lock()

    def describe(self):
        g = self.generator
        return {"labels": list(g.labels), "null_condition": g.null_id is not None,
                "run": self.run_path, "checkpoint": str(g.checkpoint),
                "step": checkpoint_step(g.checkpoint), "defaults": dataclasses.asdict(g.defaults),
                "limits": dataclasses.asdict(self.limits)}

    def parse(self, body):
        return parse_request(body, self.generator, self.limits)

    def submit(self, request, on_piece=None, cancelled=None):
        """Queue ``request``; a future of its result dict.

        ``on_piece(row, label, text_piece)`` streams text (``text_piece`` None
        ends a row); ``cancelled()`` is polled at every token and, when true,
        ends the decode (the future then raises :class:`Cancelled`).
        """
        with self._lock:
            if self._pending >= self.limits.max_queue:
                raise Busy(f"{self._pending} requests are queued; try again later")
            self._pending += 1
        future = self._worker.submit(self._run, request, on_piece, cancelled)
        future.add_done_callback(self._release)
        return future

    def _release(self, future):
        if future.cancelled() or isinstance(future.exception(), Cancelled):
            outcome = "cancelled"
        else:
            outcome = "failed" if future.exception() else "served"
        with self._lock:
            self._pending -= 1
            self._counts[outcome] += 1

    def counts(self):
        """Requests queued or running now, and how the others ended."""
        with self._lock:
            return {"queued": self._pending, **self._counts}

    def _run(self, request, on_piece, cancelled):
        cancelled = cancelled or (lambda: False)
        if cancelled():
            raise Cancelled
        g = self.generator
        labels = [condition_name(g.labels, c) for c in g.label_ids(request.label)
                  for _ in range(request.n)]

        def stream(row, piece):
            if cancelled():
                raise Cancelled
            if on_piece:
                on_piece(row, labels[row], piece)

        try:
            texts = g.generate(request.label, n=request.n, prompt=request.prompt,
                               stream=stream, negative_label=request.negative_label,
                               **request.options)
        except UserError as e:  # what only the decoder can tell: the prompt is too long
            raise RequestError(None, str(e)) from None
        return {"texts": [{key: t[key] for key in ("label", "text", "mix") if key in t}
                          for t in texts],
                "prompt": request.prompt,
                **g.describe(g.options(**request.options), request.n, request.negative_label),
                "run": self.run_path}

    def close(self):
        self._worker.shutdown(wait=False, cancel_futures=True)


__all__ = ["Busy", "Cancelled", "GenerationService", "Limits", "RequestError"]
