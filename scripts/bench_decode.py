"""Decoding speed: bert4keras's AutoRegressiveDecoder against our cached decoder.

Both sample from the same MiniLM-size conditional model (6 layers x 384, 12
heads, intermediate 1536, vocabulary 21128 like Chinese BERT; random weights
from ``build_model``, nothing downloaded) with the same sampler: top-k 40, the
special tokens and [SEP] banned, so every row generates the full length.

* bert4keras: ``AutoRegressiveDecoder.random_sample`` driven as bert4keras's
  conditional-LM example drives it: ``predict`` runs the Keras model on the
  whole prefix at every step (``model.predict`` on ``last_token(model)``) and
  one call decodes one label.
* ours: ``cln_textgen.generation.generate.generate`` (all labels in one batch), with
  the step compiled by XLA and, to show why XLA is the default, without;
* ours-guided: the same with classifier-free guidance (guidance 2 against the
  null condition): each text decodes beside its null row in the same batch.
  Its cost is reported as wall time against ``ours`` for the same texts.

How close a step comes to the machine's limit: a decode step's FLOPs (2 per
matmul weight per token, plus attention over the cache) per second, against
``tf.matmul`` of the same shapes at the same rows (the weights times one
token per row), timed in the same worker; that share is what the next speed
goal can be set against.

Each setting runs in a worker process of its own that builds the model once,
warms every method up (tracing, XLA compilation; bert4keras: a 4-token run),
then times ``--repeats`` rounds, each running every method once in turn, and
keeps each method's fastest run: on a shared machine other processes only
ever make a run slower, and interleaving gives the methods the same load.
Memory: the peak resident set (``VmRSS`` of ``/proc/self/status``, sampled
every 5 ms) during a method's runs, above the resident set before them.

Run from the repository root:  nice -n 10 python scripts/bench_decode.py
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
METHODS = ("bert4keras", "ours", "ours-no-xla", "ours-guided")


SIZES = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
             intermediate_size=1536)


def matmul_shapes(vocab_size):
    """The matmuls one token meets in a step, ``{name: (k, n, count)}``: q, k, v and
    the attention output, the feed-forward's two, the MLM head and the tied output."""
    h, i, n = SIZES["hidden_size"], SIZES["intermediate_size"], SIZES["num_hidden_layers"]
    return {"h x h": (h, h, 4 * n + 1), "h x ffn": (h, i, n), "ffn x h": (i, h, n),
            "h x vocab": (h, vocab_size, 1)}


def token_flops(vocab_size, context):
    """Forward FLOPs of one token over a cache of ``context`` positions."""
    matmuls = sum(2 * k * n * count for k, n, count in matmul_shapes(vocab_size).values())
    return matmuls + 4 * SIZES["num_hidden_layers"] * SIZES["hidden_size"] * context


def matmul_flops(vocab_size, rows, seconds=1.0):
    """FLOP/s of ``tf.matmul`` for the step's shapes at ``rows`` rows, run one op
    at a time in the proportions a step runs them."""
    from cln_textgen.backend import tf

    shapes = matmul_shapes(vocab_size)
    pairs = {name: (tf.random.normal((rows, k)), tf.random.normal((k, n)))
             for name, (k, n, _) in shapes.items()}
    flops, start, rounds = 0, time.perf_counter(), 0
    while rounds < 3 or time.perf_counter() - start < seconds:
        for name, (k, n, count) in shapes.items():
            for _ in range(count):
                out = tf.matmul(*pairs[name])
            flops += 2 * rows * k * n * count
        out.numpy()
        rounds += 1
    return flops / (time.perf_counter() - start)


def build(vocab_size, num_labels):
    import numpy as np

    from cln_textgen.model.modeling import ModelConfig, build_model
    from cln_textgen.model.tokenization import TextTokenizer

    config = ModelConfig(vocab_size=vocab_size, **SIZES, num_labels=num_labels,
                         label_dropout=0.1, dropout=0.0, attention_dropout=0.0)
    model = build_model(config)
    # The condition projections start at zero; give them values so that the
    # labels really differ (it costs nothing either way).
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "gamma_dense" in weight.name or "beta_dense" in weight.name:
            weight.assign(rng.normal(0, 0.02, weight.shape).astype(np.float32))
    tokens = SPECIALS + [f"t{i}" for i in range(vocab_size - len(SPECIALS))]
    return model, TextTokenizer({token: i for i, token in enumerate(tokens)})


