"""Evaluating a run: label control, fluency, diversity, memorisation, length.

The figures are those of the controllable-generation literature (PPLM, GeDi,
DExperts), each next to the same figure for real text of the same label:

* label accuracy: an independent classifier (:mod:`cln_textgen.evaluation.classifier`)
  labels every text; its accuracy on real text is the ceiling;
* fluency: perplexity under a baseline run trained without the condition, and
  both runs' perplexity on the real valid/test text (does the label help?);
* diversity: Distinct-1/2/3 and Self-BLEU-4 over the texts of one label;
* memorisation: texts equal to a training text, and the share of 8-grams
  (units, see :mod:`cln_textgen.evaluation.metrics`) found in the training text;
* length in units.

Real text is taken as the run sees it: split into pieces of at most
``data.max_length`` tokens and decoded back, so both sides have the same
casing, the same unknown characters dropped and the same maximum length.
Every user error is found before any model is loaded.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from cln_textgen.evaluation import metrics
from cln_textgen.evaluation.classifier import Classifier, ClassifierDir, default_dir
from cln_textgen.config import load_config
from cln_textgen.data.corpus import load_split
from cln_textgen.errors import UserError
from cln_textgen.evaluation.report import FIGURES, NGRAM, SELF_BLEU_N, write_reports
from cln_textgen.generation.generator import TextGenerator
from cln_textgen.generation.conditions import contrast
from cln_textgen.runs.restore import resolve_checkpoint
from cln_textgen.options import as_flag, resolve
from cln_textgen.runs.folder import open_run
from cln_textgen.evaluation.perplexity import make_scorer, split_loss


@dataclasses.dataclass
class EvalSettings:
    run: str
    classifier: str | None = None  # None: <run>-classifier
    baseline_run: str | None = None
    n: int = 100  # texts per label
    split: str = "test"  # where the real texts come from
    checkpoint: str = "best"
    samples: int = 5  # generated texts per label shown in report.md
    # The generation settings to evaluate: overrides of the run's generate:
    # section, one dict per setting (cln_textgen.options.sweep).  The first
    # setting's seed draws the real texts, its batch_size bounds scoring.
    sweep: list = dataclasses.field(default_factory=lambda: [{}])
    negative_label: str | None = None  # what guidance contrasts with (None: the null condition)


@dataclasses.dataclass
class Checked:
    """What :func:`_preflight` found: everything evaluate reads, checked."""
    run: object  # RunDir
    config: object
    labels: list
    checkpoint: str
    split_path: str
    classifier: ClassifierDir
    baseline: object  # RunDir or None
    notes: list
    sweep: list  # the GenerationOptions of each setting


def _preflight(s):
    """Every path, file and label check, before anything slow happens."""
    run = open_run(s.run)
    config, labels = run.read_config(), run.read_labels()
    checkpoint = resolve_checkpoint(run, s.checkpoint)
    split_path = getattr(config.data, s.split)
    if not split_path:
        other = "valid" if s.split == "test" else "test"
        raise UserError(f"{run.config}: data.{s.split} is not set, so there is no real text to "
                        f"compare with; pass --split {other}")
    folder = ClassifierDir(s.classifier or default_dir(run.path))
    if not folder.is_complete():
        raise UserError(f"{folder.path}: no trained classifier there; train one with: "
                        f"cln-textgen classifier train --config {run.config} (or pass "
                        "--classifier DIR)")
    judged = folder.read_json(folder.labels)
    if sorted(judged) != sorted(labels):
        raise UserError(f"{folder.labels}: labels {', '.join(judged)} differ from the run's "
                        f"{', '.join(labels)} ({run.labels}); train the classifier on the run's "
                        f"config: cln-textgen classifier train --config {run.config}")
    for key in ("train", "valid", "test"):
        path = getattr(config.data, key)
        if path and not Path(path).is_file():
            raise UserError(f"{path}: not found (data.{key} of {run.config}); evaluate reads the "
                            "run's data: restore the file, or run from the folder it was "
                            "trained in if the path is relative")
    notes = []
    judge_data = load_config(folder.config).data.train
    if judge_data != config.data.train:
        notes.append(f"the classifier was trained on {judge_data}, the run on {config.data.train}")
    baseline = None
    if s.baseline_run:
        baseline = open_run(s.baseline_run)
        base_config = baseline.read_config()
        if base_config.model.conditional:
            raise UserError(f"--baseline-run {s.baseline_run}: model.conditional is true there; "
                            "train the baseline with the run's config plus --set "
                            "model.conditional=false --set run_dir=DIR")
        resolve_checkpoint(baseline, s.checkpoint)
        for key in ("train", "max_length"):
            mine, theirs = getattr(config.data, key), getattr(base_config.data, key)
            if mine != theirs:
                notes.append(f"the baseline has data.{key}={theirs}, the run {mine}")
        if base_config.model.pretrained != config.model.pretrained:
            notes.append(f"the baseline started from {base_config.model.pretrained}, the run "
                         f"from {config.model.pretrained}")
    # Evaluation samples: beams and greedy decoding give (nearly) one text.
    sweep = [resolve(config.generate, {**overrides, "num_beams": 1, "greedy": False},
                     spell=as_flag) for overrides in s.sweep]
    null_id = run.read_model_config().null_id
    for options in sweep:
        contrast(labels, null_id, options.guidance, s.negative_label)
    return Checked(run, config, labels, checkpoint, split_path, folder, baseline, notes, sweep)


def evaluate(s, say=print):
    """Run the whole evaluation, one report per setting of ``s.sweep`` (the
    model, the classifier, the baseline and the real texts are loaded and
    judged once); returns ``(reports, folder)``."""
    checked = _preflight(s)
    run, config, labels, checkpoint = (checked.run, checked.config, checked.labels,
                                       checked.checkpoint)
    folder, baseline = checked.classifier, checked.baseline
    first = checked.sweep[0]
    batch_size = first.batch_size

    generator = TextGenerator.from_run(run.path, s.checkpoint)
    tokenizer = generator.tokenizer
    splits = {}

    def split(name):  # each split is read and encoded once
        if name not in splits:
            splits[name] = load_split(name, getattr(config.data, name), config, tokenizer, labels)
        return splits[name]

    notes = list(checked.notes)
    real = _sample_real(split(s.split), tokenizer, labels, s.n, first.seed)
    for label in labels:
        if len(real[label]) < s.n:
            notes.append(f"label {label}: only {len(real[label])} real texts in the {s.split} "
                         f"split for {s.n} generated; figures that depend on the count "
                         "(Distinct-n, Self-BLEU) compare less well")
    judge = Classifier.load(folder.path)
    train_texts = [tokenizer.decode(ids) for ids in split("train").encoded.token_ids]
    real_splits = [name for name in ("valid", "test") if getattr(config.data, name)]
    say("perplexity of real text" + (" (run and baseline)" if baseline else ""))
    score = make_scorer(generator.model, tokenizer.pad_id, batch_size)
    perplexity = {"run": {name: _perplexities(score, split(name).encoded.token_ids,
                                              split(name).encoded.label_ids, labels)
                          for name in real_splits}, "baseline": None}
    base = None
    if baseline is not None:
        base = _Baseline(baseline, s.checkpoint, batch_size)
        perplexity["baseline"] = base.splits(config, labels, real_splits)
    say(f"judging real text with the classifier in {folder.path}")
    real_figures = _figures(judge, base, {"real": real}, train_texts, labels, batch_size)

    reports = []
    for k, options in enumerate(checked.sweep, 1):
        where = f"setting {k}/{len(checked.sweep)}: " if len(checked.sweep) > 1 else ""
        say(f"{where}generating {s.n} texts per label from {checkpoint} "
            f"({describe_changes(options, config.generate)})")
        generated = {label: [x["text"] for x in generator.generate(
            label, n=s.n, negative_label=s.negative_label, **dataclasses.asdict(options))]
            for label in labels}
        say(f"{where}judging, diversity, copies of training text"
            + (", baseline perplexity" if base else ""))
        table = _figures(judge, base, {"generated": generated}, train_texts, labels, batch_size)
        for label in labels:
            table[label]["real"] = real_figures[label]["real"]
        report = {
            "run": str(run.path), "checkpoint": str(checkpoint),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "settings": {
                "n_per_label": s.n, "seed": options.seed, "real_split": s.split,
                "real_file": str(checked.split_path), "batch_size": batch_size,
                "generation": dataclasses.asdict(options),
                "negative_label": s.negative_label,
                "generation_seeds": "text i of every label draws from (seed, i), whatever the "
                                    "batch size: every label gets the same seeds; the seed "
                                    "of the first setting also draws the real texts",
                "units": "CJK characters, words (letter/digit runs), punctuation marks",
                "ngram_n": NGRAM, "self_bleu_max_n": SELF_BLEU_N,
                "classifier": str(folder.path),
                "baseline_run": str(baseline.path) if baseline else None,
            },
            "classifier": {"dir": str(folder.path),
                           "test_accuracy": judge.report["test"]["micro"],
                           "test_macro_accuracy": judge.report["test"]["macro"],
                           "test_examples": judge.report["test"]["examples"]},
            "labels": table,
            "macro": {g: {key: metrics.macro(table[label][g].get(key) for label in labels)
                          for key, _, _ in FIGURES} for g in ("generated", "real")},
            "perplexity": perplexity,
            "notes": notes,
        }
        reports.append((report, generated))
    out = write_reports(run, reports, s.samples)
    return [report for report, _ in reports], out


def describe_changes(options, defaults):
    """``name=value`` of the options that differ from the run's generate: section."""
    changed = [f"{name}={value}" for name, value in dataclasses.asdict(options).items()
               if getattr(defaults, name) != value]
    return " ".join(changed) or "the run's generate: section"


