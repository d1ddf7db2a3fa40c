"""Loading a trained run for generation: the Python API.

>>> from cln_textgen import TextGenerator
>>> gen = TextGenerator.from_run("runs/demo")
>>> gen.labels
['negative', 'positive']
>>> for sample in gen.generate("positive", n=3, seed=1, top_p=0.9):
...     print(sample["text"])

Everything comes from the run folder: no pretrained BERT is needed.  One
generator may serve any number of calls, of any shapes and options, in any
order: what it compiles is its own, bounded, and keyed by shape.
"""

import dataclasses
import warnings
from pathlib import Path

from cln_textgen import options as table
from cln_textgen.errors import UserError
from cln_textgen.generation.conditions import (condition_name, condition_weights_by_name,
                                               contrast, label_ids)
from cln_textgen.generation.generate import Decoding, generate
from cln_textgen.model.tokenization import TextTokenizer
from cln_textgen.options import GenerationOptions
from cln_textgen.runs.folder import open_run
from cln_textgen.runs.restore import checkpoint_step, load_model, resolve_checkpoint

class TextGenerator:
    """A trained conditional generator, loaded from its run folder.

    It owns its decoder and samplers (see :class:`~cln_textgen.generation.generate.Decoding`),
    so it can be kept open and called with any labels, prompts, counts and
    options: the same call gives the same texts whatever came before.
    """

    def __init__(self, model, tokenizer, labels, defaults=None, checkpoint=None, run=None,
                 jit_compile=True, null_id=None):
        self.model = model
        self.null_id = null_id  # the null condition's id (runs trained with label dropout)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.defaults = defaults or GenerationOptions()
        self.checkpoint = checkpoint
        self.run = run
        self.decoding = Decoding(model, jit_compile=jit_compile)

    @classmethod
    def from_run(cls, run_dir, checkpoint="best", label=None):
        """Load ``run_dir``.  ``label``, if given, is checked against the run's
        labels first; it and the checkpoint are checked before the model is built."""
        run = open_run(run_dir)
        config = run.read_config()
        labels = run.read_labels()
        if label is not None:
            label_ids(labels, label)
        resolve_checkpoint(run, checkpoint)  # fails fast: building the model takes seconds
        model, model_config, path = load_model(run, checkpoint)
        tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
        return cls(model, tokenizer, labels, config.generate, path, run.path,
                   null_id=model_config.null_id)

    def label_ids(self, label):
        """Conditions for ``label``: a name, ``"all"``, a mix (``"a=0.7,b=0.3"``
        or ``{"a": 0.7, "b": 0.3}``), or a list of names and mixes."""
        return label_ids(self.labels, label)

    def contrast(self, options, negative_label=None):
        """The condition ``options.guidance`` pushes away from (``None`` unguided)."""
        return contrast(self.labels, self.null_id, options.guidance, negative_label)

    def options(self, **overrides):
        """The generator's defaults (the run's ``generate:`` section) with
        ``overrides`` checked against the table of options."""
        return table.resolve(self.defaults, overrides, unknown=TypeError)

    def unknown_characters(self, prompt):
        """Characters of ``prompt`` the vocabulary lacks (the model sees [UNK] for them)."""
        return sorted({c for c in prompt if not c.isspace()
                       and self.tokenizer.unk_id in self.tokenizer.encode(c)})

    def describe(self, opts, n, negative_label=None):
        """What a result was made with: saved beside each text in JSONL."""
        return {"options": {o.name: getattr(opts, o.name) for o in table.OPTIONS}, "n": n,
                "negative_label": negative_label,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "step": checkpoint_step(self.checkpoint),
                "run": str(Path(self.run).resolve()) if self.run else None}

    def prepare(self, label, n=None, prompt="", negative_label=None, **options):
        """A checked :class:`Call`: the conditions of ``label``, the options
        (the run's defaults with ``options``), ``n`` (by default by decoding
        mode: 1 greedy, ``num_beams`` with beam search, otherwise 5) and what
        guidance contrasts with.  Every surface's request goes through here."""
        opts = self.options(**options)
        guided_from = self.contrast(opts, negative_label)
        n = table.default_n(opts) if n is None else n
        problem = table.check_n(n, opts)
        if problem:
            raise UserError(problem)
        return Call(self.label_ids(label), n, prompt, opts, guided_from, negative_label)

    def generate(self, label, n=None, prompt="", stream=None, negative_label=None, **options):
        """``n`` samples per label as dicts ``{label, text, prompt, seed}`` (and
        ``mix``, ``{label: weight}``, for a mix of labels).

        ``n`` defaults by decoding mode: 1 greedy, ``num_beams`` with beam
        search, otherwise 5.  ``text`` is ``prompt`` exactly as given, then
        the continuation; a prompt with characters the vocabulary lacks gets
        a warning (the model sees [UNK] there).  ``stream(row, text_piece)``,
        if given, receives the continuation as it is produced (``row`` indexes
        the returned list; ``None`` ends a row).  With ``guidance`` above 1,
        ``negative_label`` names the label guidance pushes away from; by
        default the run's null condition.
        """
        call = self.prepare(label, n, prompt, negative_label, **options)
        unknown = self.unknown_characters(prompt)
        if unknown:
            warnings.warn(f"prompt characters {' '.join(unknown)} are not in the run's "
                          "vocabulary: the model sees [UNK] there (the text keeps them)",
                          stacklevel=2)
        out = generate(self.model, self.tokenizer, call.conditions, n=call.n, prompt=prompt,
                       options=call.options, stream=stream, decoding=self.decoding,
                       contrast=call.contrast)
        return [self.result(g, call) for g in out]

    def result(self, generation, call):
        """The dict the API returns for one :class:`Generation` of ``call``."""
        condition = generation.label_id
        result = {"label": condition_name(self.labels, condition), "text": generation.text,
                  "prompt": call.prompt, "seed": call.options.seed}
        if isinstance(condition, tuple):
            result["mix"] = condition_weights_by_name(self.labels, condition)
        return result


@dataclasses.dataclass
class Call:
    """A checked generation request (see :meth:`TextGenerator.prepare`)."""

    conditions: list  # label ids and mixes, one per label asked for
    n: int  # texts per condition
    prompt: str
    options: object  # GenerationOptions
    contrast: object  # the condition guidance pushes away from, None unguided
    negative_label: str | None = None
