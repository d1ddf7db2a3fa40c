"""A run folder survives damage, a second writer, changed data and edits: each
test first makes the fault, then checks that nothing is lost and that the
message is one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_tiny_task
from cln_textgen.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_run(trained_run, tmp_path):
    """A private copy of the trained run, with a config that points at it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    config = tmp_path / "config.json"
    data = json.loads((trained_run.parent / "config.yaml").read_text())
    data["run_dir"] = str(run)
    config.write_text(json.dumps(data), encoding="utf-8")
    return run, config


def steps(run, kind="train"):
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e["step"] for e in map(json.loads, lines) if e["event"] == kind]


def damage(prefix, how):
    data = prefix.parent / (prefix.name + ".data-00000-of-00001")
    index = prefix.parent / (prefix.name + ".index")
    if how == "delete index":
        index.unlink()
    elif how == "truncate data":
        data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 3])
    elif how == "flip bits":
        raw = bytearray(data.read_bytes())
        for i in range(100, len(raw), 997):
            raw[i] ^= 0x5A
        data.write_bytes(bytes(raw))
    elif how == "cut index":
        index.write_bytes(index.read_bytes()[:len(index.read_bytes()) // 2])
    elif how == "garbage pointer":
        (prefix.parent / "checkpoint").write_bytes(b"\x00garbage{{{\n")


@pytest.mark.parametrize("how", ["delete index", "garbage pointer", "truncate data", "flip bits",
                                 "cut index"])
def test_train_resumes_from_the_newest_readable_checkpoint(trained_run, tmp_path, capsys, how):
    run, config = copy_run(trained_run, tmp_path)
    before = {p.name for p in (run / "checkpoints").iterdir()}
    damage(run / "checkpoints" / "ckpt-20", how)
    code = main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    if how == "garbage pointer":
        assert "resuming from" in out and "ckpt-20: step 20" in out
    else:  # older checkpoints kept, the damaged one named, training goes on from ckpt-15
        assert "skipped unreadable checkpoint" in err and "ckpt-20" in err
        assert "ckpt-15: step 15" in out
    assert before - {"checkpoint"} <= {p.name for p in (run / "checkpoints").iterdir()} | {
        "ckpt-20.index"}
    assert (run / "checkpoints" / "best" / "checkpoint").is_file()
    assert steps(run) == list(range(1, 31)) and steps(run, "eval") == [10, 20, 30]


@pytest.mark.parametrize("how", ["truncate data", "flip bits", "cut index"])
def test_generate_falls_back_to_an_older_checkpoint(trained_run, tmp_path, capsys, how):
    run, _ = copy_run(trained_run, tmp_path)
    damage(run / "checkpoints" / "ckpt-20", how)
    assert main(["generate", "--run", str(run), "--label", "0", "-n", "1",
                 "--checkpoint", "latest"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("== 0 ==")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "ckpt-20" in warnings[0] and "using" in warnings[0]


def test_no_readable_checkpoint_stops_and_keeps_the_folder(trained_run, tmp_path, capsys):
    run, config = copy_run(trained_run, tmp_path)
    for n in (10, 15, 20):
        damage(run / "checkpoints" / f"ckpt-{n}", "flip bits")
    for prefix in (run / "checkpoints" / "best").glob("*.index"):
        damage(prefix.with_suffix(""), "flip bits")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no checkpoint reads back (checkpoint files: ckpt-20, ckpt-15, ckpt-10)" in err[-1]
    assert "--fresh" in err[-1]
    assert sorted(p.relative_to(run) for p in run.rglob("*") if p.name != ".lock") == \
        [p for p in before if p.name != ".lock"]
    assert main(["generate", "--run", str(run), "--label", "0"]) == 2
    assert "no checkpoint reads back" in capsys.readouterr().err


def test_fresh_moves_the_old_run_aside(trained_run, tmp_path, capsys):
    run, config = copy_run(trained_run, tmp_path)
    assert main(["train", "--config", str(config), "--no-progress", "--fresh",
                 "--set", "train.max_steps=2"]) == 0
    assert "--fresh: moved the previous folder to" in capsys.readouterr().out
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(old) == 1 and (old[0] / "checkpoints" / "ckpt-20.index").is_file()
    assert steps(run) == [1, 2]


def test_a_second_trainer_is_refused_and_a_killed_one_never_blocks(trained_run, tmp_path, capsys):
    run, config = copy_run(trained_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom cln_textgen.runs.lock import lock_folder\n"
         "lock = lock_folder(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)\n",
         str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    args = ["train", "--config", str(config), "--no-progress", "--set", "train.epochs=3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"in use by PID {holder.pid} since " in err and len(err.strip().splitlines()) == 1
    assert main(["classifier", "train", "--config", str(config), "--out", str(run)]) == 2
    capsys.readouterr()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main(args) == 0  # the kernel released the lock of the killed process
    assert steps(run)[-1] == 30


def test_changed_training_data_is_refused_on_resume(tmp_path, capsys, monkeypatch):
    task = tmp_path / "task"
    config = write_tiny_task(task, train_lines=48)
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=1"]) == 0
    train = task / "train.tsv"
    original = train.read_bytes()
    shorter = original[:len(original) // 2].rsplit(b"\n", 1)[0] + b"\n"
    train.write_bytes(shorter)
    args = ["train", "--config", str(config), "--no-progress", "--set", "train.epochs=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data.train: " in err and "train.tsv changed since the run started" in err
    assert f"48 -> {len(shorter.splitlines())} texts" in err and len(err.strip().splitlines()) == 1
    train.write_bytes(original.replace("好".encode(), "坏".encode(), 1))  # same size, new content
    assert main(args) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
    train.write_bytes(original)
    monkeypatch.chdir(task)  # the same file, spelled another way
    assert main(args + ["--set", "data.train=./train.tsv"]) == 0
    assert steps(task / "run") == list(range(1, 7))


def test_raising_the_total_continues_the_learning_rate(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48)
    common = ["train", "--config", str(config), "--no-progress", "--set", "train.epochs=4",
              "--set", "train.warmup_ratio=0.5", "--set", "train.learning_rate=0.01"]
    assert main(common + ["--set", "train.max_steps=6"]) == 0
    assert main(common + ["--set", "train.max_steps=12"]) == 0
    run = tmp_path / "task" / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lr = {e["step"]: e["lr"] for e in map(json.loads, lines) if e["event"] == "train"}
    assert sorted(lr) == list(range(1, 13))
    rate = {step - 1: value for step, value in lr.items()}  # the schedule at each step
    # the old plan: warmup 3 steps, then 0 at step 6; the resumed run goes on from there
    assert rate[3] == pytest.approx(0.01) and rate[6] == pytest.approx(0.0, abs=1e-9)
    # then a ramp of max(3, 0.5 x 6) steps to the 12-step plan kept warmup 3: 0.01 x 3/9 at 9
    assert rate[9] == pytest.approx(0.01 * 3 / 9, rel=1e-4)
    assert rate[11] == pytest.approx(0.01 / 9, rel=1e-4)
    assert max(abs(rate[s + 1] - rate[s]) for s in range(6, 11)) < 0.0012  # no jump


@pytest.mark.parametrize("edit,message", [
    (lambda run: (run / "labels.json").write_text('["0", "1", "2"]'),
     "labels.json: changed since the run wrote it"),
    (lambda run: (run / "labels.json").write_text('["1", "0"]'),
     "labels.json: changed since the run wrote it"),
    (lambda run: (run / "vocab.txt").write_text(
        "".join((run / "vocab.txt").read_text().splitlines(True)[:-1])),
     "vocab.txt: changed since the run wrote it"),
    (lambda run: (run / "model.json").unlink(), "not a run folder"),
    (lambda run: (run / "config.yaml").write_text("run_dir: [unclosed\n"),
     "config.yaml: changed since the run wrote it"),
])
def test_edited_run_files_are_one_line(trained_run, tmp_path, capsys, edit, message):
    run, config = copy_run(trained_run, tmp_path)
    edit(run)
    assert main(["generate", "--run", str(run), "--label", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit,message", [
    ('["0", "1", "2"]', "labels.json: 3 labels but the model was built for 2"),
    ('"01"', "labels.json: must be a list of label names (strings), got '01'"),
    ("vocab", "tokens but the model was built for"),
])
def test_runs_without_a_manifest_still_open_and_are_checked(trained_run, tmp_path, capsys,
                                                            edit, message):
    run, config = copy_run(trained_run, tmp_path)
    (run / "manifest.json").unlink()
    (run / "data.json").unlink()
    assert main(["generate", "--run", str(run), "--label", "0", "-n", "1"]) == 0
    capsys.readouterr()
    saved = (run / "labels.json").read_text(), (run / "vocab.txt").read_text()
    if edit == "vocab":
        (run / "vocab.txt").write_text("".join(saved[1].splitlines(True)[:-1]))
    else:
        (run / "labels.json").write_text(edit)
    assert main(["generate", "--run", str(run), "--label", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    (run / "labels.json").write_text(saved[0])
    (run / "vocab.txt").write_text(saved[1])
    # the next train writes the manifest and the data fingerprint
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=3"]) == 0
    assert (run / "manifest.json").is_file() and (run / "data.json").is_file()


def test_metrics_cut_inside_a_character_does_not_block_resume(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    metrics = run / "metrics.jsonl"
    record = json.dumps({"event": "note", "step": 21, "text": "中文"}, ensure_ascii=False)
    metrics.write_bytes(metrics.read_bytes() + record.encode()[:-4])  # ends inside 文
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=3"]) == 0
    assert steps(run) == list(range(1, 31))


def test_a_setup_cut_short_is_set_up_again(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    shutil.rmtree(run)
    run.mkdir()
    (run / "vocab.txt").write_text("[PAD]\n")  # a crash before model.json and config.yaml
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.max_steps=1",
                 "--set", "train.epochs=1"]) == 0
    assert (run / "config.yaml").is_file() and (run / "manifest.json").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_disk_errors_while_saving_are_one_line(tmp_path, capsys, monkeypatch):
    from cln_textgen.backend import tf

    config = write_tiny_task(tmp_path / "task", train_lines=48)
    original = tf.train.CheckpointManager.save
    calls = []

    def full_disk(self, checkpoint_number=None, **kwargs):
        calls.append(checkpoint_number)
        if len(calls) == 2:  # the second save: a temp folder is made, then the disk is full
            os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return original(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk)
    code = main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=2",
                 "--set", "train.save_every_steps=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "No space left on device" in err[-1] and "the last good checkpoint is" in err[-1]
    assert "ckpt-2" in err[-1] and "Traceback" not in "\n".join(err)
    run = tmp_path / "task" / "run"
    assert not list(run.rglob("*_temp*"))
    monkeypatch.setattr(tf.train.CheckpointManager, "save", original)
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=2",
                 "--set", "train.save_every_steps=2"]) == 0


def test_a_failing_plot_never_fails_the_run(trained_run, tmp_path, capsys, monkeypatch):
    from cln_textgen.training import plots

    run, config = copy_run(trained_run, tmp_path)
    before = (run / "loss.png").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "write_bytes_atomic", broken)
    assert main(["train", "--config", str(config), "--no-progress", "--set", "train.epochs=3"]) == 0
    assert "warning: could not draw" in capsys.readouterr().err
    assert (run / "loss.png").read_bytes() == before  # old plot kept, not a 0-byte file


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_training_prints_no_traceback(tmp_path, signum):
    config = write_tiny_task(tmp_path / "task")
    args = [sys.executable, "-m", "cln_textgen", "train", "--config", str(config), "--no-progress"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(2.5)  # importing TensorFlow
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "interrupted" in err


def test_a_checkpoint_rotated_away_while_read_is_not_an_error(trained_run, tmp_path, capsys,
                                                              monkeypatch):
    from cln_textgen.runs import checkpoints

    run, _ = copy_run(trained_run, tmp_path)
    original = checkpoints.unreadable_reason
    folder = run / "checkpoints"

    def rotating(prefix):
        if prefix.endswith("ckpt-20") and not (folder / "ckpt-25.index").exists():
            # a trainer saves ckpt-25 and deletes ckpt-20 while this reader looks at it
            for path in folder.glob("ckpt-20.*"):
                path.rename(folder / path.name.replace("ckpt-20", "ckpt-25"))
        return original(prefix)

    monkeypatch.setattr(checkpoints, "unreadable_reason", rotating)
    assert checkpoints.newest_readable(folder) == str(folder / "ckpt-25")
    assert capsys.readouterr().err == ""  # nothing was damaged, nothing to warn about


def test_the_lock_names_its_holder_and_goes_with_its_process(tmp_path):
    from cln_textgen.errors import UserError
    from cln_textgen.runs.lock import lock_folder

    lock = lock_folder(tmp_path / "run")
    with pytest.raises(UserError, match=rf"run: in use by PID {os.getpid()} since 20\d\d-"):
        lock_folder(tmp_path / "run")
    lock.release()
    lock_folder(tmp_path / "run").release()
    created = lock_folder(tmp_path / "new")
    created.release(remove_created=True)  # a failed setup leaves no folder behind
    assert not (tmp_path / "new").exists()


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    from cln_textgen.runs.files import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode
