"""Test-only oracles: full-recompute sampling and a numpy logit filter.

``reference_generate`` recomputes the whole prefix at every step; it is
simple and obviously right, and the fast path is tested against it.
"""

import numpy as np

from cln_textgen.generation.generate import Generation, GenerationOptions, continuation


def filter_logits(logits, options):
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
            logits = filter_logits(logits, options)
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
    return [Generation(label, prompt, prompt + continuation(tokenizer, prefix, ids), ids)
            for label, ids in zip(rows, generated)]
