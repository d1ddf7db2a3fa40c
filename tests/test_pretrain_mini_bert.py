"""scripts/pretrain_mini_bert.py: a run stopped and resumed ends where an unbroken one does."""

import importlib.util
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_mini_bert.py"
CHARS = "我们你他的是不了在有这个好很大小人中国家买东西质量服务酒店房间快递"


@pytest.fixture(scope="module")
def pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_mini_bert", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_corpus(_reviews_dir):
    rng = np.random.default_rng(0)

    def texts(n):
        return ["".join(rng.choice(list(CHARS), size=rng.integers(5, 30))) for _ in range(n)]

    return {"people_daily": (texts(60), texts(6)), "reviews": (texts(60), texts(6))}


def argv(tmp_path, name, **changed):
    options = {"steps": 6, "batch-size": 4, "seq-len": 24, "layers": 1, "hidden": 64,
               "dropout": 0.1, "lm-share": 0.25, "eval-every": 3, "save-every": 100,
               "threads": 1, **changed}
    args = [f"--{k}={v}" for k, v in options.items()]
    return args + ["--work", str(tmp_path / name / "work"), "--out", str(tmp_path / name / "out")]


def google_weights(out_dir):
    from cln_textgen.backend import tf

    reader = tf.train.load_checkpoint(str(out_dir / "bert_model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_unbroken_run(pretrain, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "load_corpus", tiny_corpus)
    pretrain.main(argv(tmp_path, "straight"))

    # SIGTERM arrives while step 2's batch is being made: the step finishes,
    # the state is saved at step 2 and the run exits; the same command resumes.
    batch = pretrain.BatchStream.batch

    def batch_then_signal(self, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch(self, step)

    monkeypatch.setattr(pretrain.BatchStream, "batch", batch_then_signal)
    with pytest.raises(SystemExit) as stopped:
        pretrain.main(argv(tmp_path, "resumed"))
    assert stopped.value.code == 130
    assert not (tmp_path / "resumed" / "out").exists()
    monkeypatch.setattr(pretrain.BatchStream, "batch", batch)
    pretrain.main(argv(tmp_path, "resumed"))

    straight = google_weights(tmp_path / "straight" / "out")
    resumed = google_weights(tmp_path / "resumed" / "out")
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    metrics = [json.loads((tmp_path / run / "out" / "metrics.json").read_text())
               for run in ("straight", "resumed")]
    assert metrics[0]["history"] == metrics[1]["history"]
    assert metrics[1]["training"]["sittings"] == 2

    # Changed settings in the same work folder: one line, exit status 2.
    with pytest.raises(SystemExit) as refused:
        pretrain.main(argv(tmp_path, "resumed", lr=5e-4))
    assert refused.value.code == 2


def test_batches_are_functions_of_seed_and_step(pretrain):
    token_ids = np.arange(5, 5 + 10 * 8, dtype=np.int32).reshape(10, 8)
    segment_ids = np.zeros_like(token_ids)
    stream = pretrain.BatchStream(token_ids, segment_ids, 4, 0, 100, 0.25)
    again = pretrain.BatchStream(token_ids, segment_ids, 4, 0, 100, 0.25)
    for step in (3, 1, 5):  # any order: nothing carries over from one batch to the next
        for a, b in zip(stream.batch(step), again.batch(step)):
            np.testing.assert_array_equal(a, b)
    # every row once per pass over the 10 rows
    seen = np.concatenate([stream.rows(step) for step in range(1, 6)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    inputs, segments, causal, labels = stream.batch(1)
    assert causal.tolist() == [1, 0, 0, 0]
    np.testing.assert_array_equal(labels[0, :-1], token_ids[stream.rows(1)[0], 1:])


def test_held_out_masks_show_mask_at_every_scored_position(pretrain):
    token_ids = np.full((50, 40), 7, dtype=np.int32)
    inputs, labels = pretrain.mask_tokens(token_ids, np.random.default_rng(0), 100,
                                          always_mask=True)
    assert (labels > 0).sum() > 0
    assert ((labels > 0) == (inputs == pretrain.MASK_ID)).all()


def tiny_model(pretrain, seed=0, vocab=40):
    import types

    from cln_textgen.model.layers import DropoutSeed

    shape = types.SimpleNamespace(hidden=64, layers=2)
    config = pretrain.model_config(shape, vocab, 0.0)
    transformer = pretrain.build_transformer(config, seed, DropoutSeed(seed))
    return config, transformer, pretrain.MaskedLM(transformer)


def test_scored_logits_equal_an_independent_bert_in_both_row_kinds(pretrain, tmp_path):
    """Targets, gathering, attention masks (causal and bidirectional) and the tied
    MLM head against a float64 BERT written from the paper's equations."""
    import bert_fixtures as bf

    config, transformer, mlm = tiny_model(pretrain)
    rng = np.random.default_rng(0)
    for weight in transformer.model.weights:  # far from the initial values
        weight.assign(weight.numpy() + rng.normal(0, 0.3, weight.shape).astype(np.float32))
    pretrain.save_google_checkpoint(transformer, tmp_path / "bert_model.ckpt")
    hf = bf.google_to_hf(google_weights(tmp_path))

    token_ids = rng.integers(5, 40, size=(2, 12)).astype(np.int32)
    token_ids[:, 0] = pretrain.CLS_ID
    stream = pretrain.BatchStream(token_ids, np.zeros_like(token_ids), 2, 0, 40, 0.5, mask_rate=0.5)
    inputs, segments, causal, labels = stream.batch(1)
    assert causal.tolist() == [1, 0] and (labels[1] > 0).sum() > 2
    logits, targets, is_lm = mlm.logits(inputs, segments, causal, labels, training=False)
    positions = np.argwhere(labels > 0)
    expected = np.concatenate([
        bf.numpy_bert_lm(hf, config, inputs[row], causal=bool(causal[row]))[1][
            positions[positions[:, 0] == row, 1]]
        for row in (0, 1)])
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(targets.numpy(), labels[positions[:, 0], positions[:, 1]])
    np.testing.assert_array_equal(is_lm.numpy(), causal[positions[:, 0]])
    # a left-to-right row's target is the next input token; a masked row's, the hidden one
    rows = stream.rows(1)
    np.testing.assert_array_equal(labels[0, :-1], token_ids[rows[0], 1:])
    hidden = inputs[1] == pretrain.MASK_ID
    np.testing.assert_array_equal(labels[1, hidden], token_ids[rows[1], hidden])


def test_local_heads_start_out_reading_their_neighbour(pretrain):
    """Changing the character just before position i moves the first layer's
    attention output at i; with BERT's random start it moves no more than a far one."""
    import types

    from cln_textgen.backend import keras
    from cln_textgen.model.layers import DropoutSeed

    config = pretrain.model_config(types.SimpleNamespace(hidden=128, layers=2), 40, 0.0)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(5, 40, size=(1, 40)).astype(np.int32)
    token_ids[0, 20] = pretrain.MASK_ID
    inputs = lambda ids: [ids, np.zeros_like(ids), np.zeros(1, np.int32)]  # noqa: E731

    def shifts(local_heads):
        transformer = pretrain.build_transformer(config, 0, DropoutSeed(0))
        before = [w.numpy() for w in transformer.model.weights]
        pretrain.start_local_heads(transformer, config, local_heads, 0)
        changed = sum(not np.array_equal(a, w.numpy())
                      for a, w in zip(before, transformer.model.weights))
        attention = keras.Model(transformer.model.inputs,
                                transformer.layers["Transformer-0-MultiHeadSelfAttention"].output)
        base = attention(inputs(token_ids)).numpy()[0, 20]
        moved = {}
        for offset in (-1, -8, 1, 8):
            other = token_ids.copy()
            other[0, 20 + offset] = 5 + (other[0, 20 + offset] - 4) % 35
            moved[offset] = np.linalg.norm(attention(inputs(other)).numpy()[0, 20] - base)
        return changed, moved

    changed, moved = shifts(0)
    assert changed == 0
    assert moved[-1] < 3 * moved[-8]
    changed, moved = shifts(1)  # one head of two: the previous character
    assert changed == 3 + 4 * config["num_hidden_layers"]  # 3 embeddings, q/k/v/o kernels
    assert moved[-1] > 10 * max(moved[-8], moved[8], moved[1]), moved
    assert pretrain.neighbour_offsets(4) == [-1, 1, -2, 2]
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--hidden", "128", "--local-heads", "2"])


def test_training_fits_one_small_batch(pretrain):
    """The whole step (loss, gradients, AdamW, clipping, schedule) can memorise a batch."""
    import types

    config, transformer, mlm = tiny_model(pretrain, vocab=60)
    token_ids = np.random.default_rng(1).integers(5, 60, size=(4, 16)).astype(np.int32)
    stream = pretrain.BatchStream(token_ids, np.zeros_like(token_ids), 4, 0, 60, 0.25,
                                  mask_rate=0.3)
    batch = stream.batch(1)
    args = types.SimpleNamespace(lr=3e-3, steps=150, warmup=10)
    train_step, _ = pretrain.make_steps(mlm, pretrain.make_optimizer(args))
    first = [float(x) for x in train_step(*batch)]
    for _ in range(149):
        last = [float(x) for x in train_step(*batch)]
    assert first[0] > 3 and first[2] > 3  # about log(60) at the start, both kinds of rows
    assert last[0] < 0.2 and last[2] < 0.2, (first, last)


def test_mask_rate_sets_the_share_of_targets(pretrain):
    token_ids = np.full((64, 64), 9, dtype=np.int32)
    for rate in (0.15, 0.4):
        stream = pretrain.BatchStream(token_ids, np.zeros_like(token_ids), 64, 0, 100, 0.0,
                                      mask_rate=rate)
        _, _, _, labels = stream.batch(1)
        assert abs((labels > 0).mean() - rate) < 0.02