def bert4keras_runner(model, tokenizer, top_k):
    import numpy as np

    from cln_textgen.backend import bert4keras

    decoder_base = bert4keras.snippets.AutoRegressiveDecoder
    banned = list(tokenizer.special_ids)  # [SEP] included: full length, as ours

    class RandomConditional(decoder_base):
        # Our model outputs logits, so the decorator's softmax gives the probas.
        @decoder_base.wraps(default_rtype="logits")
        def predict(self, inputs, output_ids, states):
            logits = self.last_token(model).predict([output_ids, inputs[0]], verbose=0)
            logits[:, banned] = -np.inf
            return logits

    # One decoder for every call, as the example keeps one: it caches the
    # last-token model and so its compiled predict function.
    sampler = RandomConditional(start_id=tokenizer.cls_id, end_id=tokenizer.sep_id, maxlen=1)

    def run(label_ids, n, max_new_tokens):
        sampler.maxlen = max_new_tokens
        texts = []
        for label in label_ids:  # one label per call
            texts += [tokenizer.decode(ids) for ids in
                      sampler.random_sample([np.array([label], np.int32)], n, topk=top_k)]
        return texts

    return run


def ours_runner(model, tokenizer, top_k, jit_compile, guidance=1.0):
    from cln_textgen.generation import generate as generation

    decoding = generation.Decoding(model, jit_compile=jit_compile)
    null_id = decoding.decoder.condition_rows - 1  # built with label dropout: the last row

    def run(label_ids, n, max_new_tokens):
        options = generation.GenerationOptions(max_new_tokens=max_new_tokens,
                                               min_new_tokens=max_new_tokens, top_k=top_k,
                                               guidance=guidance)
        return [g.text for g in generation.generate(
            model, tokenizer, label_ids, n=n, options=options, decoding=decoding,
            contrast=null_id if guidance != 1.0 else None)]

    return run