def _figures(judge, base, groups, train_texts, labels, batch_size):
    """Every figure of each group of texts (``{group: {label: texts}}``), as
    ``{label: {group: figures}}``."""
    table = {label: {g: {"count": len(groups[g][label])} for g in groups} for label in labels}
    _judge(judge, groups, labels, table, batch_size)
    _text_figures(groups, train_texts, labels, table)
    if base is not None:
        base.texts(groups, labels, table)
    return table


def _judge(judge, groups, labels, table, batch_size):
    """Label accuracy, and mean probability of the wanted label, by the classifier."""
    for g, texts in groups.items():
        for label in labels:
            probs = judge.probabilities(texts[label], batch_size)
            want, row = judge.labels.index(label), table[label][g]
            row["label_accuracy"] = float(np.mean(probs.argmax(-1) == want)) if len(probs) else None
            row["target_probability"] = float(probs[:, want].mean()) if len(probs) else None


def _text_figures(groups, train_texts, labels, table):
    """Diversity, copies of training text and length of every group of texts."""
    train = [metrics.units(t) for t in train_texts]
    units = {g: {label: [metrics.units(t) for t in texts[label]] for label in labels}
             for g, texts in groups.items()}
    wanted = {gram for per_label in units.values() for texts in per_label.values()
              for text in texts for gram in metrics.ngrams(text, NGRAM)}
    found = metrics.ngrams_found(wanted, train, NGRAM)
    train_set = {tuple(text) for text in train}
    for g, per_label in units.items():
        for label, texts in per_label.items():
            row = table[label][g]
            for n in (1, 2, 3):
                row[f"distinct_{n}"] = metrics.distinct_n(texts, n)
            row["self_bleu_4"] = metrics.self_bleu(texts, SELF_BLEU_N)
            row["exact_copy_rate"] = metrics.exact_copy_rate(texts, train_set)
            row["train_ngram_overlap"], row["train_ngrams"] = metrics.ngram_overlap(
                texts, found, NGRAM)
            stats = metrics.length_stats(texts)
            row["length_mean"], row["length_median"] = stats["mean"], stats["median"]


