import json
import math
import random
import shutil

import pytest

from conftest import write_tiny_task
from cln_textgen.cli import main
from cln_textgen.runs.folder import RunDir


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """A copy of the shared tiny run, an unconditional baseline and a classifier for it
    (a few steps each), and one evaluation of the copy."""
    root = tmp_path_factory.mktemp("evaluate")
    run = root / "run"
    shutil.copytree(trained_run, run)  # the evaluation folder goes into the copy only
    config = str(trained_run.parent / "config.yaml")
    valid = str(trained_run.parent / "valid.tsv")
    base = root / "base"
    assert main(["train", "--config", config, "--set", "model.conditional=false",
                 "--set", f"run_dir={base}", "--set", "train.max_steps=4",
                 "--set", "train.samples_per_label=0", "--no-progress"]) == 0
    # the default place evaluate looks in: <run>-classifier
    assert main(["classifier", "train", "--config", config, "--set", f"data.test={valid}",
                 "--set", "train.max_steps=6", "--out", str(root / "run-classifier"),
                 "--no-progress"]) == 0
    assert main(["evaluate", "--run", str(run), "--baseline-run", str(base), "--split", "valid",
                 "-n", "6", "--batch-size", "4", "--max-new-tokens", "8", "--seed", "1",
                 "--samples", "2"]) == 0
    (folder,) = (run / "evaluation").iterdir()
    return run, base, root / "run-classifier", folder


@pytest.mark.slow
def test_report_files_and_settings(evaluated):
    run, base, _, folder = evaluated
    for name in ("report.json", "report.md", "report.png", "generations.jsonl"):
        assert (folder / name).is_file(), name
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    s = report["settings"]
    assert (s["n_per_label"], s["seed"], s["real_split"]) == (6, 1, "valid")
    assert s["generation"]["max_new_tokens"] == 8 and s["generation"]["num_beams"] == 1
    # --seed seeds the generations, --batch-size their chunks and the scoring
    assert s["generation"]["seed"] == 1 and s["generation"]["batch_size"] == s["batch_size"] == 4
    assert s["baseline_run"] == str(base) and report["checkpoint"].endswith("ckpt-20")
    generations = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines()]
    assert [g["label"] for g in generations] == ["0"] * 6 + ["1"] * 6
    md = (folder / "report.md").read_text(encoding="utf-8")
    for part in ("## All labels (macro average)", "## Label 0", "## Label 1", "## Samples",
                 "| label accuracy (classifier) |", "| perplexity under the baseline |",
                 "| valid | all |"):
        assert part in md, part
    assert md.count(f"- {generations[0]['text']}\n") >= 1


@pytest.mark.slow
def test_figures_are_in_range_and_consistent(evaluated):
    _, _, _, folder = evaluated
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    ratios = ("label_accuracy", "target_probability", "distinct_1", "distinct_2", "distinct_3",
              "self_bleu_4", "exact_copy_rate")
    for label in ("0", "1"):
        for group in ("generated", "real"):
            row = report["labels"][label][group]
            assert row["count"] == 6
            assert all(0 <= row[k] <= 1 for k in ratios), row
            assert row["baseline_perplexity"] > 1 and math.isfinite(row["baseline_perplexity"])
        # one token is at most one unit, and at most 8 tokens were generated
        assert report["labels"][label]["generated"]["length_mean"] <= 8
    macro = report["macro"]["generated"]["distinct_2"]
    per_label = [report["labels"][x]["generated"]["distinct_2"] for x in ("0", "1")]
    assert macro == pytest.approx(sum(per_label) / 2)


@pytest.mark.slow
def test_perplexity_matches_the_trainers_evaluation(evaluated):
    run, _, _, folder = evaluated
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = min((e for e in evals if e["event"] == "eval"), key=lambda e: e["valid_loss"])
    valid = report["perplexity"]["run"]["valid"]
    assert valid["all"] == pytest.approx(best["valid_ppl"], rel=1e-4)
    for label, figures in best["per_label"].items():
        assert valid[label] == pytest.approx(figures["ppl"], rel=1e-4)
    assert set(report["perplexity"]["baseline"]["valid"]) == {"0", "1", "all"}


@pytest.mark.slow
def test_label_accuracy_is_the_classifiers_verdict(evaluated):
    from cln_textgen.evaluation.classifier import Classifier

    _, _, judge_dir, folder = evaluated
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    judge = Classifier.load(judge_dir)
    generations = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines()]
    for label in judge.labels:
        texts = [g["text"] for g in generations if g["label"] == label]
        predicted = judge.probabilities(texts).argmax(-1)
        expected = sum(judge.labels[p] == label for p in predicted) / len(texts)
        assert report["labels"][label]["generated"]["label_accuracy"] == pytest.approx(expected)
    # reloaded, the classifier reproduces the accuracy it reported on its test split
    # (the run's valid.tsv, whose short lines are encoded whole)
    assert report["classifier"]["test_accuracy"] == judge.report["test"]["micro"]
    valid = RunDir(folder.parents[1]).read_config().data.valid
    rows = [line.rsplit("\t", 1) for line in open(valid, encoding="utf-8").read().splitlines()]
    predicted = judge.probabilities([text for text, _ in rows]).argmax(-1)
    right = sum(judge.labels[p] == label for p, (_, label) in zip(predicted, rows))
    assert judge.report["test"]["micro"] == pytest.approx(right / len(rows))


