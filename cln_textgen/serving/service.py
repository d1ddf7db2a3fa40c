"""One loaded run answering generation requests, many at a time.

Every request is checked here before it waits (a bad one never holds a
place), then becomes a :class:`~cln_textgen.serving.batcher.Job` of the
decode worker, which batches the rows of every request waiting with those
already decoding (:mod:`.batcher`).  The HTTP layer (:mod:`.app`) only
parses, waits and streams.
"""

import dataclasses
import threading

from cln_textgen.errors import UserError
from cln_textgen.generation.conditions import condition_name
from cln_textgen.generation.generate import TextStream, generations, sampled_rows
from cln_textgen.runs.restore import checkpoint_step
from cln_textgen.serving.batcher import Batcher, Cancelled, Job
from cln_textgen.serving.requests import Limits, RequestError, parse_request


class Busy(Exception):
    """The queue is full."""


class GenerationService:
    def __init__(self, generator, run_path, limits=None):
        self.generator = generator
        self.run_path = str(run_path)
        self.limits = (limits or Limits()).check()
        engine = generator.decoding.engine(generator.tokenizer)
        self._batcher = Batcher(engine, max_rows=self.limits.max_batch_rows)
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
        ends a row); ``cancelled()`` is polled at every step and, when true,
        ends the request's decoding (the future then raises :class:`Cancelled`).
        """
        job = self._job(request, on_piece, cancelled or (lambda: False))
        with self._lock:
            if self._pending >= self.limits.max_queue:
                raise Busy(f"{self._pending} requests are queued; try again later")
            self._pending += 1
        job.future.add_done_callback(self._release)
        return self._batcher.submit(job)

    def _job(self, request, on_piece, cancelled):
        """The batcher's job for a parsed request: checked here, before it waits."""
        g = self.generator
        try:
            call = g.prepare(request.label, request.n, request.prompt, request.negative_label,
                             **request.options)
            prompt_ids = g.tokenizer.encode_prompt(request.prompt)
            g.decoding.decoder.check_positions(len(prompt_ids), call.options.max_new_tokens)
        except UserError as e:  # what only the model can tell: the prompt is too long
            raise RequestError(None, str(e)) from None
        names = [condition_name(g.labels, c) for c in call.conditions for _ in range(call.n)]

        def stream(row, piece):
            if cancelled():
                raise Cancelled
            if on_piece:
                on_piece(row, names[row], piece)

        if call.options.num_beams > 1:  # beams decode on their own
            def alone():
                texts = g.generate(request.label, n=call.n, prompt=request.prompt,
                                   stream=stream, negative_label=request.negative_label,
                                   **request.options)
                return self._answer(call, texts)

            return Job([], None, cancelled=cancelled, alone=alone)
        encoded = [prompt_ids] * len(call.conditions)
        rows = sampled_rows(call.conditions, encoded, call.n, call.options, call.contrast)
        texts = [request.prompt] * len(call.conditions)

        def finish(ids):
            out = generations(g.tokenizer, call.conditions, texts, encoded, call.n, ids)
            return self._answer(call, [g.result(x, call) for x in out])

        on_token = None
        if on_piece:
            on_token = TextStream(g.tokenizer, [prompt_ids] * len(rows), stream)
        return Job(rows, finish, on_token, cancelled)

    def _answer(self, call, texts):
        g = self.generator
        return {"texts": [{key: t[key] for key in ("label", "text", "mix") if key in t}
                          for t in texts],
                "prompt": call.prompt,
                **g.describe(call.options, call.n, call.negative_label),
                "run": self.run_path}

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

    def batch_counts(self):
        """Decoding steps run so far, and the most rows one of them decoded."""
        return {"steps": self._batcher.steps, "largest": self._batcher.largest}

    def close(self):
        self._batcher.close()


__all__ = ["Busy", "Cancelled", "GenerationService", "Limits", "RequestError"]
