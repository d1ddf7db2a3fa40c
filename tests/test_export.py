"""``cln-textgen export``: the SavedModel, loaded in a fresh process with TensorFlow
alone, decodes as ``cln-textgen generate`` does (every option, prompt strings,
guidance, mixes, beams) and scores as training does."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bert_fixtures import SPECIALS

# Calls of the exported `generate`, as the Python API spells them; the options a
# call leaves out come from the run's generate: section, which the client reads
# from `info` (as the CLI reads config.yaml).
CALLS = [
    dict(label="1", prompt="", greedy=True),
    dict(label="0", prompt="很好", greedy=True, repetition_penalty=1.5, no_repeat_ngram=2),
    dict(label="1", prompt="酒店", n=3, top_k=5, seed=7),
    dict(label="0", prompt="", n=3, top_p=0.9, seed=3, min_new_tokens=6),
    dict(label="1", prompt="不", n=2, top_k=10, top_p=0.8, temperature=0.7, seed=11),
    dict(label={"0": 0.3, "1": 0.7}, prompt="房间", n=2, top_p=0.9, repetition_penalty=1.3,
         no_repeat_ngram=2, min_new_tokens=4, guidance=2.5, seed=5),
    dict(label="1", prompt="", n=2, guidance=3.0, seed=2),
    dict(label="0", prompt="很", n=2, guidance=2.0, negative_label="1", seed=4),
    dict(label="1", prompt="", n=2, num_beams=3),
    dict(label="0", prompt="好", n=2, num_beams=2, guidance=2.0),
    dict(label="1", prompt="Hé 很", n=5, seed=9, batch_size=2, top_k=4),
]

# Runs in a fresh interpreter: TensorFlow and the SavedModel only.  A call
# is {input: value}; the inputs it lacks are filled from info's defaults.
LOADER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    info = json.loads(model.signatures["info"]()["info"].numpy().decode())
    out = {"modules": [m for m in ("cln_textgen", "bert4keras") if m in sys.modules],
           "info": info, "generate": [], "score": [], "errors": []}
    generate = model.signatures["generate"]
    specs = generate.structured_input_signature[1]

    def call(request):
        values = {**info["generate_defaults"], **request}
        return generate(**{k: tf.constant(values[k], dtype=spec.dtype)
                           for k, spec in specs.items()})

    requests = json.loads(sys.stdin.read())
    for request in requests["generate"]:
        result = call(request)
        out["generate"].append({k: [t.decode() if isinstance(t, bytes) else t
                                    for t in v.numpy().tolist()] for k, v in result.items()})
    for weights, ids in requests["score"]:
        result = model.signatures["score"](label_weights=tf.constant(weights, tf.float32),
                                           token_ids=tf.constant(ids, tf.int32))
        out["score"].append({k: v.numpy().tolist() for k, v in result.items()})
    for request in requests["errors"]:
        try:
            call(request)
            out["errors"].append(None)
        except tf.errors.InvalidArgumentError as e:
            out["errors"].append(e.message)
    print(json.dumps(out))
""")


def weights(labels, label):
    """A label (one-hot) or a mix ({name: weight}) as the export's weights."""
    if label is None:
        return [0.0] * len(labels)
    mix = label if isinstance(label, dict) else {label: 1.0}
    return [float(mix.get(name, 0.0)) for name in labels]


def export_request(labels, call):
    """The exported signature's inputs for ``call`` (the rest: info's defaults)."""
    options = {k: v for k, v in call.items() if k not in ("label", "prompt", "negative_label")}
    options.setdefault("n", 1)
    return {"label_weights": weights(labels, call["label"]),
            "negative_label_weights": weights(labels, call.get("negative_label")),
            "prompt": call["prompt"], **options}


@pytest.fixture(scope="module")
def generator(trained_run):
    from cln_textgen.generation.generator import TextGenerator

    return TextGenerator.from_run(trained_run)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """One export of the tiny run, and what the command printed."""
    import contextlib
    import io

    from cln_textgen.cli import main

    out = tmp_path_factory.mktemp("export") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    return out, printed.getvalue()


def score_texts(generator):
    from cln_textgen.runs.folder import open_run

    run = open_run(generator.run)
    lines = Path(run.read_config().data.valid).read_text(encoding="utf-8").splitlines()[:4]
    return [(i % 2, generator.tokenizer.encode(line.split("\t")[0])) for i, line in
            enumerate(lines)]