@pytest.fixture
def stand_in(trained_run, tmp_path):
    """A copy of the shared run beside a stand-in classifier folder: the files that
    evaluate checks before it loads anything (no weights are ever read from it here)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    judge = tmp_path / "run-classifier"
    judge.mkdir()
    for name in ("classifier.json", "vocab.txt", "report.json", "weights.index"):
        (judge / name).write_text("{}", encoding="utf-8")
    shutil.copy(run / "config.yaml", judge / "config.yaml")
    (judge / "labels.json").write_text('["0", "1"]', encoding="utf-8")
    return run, judge


@pytest.mark.parametrize("args,message", [
    (["--classifier", "{run}/none"], "none: no trained classifier there; train one with: "
                                     "cln-textgen classifier train --config"),
    (["--baseline-run", "{run}"], "model.conditional is true there; train the baseline with"),
    (["--split", "test"], "data.test is not set, so there is no real text to compare with; "
                          "pass --split valid"),
    (["-n", "0"], "-n: must be at least 1"),
    (["--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["--run", "{run}/nowhere"], "nowhere: run folder not found"),
    (["--negative-label", "nope", "--guidance", "2"], "unknown label 'nope'"),
    (["--negative-label", "1"], "only matters with guidance"),
])
def test_evaluate_user_errors(stand_in, capsys, args, message):
    run, _ = stand_in
    args = [a.format(run=run) for a in args]
    split = [] if "--split" in args else ["--split", "valid"]
    assert main(["evaluate", "--run", str(run), *split, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_errors_on_checkpoints_labels_and_data(stand_in, capsys):
    run, judge = stand_in
    (judge / "labels.json").write_text('["neg", "pos"]', encoding="utf-8")
    assert main(["evaluate", "--run", str(run), "--split", "valid"]) == 2
    err = capsys.readouterr().err
    assert "labels.json: labels neg, pos differ from the run's 0, 1" in err
    assert "classifier train --config" in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(run / "checkpoints")
    assert main(["evaluate", "--run", str(run), "--split", "valid"]) == 2
    assert "no checkpoints yet; train the run first" in capsys.readouterr().err


def test_classifier_user_errors(trained_run, tmp_path, capsys):
    config = str(trained_run.parent / "config.yaml")
    (tmp_path / "taken.txt").write_text("x", encoding="utf-8")
    cases = [
        (["classifier"], "classifier: give an action"),
        (["classifier", "train"], "--config: give the run's YAML config"),
        (["classifier", "train", "--config", config, "--out", str(tmp_path / "new")],
         "data.test: not set; the classifier reports its accuracy on the test split"),
        (["classifier", "train", "--config", config, "--set", "data.test=x.tsv", "--out",
          str(tmp_path)], "already exists and is not empty; delete it or pass --out DIR"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_classifier_learns_a_separable_task(tmp_path, capsys):
    """Labels that any working classifier tells apart: texts of one set of
    characters or of another.  A broken head, loader or loop stays near 50 %."""
    sets = {"neg": "差烂糟坏慢贵", "pos": "好棒喜欢赞爱"}
    config = write_tiny_task(tmp_path, extra_chars="".join(sets.values()))
    rng = random.Random(0)
    for name, count in (("train", 96), ("valid", 20), ("test", 20)):
        lines = []
        for i in range(count):
            label = ("neg", "pos")[i % 2]
            text = "".join(rng.choice(sets[label]) for _ in range(rng.randint(4, 10)))
            lines.append(f"{text}\t{label}")
        (tmp_path / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["classifier", "train", "--config", str(config),
                 "--set", f"data.test={tmp_path / 'test.tsv'}", "--set", "classifier.epochs=3",
                 "--set", "classifier.learning_rate=0.003", "--set", "train.warmup_ratio=0",
                 "--no-progress"]) == 0
    folder = tmp_path / "run-classifier"
    report = json.loads((folder / "report.json").read_text())
    assert report["test"]["micro"] >= 0.9
    assert report["test"]["confusion"]["pos"]["pos"] >= 9
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    assert all(0 <= e["valid_accuracy"] <= 1 for e in report["epochs"])
    # The generator's loop: checkpoints in the folder, and a second call resumes from them.
    assert (folder / "checkpoints" / "best" / "checkpoint").is_file()
    for done in [folder / "report.json", *folder.glob("weights.*")]:
        done.unlink()
    assert main(["classifier", "train", "--config", str(config), "--no-progress",
                 "--set", f"data.test={tmp_path / 'test.tsv'}", "--set", "classifier.epochs=3",
                 "--set", "classifier.learning_rate=0.003", "--set", "train.warmup_ratio=0"]) == 0
    again = json.loads((folder / "report.json").read_text())
    assert "resuming from" in capsys.readouterr().out
    assert (again["steps"], again["kept_step"], again["test"]) == (
        report["steps"], report["kept_step"], report["test"])


def test_the_classifier_loss_counts_real_rows_only():
    # Rows added so that replicas split a batch evenly must not count as texts.
    import types

    from cln_textgen.data import batching
    from cln_textgen.evaluation.classifier import ClassifierConfig, build_classifier
    from cln_textgen.tasks.classifier import ClassifierTask, LabelLoss

    config = ClassifierConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32, hidden_act="gelu",
                              max_position=32, layer_norm_eps=1e-12, num_labels=2, max_length=16,
                              lower_case=True, dropout=0.0, attention_dropout=0.0, seed=0)
    loss = LabelLoss(build_classifier(config), pad_id=0)
    rows = [[2, 7, 8, 3], [2, 9, 3], [2, 11, 12, 13, 3]]
    plain = batching.pad_batch(rows, [1, 0, 1], [0, 1, 2])
    filled = batching.pad_batch(rows, [1, 0, 1], [0, 1, 2], rows_multiple=4)
    assert filled[0].shape[0] == 4
    assert float(loss(*filled)) == pytest.approx(float(loss(*plain)), rel=1e-6)
    assert float(loss(*plain)) > 0
    task = types.SimpleNamespace(tokenizer=types.SimpleNamespace(pad_id=0))
    assert ClassifierTask.count_targets(task, filled) == 3


@pytest.mark.slow
def test_a_sweep_reports_each_setting_and_the_trade_off(evaluated, capsys):
    run, base, classifier, first = evaluated
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--baseline-run", str(base), "--split", "valid",
                 "-n", "4", "--max-new-tokens", "6", "--guidance", "1,2",
                 "--temperature", "0.7,1.0,0.7", "--samples", "0"]) == 0
    printed = capsys.readouterr().out
    folder = max((run / "evaluation").iterdir())
    assert folder != first
    sweep = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    settings = [(s["generation"]["temperature"], s["generation"]["guidance"]) for s in sweep]
    # every combination once, in the table's order of options (temperature first)
    assert settings == [(0.7, 1.0), (0.7, 2.0), (1.0, 1.0), (1.0, 2.0)]
    assert (folder / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "sweep.md").read_text(encoding="utf-8")
    assert "| temperature=0.7 guidance=2 |" in md and "| real text |" in md
    assert "temperature=1 guidance=2" in printed and "sweep.md" in printed
    reports = [json.loads((folder / f"setting-{k}" / "report.json").read_text(encoding="utf-8"))
               for k in range(1, 5)]
    # the real texts are judged once: every setting shows the same real figures
    assert all(r["macro"]["real"] == reports[0]["macro"]["real"] for r in reports)
    assert [r["settings"]["generation"]["guidance"] for r in reports] == [1.0, 2.0, 1.0, 2.0]
    # a setting of the sweep is the same evaluation as that setting alone
    assert main(["evaluate", "--run", str(run), "--baseline-run", str(base), "--split", "valid",
                 "-n", "4", "--max-new-tokens", "6", "--guidance", "2", "--temperature", "1.0",
                 "--samples", "0"]) == 0
    alone = json.loads((max((run / "evaluation").iterdir()) / "report.json").read_text())
    assert alone["labels"] == reports[3]["labels"]


def test_sweep_values_are_checked(trained_run, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own check of a list
        main(["evaluate", "--run", str(trained_run), "--split", "valid", "--guidance", "1,x"])
    assert e.value.code == 2
    assert "argument --guidance: invalid comma-separated float value: '1,x'" in \
        capsys.readouterr().err
    assert main(["evaluate", "--run", str(trained_run), "--split", "valid",
                 "--guidance", "1,-1"]) == 2
    assert "--guidance: must be >= 0 (1.0: off), got -1.0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_mix_sweep_script(evaluated, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "sweep_mix.py"
    spec = importlib.util.spec_from_file_location("sweep_mix", path)
    sweep_mix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_mix)
    run = evaluated[0]
    capsys.readouterr()
    sweep_mix.main(["--run", str(run), "--labels", "1", "0", "--weights", "0,0.5,1", "-n", "3",
                    "--guidance", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["0.00", "0.50", "1.00"]
    assert all(0 <= float(row[1]) <= 1 and row[2].endswith("%") for row in rows)
