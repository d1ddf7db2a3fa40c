"""Loading a trained run for generation: the Python API.

>>> from cln_textgen import TextGenerator
>>> gen = TextGenerator.from_run("runs/demo")
>>> gen.labels
['negative', 'positive']
>>> for sample in gen.generate("positive", n=3, seed=1, top_p=0.9):
...     print(sample["text"])

Everything comes from the run folder: no pretrained BERT is needed.
"""

import dataclasses
from pathlib import Path

from cln_textgen.errors import UserError
from cln_textgen.generation.texts import GenerationOptions, generate
from cln_textgen.model.modeling import build_model
from cln_textgen.runs.checkpoints import none_readable, unreadable_reason
from cln_textgen.runs.folder import open_run
from cln_textgen.model.tokenization import TextTokenizer

CHECKPOINT_CHOICES = ("best", "latest")


def resolve_checkpoint(run, which="best"):
    """Path of the ``best`` (falls back to latest without valid data) or ``latest``
    checkpoint, or ``which`` itself if it names a checkpoint prefix.  ``best`` and
    ``latest`` are the newest checkpoints that read back: a damaged one is
    skipped with a warning (runs/checkpoints.py)."""
    if which == "best":
        path = run.best_checkpoint() or run.latest_checkpoint()
    elif which == "latest":
        path = run.latest_checkpoint()
    else:
        path = which if Path(which + ".index").is_file() else None
        if path is None:
            raise UserError(f"--checkpoint {which}: not 'best', 'latest' or a checkpoint "
                            "prefix (a path whose .index file exists)")
        reason = unreadable_reason(path)
        if reason:
            raise UserError(f"--checkpoint {which}: does not read back ({reason}); pass "
                            "'best', 'latest' or another checkpoint")
    if path is None:
        if run.has_checkpoints():
            raise none_readable(run.checkpoints, "restore them from a backup, or train the run "
                                                 "again with --fresh")
        raise UserError(f"{run.checkpoints}: no checkpoints yet; train the run first "
                        f"(cln-textgen train --config {run.config})")
    return path


def load_model(run, checkpoint="best"):
    """``(model, model_config, checkpoint_path)`` restored from a run folder.

    A trainer may delete the chosen checkpoint (its rotation) between the choice
    and the read: the newest one is then chosen again."""
    from cln_textgen.backend import tf

    model_config = run.read_model_config()
    model = build_model(model_config)
    for attempt in range(3):
        path = resolve_checkpoint(run, checkpoint)
        try:
            tf.train.Checkpoint(model=model).restore(path).expect_partial() \
                .assert_existing_objects_matched()
        except tf.errors.NotFoundError:
            if attempt < 2 and not Path(path + ".index").is_file():
                continue  # rotated away while it was read
            raise UserError(f"{path}: removed while it was read; run the command again") from None
        except (AssertionError, tf.errors.OpError, ValueError) as e:
            raise UserError(f"{path}: the checkpoint does not fit this run's model.json "
                            f"({str(e).splitlines()[0]})") from None
        return model, model_config, path


class TextGenerator:
    """A trained conditional generator, loaded from its run folder."""

    def __init__(self, model, tokenizer, labels, defaults=None, checkpoint=None):
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.defaults = defaults or GenerationOptions()
        self.checkpoint = checkpoint

    @classmethod
    def from_run(cls, run_dir, checkpoint="best"):
        run = open_run(run_dir)
        config = run.read_config()
        model, _, path = load_model(run, checkpoint)
        tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
        defaults = GenerationOptions.from_config(config.generate)
        return cls(model, tokenizer, run.read_labels(), defaults, path)

    def label_ids(self, label):
        """Ids for ``label``: a name, a list of names, or ``"all"``."""
        names = self.labels if label == "all" else [label] if isinstance(label, str) else list(label)
        unknown = [name for name in names if name not in self.labels]
        if unknown:
            raise UserError(f"unknown label {unknown[0]!r}; valid labels: "
                            f"{', '.join(self.labels)} (or 'all')")
        return [self.labels.index(name) for name in names]

    def options(self, **overrides):
        fields = {f.name for f in dataclasses.fields(GenerationOptions)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"unknown generation option {unknown[0]!r}; known: {sorted(fields)}")
        return dataclasses.replace(self.defaults, **overrides)

    def generate(self, label, n=1, prompt="", stream=None, **options):
        """``n`` samples per label as dicts ``{label, text, prompt, seed}``.

        ``stream(row, text_piece)``, if given, receives text as it is produced
        (``row`` indexes the returned list; ``None`` ends a row).
        """
        opts = self.options(**options)
        out = generate(self.model, self.tokenizer, self.label_ids(label), n=n, prompt=prompt,
                       options=opts, stream=stream)
        return [{"label": self.labels[g.label_id], "text": g.text, "prompt": prompt,
                 "seed": opts.seed} for g in out]