def _sample_real(split, tokenizer, labels, n, seed):
    """Up to ``n`` pieces of each label, drawn without replacement, as text."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(split.encoded.label_ids)
    out = {}
    for i, label in enumerate(labels):
        rows = np.flatnonzero(ids == i)
        chosen = rng.choice(rows, size=min(n, len(rows)), replace=False)
        out[label] = [tokenizer.decode(split.encoded.token_ids[r]) for r in chosen]
    return out


def _perplexities(score, token_ids, label_ids, labels):
    """Token-weighted perplexity per label and over all (``"all"``); None
    where there is no token."""
    result = split_loss(score, token_ids, label_ids, labels)
    out = {label: result.per_label[label]["ppl"] if label in result.per_label else None
           for label in labels}
    out["all"] = result.ppl if result.tokens else None
    return out


class _Baseline:
    """The unconditional baseline run, loaded once: its perplexity on the real
    splits and on any texts."""

    def __init__(self, baseline, checkpoint, batch_size):
        self.config = baseline.read_config()
        generator = TextGenerator.from_run(baseline.path, checkpoint)
        self.tokenizer = generator.tokenizer
        self.score = make_scorer(generator.model, self.tokenizer.pad_id, batch_size)

    def splits(self, config, labels, split_names):
        """Perplexity of the run's real splits, read in the baseline's vocabulary."""
        out = {}
        for name in split_names:
            e = load_split(name, getattr(config.data, name), config, self.tokenizer,
                           labels).encoded
            out[name] = _perplexities(self.score, e.token_ids, e.label_ids, labels)
        return out

    def texts(self, groups, labels, table):
        """``baseline_perplexity`` of each group's texts, per label, into ``table``."""
        for g, texts in groups.items():
            pairs = [(self.tokenizer.encode(t, self.config.data.max_length), i)
                     for i, label in enumerate(labels) for t in texts[label]]
            ppl = _perplexities(self.score, [p[0] for p in pairs], [p[1] for p in pairs],
                                labels)
            for label in labels:
                table[label][g]["baseline_perplexity"] = ppl[label]
