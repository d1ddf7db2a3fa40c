import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_tiny_task
from cln_textgen.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, check=True, **popen):
    """Run cln-textgen in a new process (what a user's second command is)."""
    result = subprocess.run([sys.executable, "-m", "cln_textgen", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600, **popen)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def events(run, kind):
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def checkpoint_values(prefix):
    from cln_textgen.backend import tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("save_counter")}


def test_a_run_folder_is_complete_and_self_contained(trained_run, tmp_path):
    run = trained_run
    for name in ("config.yaml", "model.json", "labels.json", "vocab.txt", "metrics.jsonl",
                 "loss.png", "samples/epoch-1.jsonl", "samples/epoch-2.jsonl"):
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text()) == ["0", "1"]
    assert list((run / "tensorboard").iterdir())
    assert (run / "checkpoints" / "best" / "checkpoint").is_file()
    train, evals = events(run, "train"), events(run, "eval")
    assert [e["step"] for e in train] == list(range(1, 21))
    assert [e["epoch"] for e in evals] == [1, 2]
    assert set(evals[0]["per_label"]) == {"0", "1"}
    assert all(k in train[0] for k in ("loss", "lr", "tokens_per_s", "grad_norm"))
    samples = [json.loads(line) for line in (run / "samples/epoch-2.jsonl").read_text().splitlines()]
    assert sorted(s["label"] for s in samples) == ["0", "0", "1", "1"]
    # the run needs nothing outside its folder: move it away from the pretrained BERT and data
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(run, moved)
    result = cli("generate", "--run", str(moved), "--label", "all", "-n", "2", "--format", "jsonl")
    assert len(result.stdout.splitlines()) == 4


def test_training_lowers_the_loss(trained_run):
    evals = events(trained_run, "eval")
    train = events(trained_run, "train")
    assert np.mean([e["loss"] for e in train[-5:]]) < np.mean([e["loss"] for e in train[:5]])
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]


def test_rerunning_a_finished_run_says_it_is_complete(trained_run, capsys):
    config = trained_run.parent / "config.yaml"
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    assert "this run is complete (20 steps)" in capsys.readouterr().out


def test_a_new_run_says_whether_the_mlm_head_was_loaded(tmp_path, capsys):
    import bert_fixtures as bf
    from cln_textgen.model.pretrained import open_pretrained

    config = write_tiny_task(tmp_path / "task", train_lines=16, valid_lines=0)
    common = ["train", "--config", str(config), "--no-progress", "--set", "data.valid=null",
              "--set", "train.samples_per_label=0", "--stop-at-step", "1"]
    assert main(common + ["--set", f"run_dir={tmp_path / 'with-head'}"]) == 0
    assert "MLM head: loaded from the checkpoint" in capsys.readouterr().out
    bert = tmp_path / "task" / "bert"
    # The same BERT without its MLM head, as a sentence encoder is saved.
    variables = {name: value for name, value in open_pretrained(bert).variables().items()
                 if not name.startswith("cls/")}
    vocab = (bert / "vocab.txt").read_text(encoding="utf-8")
    bf.write_google_bert(bert, variables, json.loads((bert / "bert_config.json").read_text()))
    (bert / "vocab.txt").write_text(vocab, encoding="utf-8")
    assert main(common) == 0
    assert "MLM head: initialised, not in the checkpoint" in capsys.readouterr().out


