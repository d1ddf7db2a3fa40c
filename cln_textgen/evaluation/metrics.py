"""Figures of a set of texts that need no model: diversity, memorisation, length, accuracy.

Pure Python and numpy, so every figure can be checked on hand-made inputs.

Texts are compared as *units*, the way BERT's own tokenizer splits text before
WordPiece: every CJK character is one unit (Chinese has no spaces; character
n-grams are what Chinese generation work counts), every run of letters and
digits is one unit (a word), and every other non-space character (punctuation)
is one unit.  Whitespace never matters, so ``很 好`` and ``很好`` are the same.
"""

import math
import re
import statistics
from collections import Counter

# The CJK blocks BERT's tokenizer splits into single characters.
_CJK = ("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf"
        "\U0002f800-\U0002fa1f")
_UNIT = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|[^\s]")

SELF_BLEU_EPSILON = 0.1  # NLTK's SmoothingFunction().method1, which Texygen's Self-BLEU uses


def units(text):
    """The units of ``text``: CJK characters, words, punctuation marks."""
    return _UNIT.findall(text)


def ngrams(sequence, n):
    return [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------ diversity


def distinct_n(texts, n):
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams over ``texts``
    (lists of units); None when the texts hold no n-gram at all."""
    grams = [g for text in texts for g in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else None


def _precision_parts(hypothesis, max_counts, n):
    """Clipped n-gram matches and the count of hypothesis n-grams (BLEU's p_n)."""
    counts = Counter(ngrams(hypothesis, n))
    matched = sum(min(c, max_counts(g)) for g, c in counts.items())
    return matched, sum(counts.values())


def _bleu_from(hypothesis, max_counts, ref_lengths, max_n):
    if not hypothesis:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        matched, total = _precision_parts(hypothesis, max_counts[n], n)
        if n == 1 and matched == 0:
            return 0.0  # nothing in common: NLTK returns 0 before smoothing
        # a hypothesis shorter than n has no n-grams: 0 out of (at least) 1
        precision = matched / max(total, 1) if matched else SELF_BLEU_EPSILON / max(total, 1)
        log_sum += math.log(precision) / max_n
    length = len(hypothesis)
    closest = min(ref_lengths, key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_sum)


def bleu(hypothesis, references, max_n=4):
    """Sentence BLEU of one unit list against reference unit lists.

    Uniform weights over 1..max_n-gram precisions, counts clipped by the most
    any one reference holds, brevity penalty against the closest reference
    length (the shorter on a tie), and zero precisions smoothed to
    ``0.1 / count`` -- the same as NLTK's ``sentence_bleu`` with
    ``SmoothingFunction().method1``.
    """
    ref_counts = [{n: Counter(ngrams(r, n)) for n in range(1, max_n + 1)} for r in references]
    max_counts = {n: (lambda g, n=n: max(c[n][g] for c in ref_counts))
                  for n in range(1, max_n + 1)}
    return _bleu_from(hypothesis, max_counts, [len(r) for r in references], max_n)


def self_bleu(texts, max_n=4):
    """Self-BLEU (Zhu et al., 2018): mean BLEU of each text against all the others.

    Higher means the texts repeat each other.  None for fewer than two texts.
    Equal to calling :func:`bleu` once per text, but each n-gram's clipping
    count (the most any *other* text holds) comes from the two largest counts
    over all texts, so it costs one pass instead of one per pair.
    """
    if len(texts) < 2:
        return None
    per_text = [{n: Counter(ngrams(t, n)) for n in range(1, max_n + 1)} for t in texts]
    top = {}  # (n, gram) -> [largest count, text holding it, second largest count]
    for i, counts in enumerate(per_text):
        for n, grams in counts.items():
            for g, c in grams.items():
                best = top.setdefault((n, g), [0, -1, 0])
                if c > best[0]:
                    best[:] = [c, i, best[0]]
                elif c > best[2]:
                    best[2] = c
    lengths = [len(t) for t in texts]
    scores = []
    for i, text in enumerate(texts):
        def others_max(g, n, i=i):
            first, owner, second = top.get((n, g), (0, -1, 0))
            return second if owner == i else first

        max_counts = {n: (lambda g, n=n: others_max(g, n)) for n in range(1, max_n + 1)}
        scores.append(_bleu_from(text, max_counts, lengths[:i] + lengths[i + 1:], max_n))
    return sum(scores) / len(scores)


# ------------------------------------------------------------ memorisation


def exact_copy_rate(texts, corpus):
    """Share of ``texts`` (unit lists) equal to a text of ``corpus`` (a set of unit tuples)."""
    if not texts:
        return None
    return sum(tuple(t) in corpus for t in texts) / len(texts)


def ngrams_found(wanted, corpus, n):
    """Those n-grams of the set ``wanted`` that occur in ``corpus`` (unit lists).

    One pass that keeps only what is asked for: the corpus' own n-grams (a
    million for a large training set) are never held in memory.
    """
    found = set()
    for text in corpus:
        found.update(g for g in ngrams(text, n) if g in wanted)
        if len(found) == len(wanted):
            break
    return found


def ngram_overlap(texts, found, n):
    """Share of the n-gram occurrences of ``texts`` that are in ``found``, and how
    many occurrences there were (texts shorter than n have none: share None)."""
    grams = [g for t in texts for g in ngrams(t, n)]
    return (sum(g in found for g in grams) / len(grams) if grams else None), len(grams)


# ------------------------------------------------------------ length and accuracy


def length_stats(texts):
    """Mean and median length in units."""
    lengths = [len(t) for t in texts]
    if not lengths:
        return {"mean": None, "median": None}
    return {"mean": sum(lengths) / len(lengths), "median": float(statistics.median(lengths))}


def label_accuracy(targets, predictions, labels):
    """Accuracy per label (None for a label with no text), macro (the mean over
    labels that have texts, so every label weighs the same) and micro (all texts)."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    right, seen = Counter(), Counter(targets)
    for target, predicted in zip(targets, predictions):
        right[target] += target == predicted
    per_label = {label: (right[label] / seen[label] if seen[label] else None) for label in labels}
    micro = sum(right.values()) / len(targets) if targets else None
    return {"per_label": per_label, "macro": _mean(per_label.values()), "micro": micro}


def macro(values):
    """Mean of the per-label figures that exist (None if none does)."""
    return _mean(values)
