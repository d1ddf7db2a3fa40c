"""Sampling text from a conditional LM for chosen labels.

``generate`` is the one entry point the trainer, the CLI and the Python API
call: it picks a sampler from the options and runs it on a key/value-cached
decoder (:mod:`cln_textgen.generation.decoder`, :mod:`cln_textgen.generation.samplers`).
``reference_generate`` recomputes the whole prefix at every step; it is simple
and obviously right, and stays as the oracle the fast path is tested against.
"""

import dataclasses
import functools
import weakref

import numpy as np

from cln_textgen.generation.decoder import CachedDecoder
from cln_textgen.errors import UserError
from cln_textgen.generation.samplers import (BeamSampler, GreedySampler, RandomSampler, TopKSampler,
                                  TopPSampler)


@dataclasses.dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    greedy: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    num_beams: int = 1
    seed: int = 0

    @classmethod
    def from_config(cls, section, **overrides):
        """The defaults a run's ``generate:`` section sets, then ``overrides``."""
        return cls(**{**dataclasses.asdict(section), **overrides})


@dataclasses.dataclass
class Generation:
    label_id: int
    prompt: str
    text: str
    token_ids: list  # generated ids, without the prompt and without [SEP]


def _filter_logits(logits, options):
    """Temperature, top-k and top-p applied to a (rows, vocab) float64 array."""
    logits = logits / options.temperature
    if options.top_k:
        k = min(options.top_k, logits.shape[-1])
        kth = np.sort(logits, axis=-1)[:, -k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if options.top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        drop = np.cumsum(probs, axis=-1) - probs >= options.top_p
        sorted_logits = np.where(drop, -np.inf, sorted_logits)
        logits = np.full_like(logits, -np.inf)
        np.put_along_axis(logits, order, sorted_logits, axis=-1)
    return logits


def reference_generate(model, tokenizer, label_ids, n=1, prompt="", options=None):
    """Full-recompute sampling: ``n`` texts for each label id in ``label_ids``."""
    options = options or GenerationOptions()
    rng = np.random.default_rng(options.seed)
    prefix = tokenizer.encode_prompt(prompt)
    rows = [label for label in label_ids for _ in range(n)]
    sequences = np.array([prefix] * len(rows), dtype=np.int32)
    labels = np.array(rows, dtype=np.int32)
    banned = [i for i in tokenizer.special_ids if i != tokenizer.sep_id]
    finished = np.zeros(len(rows), bool)
    generated = [[] for _ in rows]
    for step in range(options.max_new_tokens):
        logits = model([sequences, labels], training=False)[:, -1].numpy().astype(np.float64)
        logits[:, banned] = -np.inf
        if step < options.min_new_tokens:
            logits[:, tokenizer.sep_id] = -np.inf
        if options.greedy:
            next_ids = logits.argmax(-1)
        else:
            logits = _filter_logits(logits, options)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            next_ids = np.array([rng.choice(len(p), p=p) for p in probs])
        for row, token in enumerate(next_ids):
            if not finished[row]:
                if token == tokenizer.sep_id:
                    finished[row] = True
                else:
                    generated[row].append(int(token))
        if finished.all():
            break
        next_ids = np.where(finished, tokenizer.pad_id, next_ids)
        sequences = np.concatenate([sequences, next_ids[:, None].astype(np.int32)], axis=1)
    return [Generation(label, prompt, tokenizer.decode(prefix + ids), ids)
            for label, ids in zip(rows, generated)]


def make_sampler(options):
    """The sampler ``options`` describe: beams > greedy > top-p (after top-k) >
    top-k > plain random.  The seed is not part of it: pass ``seed=`` when
    calling the sampler."""
    return _sampler(options.num_beams, options.greedy, options.top_p, options.top_k,
                    options.temperature, options.repetition_penalty, options.no_repeat_ngram)


# Cached so that repeated calls with the same options, whatever their seed
# (the trainer's samples at every evaluation, evaluate's batches), reuse the
# sampler's traced step instead of tracing and compiling it again.
@functools.lru_cache(maxsize=16)
def _sampler(num_beams, greedy, top_p, top_k, temperature, repetition_penalty, no_repeat_ngram):
    shared = dict(temperature=temperature, repetition_penalty=repetition_penalty,
                  no_repeat_ngram=no_repeat_ngram)
    if num_beams > 1:
        return BeamSampler(num_beams, **shared)
    if greedy:
        return GreedySampler(**shared)
    if top_p < 1.0:
        return TopPSampler(top_p, k=top_k or None, **shared)
    if top_k:
        return TopKSampler(top_k, **shared)
    return RandomSampler(**shared)


# One decoder per model: its compiled step is reused by every later call
# (the trainer samples at each evaluation) instead of compiled again.
_decoders = weakref.WeakKeyDictionary()


def decoder_for(model):
    if model not in _decoders:
        _decoders[model] = CachedDecoder(model)
    return _decoders[model]


class _TextStream:
    """Turns ``on_token(row, id)`` calls into ``stream(row, text_piece)`` calls.

    Pieces are the growth of the decoded text.  The tokenizer's clean-up
    (spaces around punctuation, ``it ' s`` -> ``it's``) can still change the
    last two tokens' text, so those are held back until more tokens or the
    end arrive; the pieces of a row then join to its final ``text``.
    """

    _HOLD = 2

    def __init__(self, tokenizer, prefixes, stream):
        self.tokenizer, self.prefixes, self.stream = tokenizer, prefixes, stream
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
             stream=None, decoder=None):
    """``n`` generations for each label id; same seed and options -> same texts
    (with the same decoder: a step compiled by XLA draws other random numbers
    than a plain one).

    ``prompts``, if given, holds one prompt text per label id (rows of
    different prompt lengths decode together); otherwise ``prompt`` starts
    every row.  Results come label by label, ``n`` per label, in the order of
    ``label_ids``.

    Streaming: ``stream(row, text_piece)`` is called as text is produced, where
    ``row`` is the index of the generation in the returned list and a row's
    pieces join to the generated part of its ``text`` (the prompt is not
    repeated), and ``stream(row, None)`` follows a row's last piece.  Sampling
    rows stream token by token; beam search streams each result once it is final.

    ``decoder``: the :class:`~cln_textgen.generation.decoder.CachedDecoder` of ``model``
    to use; by default one per model, kept and compiled with XLA.
    """
    options = options or GenerationOptions()
    label_ids = list(label_ids)
    if not label_ids:
        return []
    texts = [prompt] * len(label_ids) if prompts is None else list(prompts)
    if len(texts) != len(label_ids):
        raise UserError(f"{len(texts)} prompts for {len(label_ids)} labels; give one per label")
    if options.num_beams > 1 and n > options.num_beams:
        raise UserError(f"beam search returns at most num_beams={options.num_beams} texts per "
                        f"label, not n={n}; raise num_beams or lower n")
    encoded = [tokenizer.encode_prompt(text) for text in texts]
    rows = [(label, text, ids) for label, text, ids in zip(label_ids, texts, encoded)
            for _ in range(n)]
    row_prefixes = [prefix for _, _, prefix in rows]
    decoder = decoder or decoder_for(model)
    generated = make_sampler(options)(
        decoder, encoded, label_ids,
        stop_id=tokenizer.sep_id,
        banned_ids=[i for i in tokenizer.special_ids if i != tokenizer.sep_id],
        max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
        num_return=n, on_token=_TextStream(tokenizer, row_prefixes, stream) if stream else None,
        seed=options.seed)
    return [Generation(label, text, tokenizer.decode(prefix + ids), ids)
            for (label, text, prefix), ids in zip(rows, generated)]
