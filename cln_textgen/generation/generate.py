"""The generate call: texts for conditions, on the one decoding loop.

:func:`generate` is what the trainer's samples, the CLI and the Python API
call: it encodes the prompts, cuts the rows into batches of at most
``batch_size`` and runs each on the model's :class:`~cln_textgen.generation.engine.Engine`
(or its beam search), then turns the new ids into text.  Each row draws from
its own seed (the call's seed and the row's index), so the batching bounds
memory without changing a single text.
"""

import dataclasses

import numpy as np

from cln_textgen.errors import UserError
from cln_textgen.generation.beams import BeamSearch
from cln_textgen.generation.decoder import CachedDecoder, row_bucket
from cln_textgen.generation.engine import Engine, Row, loop
from cln_textgen.options import GenerationOptions, check_n

__all__ = ["GenerationOptions", "Generation", "Decoding", "generate"]


@dataclasses.dataclass
class Generation:
    label_id: object  # the condition: a label id, or a mix ((id, weight), ...)
    prompt: str
    text: str  # the prompt exactly as given, then the continuation
    token_ids: list  # generated ids, without the prompt and without [SEP]


class Decoding:
    """A model's decoding engine, owned by one generator (or trainer).

    The engine compiles on first use; keeping it here lets later calls reuse
    that work, and keeping it per owner (not per process) means one owner's
    calls never change what another's produce.
    """

    def __init__(self, model, jit_compile=True):
        self.model = model
        self.jit_compile = jit_compile
        self.decoder = CachedDecoder(model)
        self._engine = None

    def engine(self, tokenizer):
        """The engine for ``tokenizer``'s end of text and special tokens."""
        banned = tuple(i for i in tokenizer.special_ids if i != tokenizer.sep_id)
        key = (tokenizer.sep_id, banned)
        if self._engine is None or self._engine[0] != key:
            engine = Engine(self.decoder, tokenizer.sep_id, banned, jit_compile=self.jit_compile)
            self._engine = (key, engine, BeamSearch(engine))
        return self._engine[1]

    def beam_search(self, tokenizer):
        """Beam search on :meth:`engine` (made once: it keeps its compiled step)."""
        self.engine(tokenizer)
        return self._engine[2]


def continuation(tokenizer, prefix, ids):
    """The text ``ids`` add after the prompt ids ``prefix``: the decoded whole
    minus the decoded prompt, so spacing across the seam stays right."""
    whole, head = tokenizer.decode(prefix + ids), tokenizer.decode(prefix)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(ids)


class TextStream:
    """Turns ``(row, id)`` calls into ``stream(row, text_piece)`` calls.

    Pieces are the growth of the decoded text.  The tokenizer's clean-up
    (spaces around punctuation, ``it ' s`` -> ``it's``) can still change the
    last two tokens' text, so those are held back until more tokens or the
    end (``id`` None) arrive; the pieces of a row then join to its final
    ``text``.
    """

    _HOLD = 2

    def __init__(self, tokenizer, prefixes, stream):
        self.tokenizer, self.prefixes, self.stream = tokenizer, list(prefixes), stream
        self.ids = [[] for _ in prefixes]
        self.shown = [tokenizer.decode(prefix) for prefix in prefixes]

    def __call__(self, row, token):
        ids = self.ids[row]
        if token is not None:
            ids.append(token)
            ids = ids[:-self._HOLD]
        text = self.tokenizer.decode(self.prefixes[row] + ids)
        shown = self.shown[row]
        if text.startswith(shown) and len(text) > len(shown):
            self.stream(row, text[len(shown):])
            self.shown[row] = text
        if token is None:
            self.stream(row, None)


def token_events(state, stop_id, rows):
    """``(row, id)`` events of the last step for main rows ``0 .. rows-1``:
    the new token (unless it ends the text), then ``(row, None)`` for a row
    that ended."""
    last, done = state.last.numpy(), state.done.numpy()
    events = []
    for row in np.flatnonzero(last[:rows] >= 0).tolist():
        if last[row] != stop_id:
            events.append((row, int(last[row])))
        if done[row]:
            events.append((row, None))
    return events