@pytest.fixture(scope="module")
def loaded(exported, generator):
    """Every request of these tests, answered by one fresh interpreter."""
    out, _ = exported
    labels = generator.labels
    requests = {"generate": [export_request(labels, call) for call in CALLS],
                "score": [(weights(labels, labels[label]), ids[1:])
                          for label, ids in score_texts(generator)],
                "errors": [dict(export_request(labels, dict(label="0", prompt="")), **bad)
                           for bad in ({"temperature": 0.0}, {"label_weights": [0.5, 0.4]},
                                       {"max_new_tokens": 100}, {"n": 2, "greedy": True},
                                       {"negative_label_weights": [0.0, 1.0]},
                                       {"num_beams": 2, "n": 3})]}
    done = subprocess.run([sys.executable, "-c", LOADER, str(out / "1")],
                          input=json.dumps(requests), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def package_generate(generator, call):
    """What the Python API (the CLI's path) returns for ``call``."""
    import warnings

    options = {k: v for k, v in call.items() if k not in ("label", "prompt", "negative_label")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the prompt characters the vocabulary lacks
        return generator.generate(call["label"], prompt=call["prompt"],
                                  negative_label=call.get("negative_label"), **options)


@pytest.mark.slow
def test_the_export_loads_with_tensorflow_alone_and_records_its_origin(exported, loaded,
                                                                       trained_run):
    import hashlib

    out, printed = exported
    assert loaded["modules"] == []
    info = loaded["info"]
    assert info["run"] == str(trained_run.resolve())
    assert info["labels"] == {"0": 0, "1": 1}
    assert info["null_condition"] is True
    assert info["generate_defaults"]["max_new_tokens"] == 12  # the run's generate: section
    vocab = (trained_run / "vocab.txt").read_bytes()
    assert info["vocab_sha256"] == hashlib.sha256(vocab).hexdigest()
    assert info["step"] == int(info["checkpoint"].rsplit("-", 1)[1])
    assert f"to {out / '1'}" in printed and info["vocab_sha256"] in printed
    assert json.loads((out / "1" / "assets" / "cln_textgen_export.json").read_text()) == info
    assert sorted(p.name for p in out.iterdir()) == ["1"]  # no temporary folder left


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CALLS)), ids=[str(c) for c in CALLS])
def test_generate_gives_the_clis_texts(generator, loaded, index):
    call = CALLS[index]
    want = package_generate(generator, call)
    got = loaded["generate"][index]
    assert got["text"] == [w["text"] for w in want]
    assert all(text.startswith(call["prompt"]) for text in got["text"])
    assert got["continuation"] == [w["text"][len(call["prompt"]):] for w in want]
    ids = [[t for t in row if t >= 0] for row in got["token_ids"]]
    assert len(ids) == len(want) and any(ids)


@pytest.mark.slow
def test_score_is_the_training_log_likelihood(generator, loaded):
    from cln_textgen.evaluation.perplexity import make_scorer

    texts = score_texts(generator)
    scorer = make_scorer(generator.model, generator.tokenizer.pad_id, batch_size=8)
    sums, counts = scorer([ids for _, ids in texts], [label for label, _ in texts])
    got = loaded["score"]
    for (label, ids), total, count, result in zip(texts, sums, counts, got):
        assert len(result["token_log_probs"]) == count == len(ids) - 1
        assert result["log_likelihood"] == pytest.approx(-total, abs=1e-4)
        logits = generator.model([np.array([ids]), np.array([label])], training=False)[0]
        log_probs = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
        want = log_probs[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(result["token_log_probs"], want, atol=1e-4)


@pytest.mark.slow
def test_invalid_inputs_fail_the_call_naming_the_input(loaded):
    temperature, label, length, greedy, negative, beams = loaded["errors"]
    assert "temperature must be > 0" in temperature
    assert "label_weights must be weights >= 0 summing to 1" in label
    assert "positions" in length
    assert "greedy decoding gives one text per label" in greedy
    assert "negative_label_weights only matter with guidance" in negative
    assert "beam search returns at most num_beams texts" in beams


def test_the_detokeniser_decodes_as_the_package():
    from cln_textgen.export.detokenize import Detokenizer
    from cln_textgen.model.tokenization import TextTokenizer

    tokens = SPECIALS + ["[unused1]", "好", "的", "中国", "，", "。", "!", "'", "s", "it",
                         "hello", "##world", "##ing", "##好", "run", "1", ".", "2", "３", "(",
                         "-", "a", ",", "\u3000", "？", "[", "{", "ll", "re"]
    tokenizer = TextTokenizer({t: i for i, t in enumerate(tokens)})
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, len(tokens), rng.integers(0, 10)).tolist() for _ in range(500)]
    rows += [[tokens.index(t) for t in row.split()] for row in
             ["it ' s hello", "1 . 2", "1 . ３", "好 hello ##world 好", "( - run", "hello 好 的"]]
    ids = np.full((len(rows), max(map(len, rows))), -1, np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    got = [t.decode() for t in Detokenizer(tokens)(ids).numpy()]
    assert got == [tokenizer.decode(row) for row in rows]


def test_versions_are_numbered_and_never_overwritten(tmp_path):
    from cln_textgen.export.savedmodel import _publish, versions

    out = tmp_path / "model"
    out.mkdir()
    for expected in (1, 2):
        temporary = out / f".export-{expected}.tmp"
        (temporary / "variables").mkdir(parents=True)
        assert _publish(temporary, out) == out / str(expected)
    (out / "notes").mkdir()
    assert versions(out) == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "notes"]


def test_user_errors_are_one_line(trained_run, tmp_path, capsys):
    from cln_textgen.cli import main

    afile = tmp_path / "file"
    afile.write_text("")
    cases = [
        (["--run", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
         "run folder not found"),
        (["--run", str(trained_run), "--out", str(afile)], f"--out {afile}: is a file"),
        (["--run", str(trained_run), "--out", str(tmp_path / "o"), "--checkpoint", "99999"],
         "--checkpoint 99999: not 'best', 'latest', the step"),
    ]
    for args, message in cases:
        assert main(["export"] + args) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and message in error, error
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.slow
def test_a_failed_export_leaves_no_folder(trained_run, tmp_path, monkeypatch):
    import tensorflow as tf

    from cln_textgen.export.savedmodel import export_run

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(trained_run, tmp_path / "model")
    assert list((tmp_path / "model").iterdir()) == []


def test_a_checkpoint_is_named_by_its_step(trained_run):
    from cln_textgen.errors import UserError
    from cln_textgen.runs.folder import open_run
    from cln_textgen.runs.restore import resolve_checkpoint

    run = open_run(trained_run)
    assert resolve_checkpoint(run, "15") == str(trained_run / "checkpoints" / "ckpt-15")
    with pytest.raises(UserError, match="--checkpoint 3: not 'best', 'latest', the step"):
        resolve_checkpoint(run, "3")