def test_model_init_random_draws_seeded_weights_instead_of_the_checkpoints(tmp_path, capsys):
    from cln_textgen.config import load_config
    from cln_textgen.tasks.lm_start import start_run
    from cln_textgen.training.trainer import Trainer

    config = write_tiny_task(tmp_path / "task", train_lines=16, valid_lines=0)

    def first_weights(name, *sets):
        overrides = [f"run_dir={tmp_path / name}", "data.valid=null",
                     "train.samples_per_label=0", *sets]
        setup = start_run(load_config(config, overrides), "test")
        try:
            trainer = Trainer(setup, progress=False)
            trainer.restore_or_warm_start()
            weights = {w.name: w.numpy() for w in trainer.model.weights}
            return list(weights.values()), list(weights), setup.describe_warm_start()
        finally:
            setup.lock.release()

    pretrained, names, _ = first_weights("pretrained")
    random_a, _, said = first_weights("random-a", "model.init=random")
    random_b, _, _ = first_weights("random-b", "model.init=random")
    other_seed, _, _ = first_weights("random-c", "model.init=random", "train.seed=4")
    assert "model.init: random" in said
    assert [w.shape for w in random_a] == [w.shape for w in pretrained]
    # the conditions' projections start at zero in every model, whatever the init
    matrices = [i for i, w in enumerate(pretrained) if w.ndim == 2 and w.any()]
    # not the checkpoint's: no weight matrix it holds kept its values
    loaded = [i for i in matrices if not names[i].startswith("Label-Embedding")]
    assert len(loaded) == len(matrices) - 1
    assert not any(np.array_equal(pretrained[i], random_a[i]) for i in loaded)
    # seeded: the same seed draws the same weights, another seed others
    for a, b in zip(random_a, random_b):
        np.testing.assert_array_equal(a, b)
    assert not any(np.array_equal(random_a[i], other_seed[i]) for i in matrices)
    # distinct: no two matrices of a random model repeat each other's values
    # (the label embedding's and transformer's streams included)
    assert len({random_a[i].tobytes() for i in matrices}) == len(matrices)
    # the run's config records it
    assert "init: random" in (tmp_path / "random-a" / "config.yaml").read_text()
    assert "init: pretrained" in (tmp_path / "pretrained" / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_stop_and_resume_in_a_new_process_is_bitwise_exact(tmp_path, dropout):
    config = write_tiny_task(tmp_path / "task")
    common = ["--config", str(config), "--no-progress", "--set", f"model.dropout={dropout}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("train", *common, "--set", f"run_dir={straight}")
    cli("train", *common, "--set", f"run_dir={resumed}", "--stop-at-step", "7")
    assert events(resumed, "train")[-1]["step"] == 7
    out = cli("train", *common, "--set", f"run_dir={resumed}").stdout
    assert "resuming from" in out and "step 7, epoch 1, batch 7" in out
    losses = [(e["step"], e["loss"]) for e in events(straight, "train")]
    assert losses == [(e["step"], e["loss"]) for e in events(resumed, "train")]
    a = checkpoint_values(straight / "checkpoints" / "ckpt-20")
    b = checkpoint_values(resumed / "checkpoints" / "ckpt-20")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(tmp_path):
    config = write_tiny_task(tmp_path / "task")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "cln_textgen", "train", "--config", str(config),
            "--no-progress", "--set", f"run_dir={run}", "--set", "train.save_every_steps=2",
            "--set", "train.epochs=3"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 2.0))  # somewhere in the middle of training
    process.send_signal(signal.SIGKILL)
    process.wait()
    cli("train", "--config", str(config), "--no-progress", "--set", f"run_dir={run}",
        "--set", "train.save_every_steps=2", "--set", "train.epochs=3")
    assert max(e["step"] for e in events(run, "train")) == 30
    steps = [e["step"] for e in events(run, "train")]
    assert steps == sorted(set(steps))  # nothing logged twice after the resume
    from cln_textgen.generation.generator import TextGenerator

    generator = TextGenerator.from_run(run, "latest")
    assert generator.checkpoint.endswith("ckpt-30")
    assert len(generator.generate("all", n=1, max_new_tokens=4)) == 2


