"""Does an exported SavedModel decode as ``cln-textgen generate``?  A grid of calls.

Exports the run (or takes ``--export DIR``), asks the SavedModel for each call
of the grid in a fresh interpreter that imports TensorFlow alone (the inputs
a call leaves out come from the ``info`` signature's ``generate_defaults``, as
a client fills them), asks the package's Python API (the CLI's path) for the
same calls, and prints one line per call: texts equal or not::

    python scripts/compare_export.py --run runs/demo
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# A call: a label or a mix, a prompt, and options (the rest: the run's defaults).
GRID = [
    dict(label="positive", prompt="", n=3, seed=1),
    dict(label="negative", prompt="这家酒店", n=3, seed=2),
    dict(label={"negative": 0.3, "positive": 0.7}, prompt="房间", n=3, seed=3, top_p=0.9,
         repetition_penalty=1.3, no_repeat_ngram=3, min_new_tokens=10),
    dict(label="positive", prompt="", greedy=True),
    dict(label="negative", prompt="服务", greedy=True, guidance=1.0),
    dict(label="positive", prompt="这本书", n=2, num_beams=4),
    dict(label="negative", prompt="", n=2, num_beams=3, guidance=2.0, max_new_tokens=24),
    dict(label="positive", prompt="", n=4, seed=5, guidance=2.0, negative_label="negative",
         top_k=20, temperature=0.8),
]

LOADER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    info = json.loads(model.signatures["info"]()["info"].numpy().decode())
    generate = model.signatures["generate"]
    specs = generate.structured_input_signature[1]
    out = []
    for request in json.loads(sys.stdin.read()):
        values = {**info["generate_defaults"], **request}
        result = generate(**{k: tf.constant(values[k], specs[k].dtype) for k in specs})
        out.append([t.decode() for t in result["text"].numpy()])
    print(json.dumps({"texts": out, "modules": [m for m in ("cln_textgen", "bert4keras")
                                                 if m in sys.modules]}))
""")


def weights(labels, label):
    if label is None:
        return [0.0] * len(labels)
    mix = label if isinstance(label, dict) else {label: 1.0}
    return [float(mix.get(name, 0.0)) for name in labels]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--export", metavar="DIR", help="an export of the run (default: export "
                                                       "it into a temporary folder)")
    args = parser.parse_args()

    from cln_textgen.generation.generator import TextGenerator

    generator = TextGenerator.from_run(args.run)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.export
        if folder is None:
            from cln_textgen.export.savedmodel import export_run

            folder, _ = export_run(args.run, Path(scratch) / "export")
        requests = []
        for call in GRID:
            options = {k: v for k, v in call.items()
                       if k not in ("label", "prompt", "negative_label")}
            requests.append({"label_weights": weights(generator.labels, call["label"]),
                             "negative_label_weights": weights(generator.labels,
                                                               call.get("negative_label")),
                             "prompt": call["prompt"], "n": options.pop("n", 1), **options})
        done = subprocess.run([sys.executable, "-c", LOADER, str(folder)], check=True,
                              input=json.dumps(requests), capture_output=True, text=True)
    exported = json.loads(done.stdout.splitlines()[-1])
    equal = 0
    for call, got in zip(GRID, exported["texts"]):
        options = {k: v for k, v in call.items() if k not in ("label", "prompt")}
        want = [t["text"] for t in generator.generate(call["label"], prompt=call["prompt"],
                                                      **options)]
        equal += got == want
        print(f"{'same' if got == want else 'DIFFERENT'}: {json.dumps(call, ensure_ascii=False)}"
              f" -> {json.dumps(got[0], ensure_ascii=False)}")
        if got != want:
            print(f"  export:  {got}\n  package: {want}")
    print(f"{equal} of {len(GRID)} calls gave the same texts; the export's process imported "
          f"{exported['modules'] or 'neither cln_textgen nor bert4keras'}")


if __name__ == "__main__":
    main()