def resident_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class PeakMemory:
    """Highest ``VmRSS`` seen while the ``with`` block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak, self._done = resident_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.005):
            self.peak = max(self.peak, resident_mib())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_mib())


def worker(args):
    """Time every method on one setting; prints one JSON line."""
    model, tokenizer = build(args.vocab_size, args.labels)
    label_ids, length = list(range(args.run_labels)), args.length
    runners = {}
    for method in args.methods:
        if method == "bert4keras":
            runners[method] = bert4keras_runner(model, tokenizer, args.top_k)
        else:
            runners[method] = ours_runner(model, tokenizer, args.top_k, method != "ours-no-xla",
                                          guidance=2.0 if method == "ours-guided" else 1.0)
    results = {m: dict(seconds=[], peak_mb=0.0) for m in runners}
    for method, run in runners.items():
        start = time.perf_counter()
        run(label_ids, args.n, length if method != "bert4keras" else 4)
        results[method]["warmup_seconds"] = time.perf_counter() - start
    for _ in range(args.repeats):
        for method, run in runners.items():
            before = resident_mib()
            with PeakMemory() as memory:
                start = time.perf_counter()
                texts = run(label_ids, args.n, length)
                results[method]["seconds"].append(time.perf_counter() - start)
            result = results[method]
            result["peak_mb"] = max(result["peak_mb"], memory.peak - before)
            result["tokens"] = sum(len(text.split()) for text in texts)  # one word per id
            assert result["tokens"] == len(label_ids) * args.n * length, "rows did not run full"
    rows = len(label_ids) * args.n
    matmul = matmul_flops(args.vocab_size, rows)
    # a row's t-th new token sees its prompt ([CLS]) and the tokens before it
    flops = rows * sum(token_flops(args.vocab_size, 1 + t) for t in range(length))
    for method in ("ours", "ours-no-xla"):
        if method in results:
            results[method]["of_matmul"] = flops / min(results[method]["seconds"]) / matmul
    print(json.dumps(dict(results=results, rss_mb=resident_mib(), load=os.getloadavg()[0],
                          matmul_gflops=matmul / 1e9)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="samples per label")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--labels", type=int, default=2, help="the model's labels")
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--vocab-size", type=int, default=21128)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the fastest counts")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-labels", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    settings = {}
    for length in args.lengths:
        for labels in sorted({1, args.labels}):
            command = [sys.executable, __file__, "--worker", "--length", str(length),
                       "--run-labels", str(labels), "--labels", str(args.labels),
                       "--n", str(args.n), "--top-k", str(args.top_k),
                       "--vocab-size", str(args.vocab_size), "--repeats", str(args.repeats),
                       "--methods", *args.methods]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            settings[length, labels] = json.loads(out.splitlines()[-1])
            speeds = ", ".join(f"{m} {r['tokens'] / min(r['seconds']):.0f}"
                               for m, r in settings[length, labels]["results"].items())
            print(f"{length} new tokens, {labels} label(s): {speeds} tokens/s", file=sys.stderr,
                  flush=True)
    report(settings, args)


def report(settings, args):
    loads = [s["load"] for s in settings.values()]
    print(f"\n{args.n} samples per label; sampler: top-k {args.top_k}, full length forced; "
          f"tok/s = generated tokens / wall seconds, best of {args.repeats} interleaved runs.\n"
          f"1-minute load average at the end of each setting: {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs.  Memory: peak VmRSS during a method's runs minus VmRSS "
          f"before (process with TensorFlow, model and all methods warmed up: "
          f"{min(s['rss_mb'] for s in settings.values()):.0f}-"
          f"{max(s['rss_mb'] for s in settings.values()):.0f} MiB).")
    header = (f"{'new':>4} {'labels':>6} | {'bert4keras tok/s':>16} | {'ours tok/s':>10} | "
              f"{'ratio':>6} | {'ours no-XLA':>11} | {'XLA gain':>8} | "
              f"{'+peak MiB b4k/ours':>18} | {'ours warm-up s':>14} | {'of matmul':>9}")
    print(header)
    print("-" * len(header))
    for (length, labels), setting in settings.items():
        got = {m: setting["results"].get(m) for m in METHODS}
        ref, ours, plain = (got[m]["tokens"] / min(got[m]["seconds"]) if got[m] else None
                            for m in ("bert4keras", "ours", "ours-no-xla"))

        def cell(value, width, fmt="{:.0f}"):
            return f"{fmt.format(value) if value is not None else '-':>{width}}"

        memory = "/".join(f"{got[m]['peak_mb']:.0f}" if got[m] else "-"
                          for m in ("bert4keras", "ours"))
        print(f"{length:>4} {labels:>6} | {cell(ref, 16)} | {cell(ours, 10)} | "
              f"{cell(ours / ref if ours and ref else None, 5, '{:.1f}')}x | "
              f"{cell(plain, 11)} | "
              f"{cell(ours / plain if ours and plain else None, 7, '{:.2f}')}x | "
              f"{memory:>18} | "
              f"{cell(got['ours']['warmup_seconds'] if got['ours'] else None, 14, '{:.1f}')} | "
              f"{cell(100 * got['ours']['of_matmul'] if got['ours'] else None, 8, '{:.0f}')}%")
    print("of matmul: the decode step's FLOP/s (2 per matmul weight and token, plus attention "
          "over the cache) over tf.matmul's FLOP/s on the same shapes at the same rows "
          f"({', '.join(format(s['matmul_gflops'], '.1f') for s in settings.values())} GFLOP/s)")
    if any("ours-guided" in s["results"] and "ours" in s["results"] for s in settings.values()):
        print("\nGuidance (2, against the null condition) for the same texts, both with XLA: "
              "wall time guided / unguided (target <= 1.3x)")
        for (length, labels), setting in settings.items():
            r = setting["results"]
            if "ours-guided" in r and "ours" in r:
                ratio = min(r["ours-guided"]["seconds"]) / min(r["ours"]["seconds"])
                print(f"{length:>4} new tokens, {labels} label(s) x {args.n}: {ratio:.2f}x "
                      f"(peak +MiB {r['ours']['peak_mb']:.0f} -> "
                      f"{r['ours-guided']['peak_mb']:.0f})")


if __name__ == "__main__":
    main()