def test_resume_refuses_a_changed_architecture(trained_run, capsys):
    config = trained_run.parent / "config.yaml"
    code = main(["train", "--config", str(config), "--set", "model.label_embedding_size=16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.label_embedding_size is 16 but the run" in err and "started with 8" in err
    assert len(err.strip().splitlines()) == 1


def test_raising_epochs_trains_longer(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48)
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=1"]) == 0
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=2"]) == 0
    run = tmp_path / "task" / "run"
    assert [e["step"] for e in events(run, "train")] == list(range(1, 7))
    assert [e["epoch"] for e in events(run, "eval")] == [1, 2]


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from cln_textgen.training import step as train_step

    config = write_tiny_task(tmp_path / "task")
    original = train_step.TrainStep.__call__

    def poisoned(self, batches, total):
        loss, norm = original(self, batches, total)
        return (loss * np.nan if int(self.optimizer.iterations.numpy()) >= 7 else loss), norm

    monkeypatch.setattr(train_step.TrainStep, "__call__", poisoned)
    assert main(["train", "--config", str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 7" in err and "ckpt-5" in err
    latest = (tmp_path / "task" / "run" / "checkpoints" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-5"' in latest


def test_early_stopping_keeps_the_best(tmp_path, capsys, monkeypatch):
    from cln_textgen.training import trainer as training

    config = write_tiny_task(tmp_path / "task", train_lines=48)
    losses = iter([2.0, 2.5, 3.0, 3.5])
    original = training.Trainer.evaluate

    def worsening(self):
        result = original(self)
        result.loss = next(losses)
        return result

    monkeypatch.setattr(training.Trainer, "evaluate", worsening)
    args = ["train", "--config", str(config), "--no-progress", "--set", "train.epochs=4",
            "--set", "train.patience=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "early stopping" in out
    run = tmp_path / "task" / "run"
    assert [e["epoch"] for e in events(run, "eval")] == [1, 2]
    best = (run / "checkpoints" / "best" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-3"' in best
    # stopped by patience is complete: running it again does not train on
    assert main(args) == 0
    assert "this run is complete (6 steps): early stopping" in capsys.readouterr().out
    assert [e["epoch"] for e in events(run, "eval")] == [1, 2]


@pytest.mark.parametrize("change,message", [
    ("model.pretrained={tmp}/none", "pretrained BERT directory not found"),
    ("data.valid={tmp}/bad_valid.tsv", "bad_valid.tsv:2: label '7' does not occur"),
    ("data.train={tmp}/none.tsv", "none.tsv: data file not found"),
    ("data.max_length=100", "data.max_length: 100 is longer than the BERT's 64 positions"),
])
def test_user_errors_are_one_line_and_leave_no_run(tmp_path, capsys, change, message):
    config = write_tiny_task(tmp_path / "task", train_lines=20, valid_lines=5)
    (tmp_path / "bad_valid.tsv").write_text("好\t1\n差\t7\n", encoding="utf-8")
    code = main(["train", "--config", str(config), "--set", change.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "task" / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: job schedulers
def test_ctrl_c_saves_and_resumes(tmp_path, signum):
    config = write_tiny_task(tmp_path / "task")
    run = tmp_path / "task" / "run"
    args = [sys.executable, "-m", "cln_textgen", "train", "--config", str(config), "--no-progress",
            "--set", "train.epochs=3"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    assert "interrupted at step" in out and "run the same command to resume" in out
    assert "Traceback" not in err
    stopped = int(out.split("interrupted at step ")[1].split(";")[0])
    latest = (run / "checkpoints" / "checkpoint").read_text()
    assert f'model_checkpoint_path: "ckpt-{stopped}"' in latest
    result = cli("train", "--config", str(config), "--no-progress", "--set", "train.epochs=3")
    assert f"step {stopped}," in result.stdout
    assert max(e["step"] for e in events(run, "train")) == 30


def test_max_steps_ends_with_an_evaluation(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48)
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.max_steps=2",
                 "--set", "train.epochs=1"]) == 0
    run = tmp_path / "task" / "run"
    assert [e["step"] for e in events(run, "eval")] == [2]
    assert (run / "samples" / "step-2.jsonl").is_file()
    # ending exactly at an epoch end evaluates once, not twice
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.max_steps=6",
                 "--set", "train.epochs=2"]) == 0
    assert [e["step"] for e in events(run, "eval")] == [2, 3, 6]