def generate(model, tokenizer, label_ids, n=1, prompt="", options=None, *, prompts=None,
             stream=None, decoding=None, contrast=None):
    """``n`` generations for each label id; same seed and options -> same texts,
    whatever ``options.batch_size`` (a step compiled by XLA draws the same
    random numbers as a plain one; its logits differ only by rounding).

    ``prompts``, if given, holds one prompt text per label id (rows of
    different prompt lengths decode together); otherwise ``prompt`` starts
    every row.  Results come label by label, ``n`` per label, in the order of
    ``label_ids``; a result's ``text`` is its prompt exactly as given, then
    the continuation (characters the vocabulary lacks are kept in the prompt).

    Streaming: ``stream(row, text_piece)`` is called as text is produced, where
    ``row`` is the index of the generation in the returned list and a row's
    pieces join to its continuation (the prompt is not repeated), and
    ``stream(row, None)`` follows a row's last piece.  Sampling rows stream
    token by token; beam search streams each result once it is final.

    ``decoding``: the :class:`Decoding` of ``model`` to use (its compiled
    steps are reused); by default a new one, compiled with XLA.

    A label id may also be a mix of labels, ``((id, weight), ...)``: the row
    is conditioned on the weighted sum of their embeddings.  With
    ``options.guidance`` other than 1, ``contrast`` is the condition guidance
    pushes away from (the null condition's id, or another label's); each text
    then takes two rows of the batch.
    """
    options = options or GenerationOptions()
    label_ids = list(label_ids)
    if not label_ids:
        return []
    texts = [prompt] * len(label_ids) if prompts is None else list(prompts)
    if len(texts) != len(label_ids):
        raise UserError(f"{len(texts)} prompts for {len(label_ids)} labels; give one per label")
    problem = check_n(n, options, repeats=True)  # the surfaces refuse greedy repeats
    if problem:
        raise UserError(problem)
    if options.guidance != 1.0 and contrast is None:
        raise ValueError(f"guidance {options.guidance} needs a contrast condition")
    guide_from = contrast if options.guidance != 1.0 else None
    decoding = decoding or Decoding(model)
    engine = decoding.engine(tokenizer)
    encoded = [tokenizer.encode_prompt(text) for text in texts]
    row_prefixes = [ids for ids in encoded for _ in range(n)]
    text_stream = TextStream(tokenizer, row_prefixes, stream) if stream else None
    if options.num_beams > 1:
        generated = _beams(decoding.beam_search(tokenizer), label_ids, encoded, n, options,
                           guide_from, text_stream)
    else:
        generated = _sample(engine, label_ids, encoded, n, options, guide_from, text_stream)
    return generations(tokenizer, label_ids, texts, encoded, n, generated)


def generations(tokenizer, label_ids, texts, encoded, n, generated):
    """:class:`Generation`\ s of ``n`` texts per label id (prompt ``texts``,
    prompt ids ``encoded``) from the new ids of each, in result order."""
    rows = [(label, text, ids) for label, text, ids in zip(label_ids, texts, encoded)
            for _ in range(n)]
    return [Generation(label, text, text + continuation(tokenizer, prefix, ids), ids)
            for (label, text, prefix), ids in zip(rows, generated)]


def sampled_rows(label_ids, encoded, n, options, contrast=None):
    """The engine's rows of a sampling call: ``n`` per label id (prompt ids
    ``encoded``, one per label id), numbered in result order (their seeds);
    ``contrast``: what guidance pushes away from (``None``: unguided)."""
    units = [(label, ids) for label, ids in zip(label_ids, encoded) for _ in range(n)]
    return [Row(ids, label, options, i, contrast) for i, (label, ids) in enumerate(units)]


def _sample(engine, label_ids, encoded, n, options, contrast, text_stream):
    """Sampled (or greedy) rows, ``batch_size`` at a time."""
    units = sampled_rows(label_ids, encoded, n, options, contrast)
    chunk, stop = options.batch_size, engine.context.stop_id
    generated = []
    for first in range(0, len(units), chunk):
        rows = units[first:first + chunk]
        real = len(rows)
        # Padded with copies, dropped below: fewer compiled shapes.
        rows = rows + [rows[-1]] * (row_bucket(real, chunk) - real)
        on_step = None
        if text_stream:
            def on_step(state, first=first, real=real):
                for row, token in token_events(state, stop, real):
                    text_stream(first + row, token)
                return state
        state = engine.run(engine.start(rows), on_step)
        generated += engine.new_tokens(state, stop)[:real]
    return generated


def _beams(search, label_ids, encoded, n, options, contrast, text_stream):
    """The ``n`` best of ``num_beams`` beams for each prompt, ``batch_size``
    rows at a time."""
    beams = options.num_beams
    groups = [Row(ids, label, options, 0, contrast) for label, ids in zip(label_ids, encoded)]
    chunk = max(1, options.batch_size // beams)
    generated = []
    for first in range(0, len(groups), chunk):
        state = loop(search, search.start(groups[first:first + chunk], beams, n))
        results = search.results(state)
        if text_stream:
            for row, ids in enumerate(results):
                for token in ids:
                    text_stream(first * n + row, token)
                text_stream(first * n + row, None)
        generated += results
    return generated
