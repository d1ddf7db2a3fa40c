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
