"""Sampling text from a conditional LM for chosen labels.

``generate`` is the one entry point the trainer, the CLI and the Python API
call: it picks a sampler from the options and runs it on a key/value-cached
decoder (:mod:`cln_textgen.generation.decoder`, :mod:`cln_textgen.generation.samplers`),
``batch_size`` rows at a time.  Each row draws from its own seed (the
call's seed and the row's index), so the chunking bounds memory without
changing a single text.
"""

import dataclasses

import numpy as np

from cln_textgen.errors import UserError
from cln_textgen.generation.bounded import Bounded
from cln_textgen.generation.beams import BeamSampler
from cln_textgen.generation.decoder import CachedDecoder
from cln_textgen.generation.samplers import GreedySampler, RandomSampler, TopKSampler, TopPSampler
from cln_textgen.options import GenerationOptions, check_n

__all__ = ["GenerationOptions", "Generation", "Decoding", "generate", "make_sampler"]


@dataclasses.dataclass
class Generation:
    label_id: object  # the condition: a label id, or a mix ((id, weight), ...)
    prompt: str
    text: str  # the prompt exactly as given, then the continuation
    token_ids: list  # generated ids, without the prompt and without [SEP]


# The options that shape a sampler; the seed is a call argument.
_SAMPLER_FIELDS = ("num_beams", "greedy", "top_p", "top_k", "temperature",
                   "repetition_penalty", "no_repeat_ngram")


def make_sampler(options):
    """The sampler ``options`` describe: beams > greedy > top-p (after top-k) >
    top-k > plain random.  The seed is not part of it: pass ``seed=`` when
    calling the sampler."""
    shared = dict(temperature=options.temperature,
                  repetition_penalty=options.repetition_penalty,
                  no_repeat_ngram=options.no_repeat_ngram)
    if options.num_beams > 1:
        return BeamSampler(options.num_beams, **shared)
    if options.greedy:
        return GreedySampler(**shared)
    if options.top_p < 1.0:
        return TopPSampler(options.top_p, k=options.top_k or None, **shared)
    if options.top_k:
        return TopKSampler(options.top_k, **shared)
    return RandomSampler(**shared)


class Decoding:
    """A model's decoder and samplers, owned by one generator (or trainer).

    Both compile on first use; keeping them here lets later calls reuse that
    work, and keeping them per owner (not per process) means one owner's
    calls never change what another's produce.  Samplers are kept for the
    most recent few option sets.
    """

    _KEEP_SAMPLERS = 4

    def __init__(self, model, jit_compile=True):
        self.model = model
        self.decoder = CachedDecoder(model, jit_compile=jit_compile)
        self._samplers = Bounded(self._KEEP_SAMPLERS)

    def sampler(self, options):
        key = tuple(getattr(options, name) for name in _SAMPLER_FIELDS)
        return self._samplers.get(key, lambda: make_sampler(options))


def _row_bucket(rows, batch_size):
    """Rows a chunk of ``rows`` is padded to: the next power of two, at most
    ``batch_size``, so that few batch shapes are ever compiled."""
    return min(1 << max(rows - 1, 0).bit_length(), batch_size)


def continuation(tokenizer, prefix, ids):
    """The text ``ids`` add after the prompt ids ``prefix``: the decoded whole
    minus the decoded prompt, so spacing across the seam stays right."""
    whole, head = tokenizer.decode(prefix + ids), tokenizer.decode(prefix)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(ids)


class _TextStream:
    """Turns ``on_token(row, id)`` calls into ``stream(row, text_piece)`` calls.

    Pieces are the growth of the decoded text.  The tokenizer's clean-up
    (spaces around punctuation, ``it ' s`` -> ``it's``) can still change the
    last two tokens' text, so those are held back until more tokens or the
    end arrive; the pieces of a row then join to its final ``text``.
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
    decoding = decoding or Decoding(model)
    decoder = decoding.decoder
    encoded = [tokenizer.encode_prompt(text) for text in texts]
    sampler = decoding.sampler(options)
    beams = isinstance(sampler, BeamSampler)
    # A unit is what one sampler call expands: a prompt with its n beams
    # results, or one sampled row.
    if beams:
        units = list(zip(label_ids, encoded))
        per_unit = n
    else:
        units = [(label, ids) for label, ids in zip(label_ids, encoded) for _ in range(n)]
        per_unit = 1
    row_prefixes = [ids for ids in encoded for _ in range(n)]
    text_stream = _TextStream(tokenizer, row_prefixes, stream) if stream else None
    chunk = max(1, options.batch_size // (options.num_beams if beams else 1))
    generated = []
    for first in range(0, len(units), chunk):
        part = units[first:first + chunk]
        real = len(part)
        if not beams:  # padded with copies, dropped below: fewer compiled shapes
            part = part + [part[-1]] * (_row_bucket(real, chunk) - real)
        offset = first * per_unit
        on_token = None
        if text_stream:
            def on_token(row, token, offset=offset, real_rows=real * per_unit):
                if row < real_rows:
                    text_stream(offset + row, token)
        out = sampler(decoder, [ids for _, ids in part], [label for label, _ in part],
                      stop_id=tokenizer.sep_id,
                      banned_ids=[i for i in tokenizer.special_ids if i != tokenizer.sep_id],
                      max_new_tokens=options.max_new_tokens,
                      min_new_tokens=options.min_new_tokens, num_return=per_unit,
                      on_token=on_token, seed=options.seed,
                      row_ids=np.arange(offset, offset + len(part) * per_unit),
                      guidance=options.guidance, contrast=contrast)
        generated += out[:real * per_unit]
    rows = [(label, text, ids) for label, text, ids in zip(label_ids, texts, encoded)
            for _ in range(n)]
    return [Generation(label, text, text + continuation(tokenizer, prefix, ids), ids)
            for (label, text, prefix), ids in zip(rows, generated)]
