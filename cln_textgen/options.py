"""The one table of generation options.

Every surface derives from :data:`OPTIONS`: the run config's ``generate:``
section (:class:`GenerationOptions` is that section), the ``generate`` and
``evaluate`` flags (:func:`add_flags`), the Python API
(``TextGenerator.generate(**options)``, checked by :func:`resolve`) and the
samplers' own checks (:func:`check`).  A new option is one more row here.

Pure Python: the CLI builds its ``--help`` from this table without TensorFlow.
"""

import argparse
import dataclasses
import difflib
import numbers

from cln_textgen.errors import UserError


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: object
    # value -> bool, or None for any value; written with & so that it also
    # checks a tensor (the exported graph checks its inputs by these rules)
    valid: object
    rule: str  # what ``valid`` asks, as said after the option's name
    help: str
    # Whether ``evaluate`` offers it: evaluation always samples, since beams
    # and greedy decoding return (nearly) one text, which no diversity figure judges.
    evaluate: bool = True
    # Whether the decoding engine reads it per row (each row of a batch may
    # have its own value: the server batches requests with different options);
    # the others shape the call itself (how many beams, rows per batch).
    per_row: bool = True

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


OPTIONS = (
    Option("max_new_tokens", int, 64, lambda v: v >= 1, "must be >= 1",
           "length limit in tokens"),
    Option("min_new_tokens", int, 0, lambda v: v >= 0, "must be >= 0",
           "no end of text before this many tokens"),
    Option("temperature", float, 1.0, lambda v: v > 0, "must be > 0",
           "divide the logits by this (below 1: safer, above 1: more varied)"),
    Option("top_k", int, 0, lambda v: v >= 0, "must be >= 0 (0: off)",
           "sample from the k likeliest tokens (0: off)"),
    Option("top_p", float, 1.0, lambda v: (v > 0) & (v <= 1), "must be in (0, 1]",
           "nucleus sampling: the likeliest tokens holding this mass (1.0: off)"),
    Option("repetition_penalty", float, 1.0, lambda v: v > 0, "must be > 0 (1.0: off)",
           "CTRL-style penalty on tokens already present (1.0: off)"),
    Option("no_repeat_ngram", int, 0, lambda v: v >= 0, "must be >= 0 (0: off)",
           "forbid repeating n-grams of this size (0: off)"),
    Option("guidance", float, 1.0, lambda v: v >= 0, "must be >= 0 (1.0: off)",
           "classifier-free guidance strength: above 1 the label weighs more, against the "
           "null condition (runs trained with model.label_dropout) or a negative label "
           "(1.0: off)"),
    Option("num_beams", int, 1, lambda v: v >= 1, "must be >= 1",
           "beam search with this many beams; returns up to that many texts per label",
           evaluate=False, per_row=False),
    Option("greedy", bool, False, None, "",
           "always take the likeliest token (one text per label)", evaluate=False),
    Option("seed", int, 0, lambda v: (v >= 0) & (v <= 2**31 - 1), "must be in [0, 2**31)",
           "sample i of a call draws from (seed, i): same seed and options, same texts"),
    Option("batch_size", int, 32, lambda v: v >= 1, "must be >= 1",
           "rows decoded at once; bounds memory, not the results", per_row=False),
)

BY_NAME = {option.name: option for option in OPTIONS}
# The options every decoded row carries (see Option.per_row).
ROW_OPTIONS = tuple(o for o in OPTIONS if o.per_row)

# Texts per label when -n is not given, by decoding mode (see default_n).
SAMPLES_DEFAULT = 5


def _make_options_class():
    fields = [(o.name, o.type, dataclasses.field(default=o.default)) for o in OPTIONS]
    return dataclasses.make_dataclass("GenerationOptions", fields, namespace={
        "__doc__": "Decoding options: one field per row of cln_textgen.options.OPTIONS; "
                   "also the run config's generate: section.",
        "__module__": __name__,
        "from_config": classmethod(lambda cls, section, **overrides:
                                   dataclasses.replace(section, **overrides)),
    })


GenerationOptions = _make_options_class()


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def check(name, value):
    """The rule ``value`` breaks (text), or ``None``; the samplers' checks too."""
    option = BY_NAME[name]
    kinds = {bool: bool, int: numbers.Integral, float: numbers.Real}[option.type]
    if not isinstance(value, kinds) or (option.type is not bool and isinstance(value, bool)):
        return f"must be {_KIND_NAMES[option.type]}"
    return None if option.valid is None or option.valid(value) else option.rule


# Options that contradict each other: (what breaks the rule, its name in a
# graph's error, the message with the values).  The tests are written with &
# so that they also check tensors (the exported graph's inputs).
CONTRADICTIONS = (
    (lambda o: o.min_new_tokens > o.max_new_tokens,
     "min_new_tokens must not be above max_new_tokens",
     lambda o: f"min_new_tokens={o.min_new_tokens} is above max_new_tokens="
               f"{o.max_new_tokens}; lower one or raise the other"),
    (lambda o: o.greedy & (o.num_beams > 1),
     "greedy and num_beams above 1 are two decoding modes; choose one",
     lambda o: f"greedy and num_beams={o.num_beams} are two decoding modes; choose one"),
)


def contradiction(options):
    """The one-line reason ``options`` (a :class:`GenerationOptions`) contradict
    each other, with the surface-neutral option names, or ``None``."""
    for breaks, _, message in CONTRADICTIONS:
        if breaks(options):
            return message(options)
    return None


def default_n(options):
    """Texts per label when the caller gives none: 1 greedy, num_beams for beam
    search, otherwise :data:`SAMPLES_DEFAULT`."""
    if options.greedy:
        return 1
    return options.num_beams if options.num_beams > 1 else SAMPLES_DEFAULT


# What ``n`` texts per label may not be: (what breaks the rule, its name in a
# graph's error, the message); ``repeats`` lets greedy decoding return its one
# text ``n`` times (the trainer's samples).
N_RULES = (
    (lambda n, o, repeats: n < 1, "n must be at least 1",
     lambda name, n, o: f"{name}: must be at least 1, got {n}"),
    (lambda n, o, repeats: o.greedy & (n > 1) & (not repeats),
     "greedy decoding gives one text per label",
     lambda name, n, o: f"{name}={n}: greedy decoding gives one text per label; drop {name} "
                        "or sample (without greedy)"),
    (lambda n, o, repeats: (o.num_beams > 1) & (n > o.num_beams),
     "beam search returns at most num_beams texts",
     lambda name, n, o: f"{name}={n}: beam search returns at most num_beams={o.num_beams} "
                        f"texts per label; raise num_beams or lower {name}"),
)


def check_n(n, options, name="n", repeats=False):
    """The reason ``n`` texts per label cannot come from ``options``, or ``None``."""
    for breaks, _, message in N_RULES:
        if breaks(n, options, repeats):
            return message(name, n, options)
    return None


def resolve(defaults, overrides, spell=lambda name: name, unknown=UserError):
    """``defaults`` with ``overrides`` (``{name: value}``; ``None`` values are
    unset) applied and checked.  ``spell(name)`` is how the surface names an
    option in a message (``--top-p``, ``generate.top_p``, ``top_p=``);
    ``unknown`` is the error class for a name the table lacks."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for name in overrides:
        if name not in BY_NAME:
            close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(BY_NAME)}"
            raise unknown(f"unknown generation option {name!r}{hint}")
    options = dataclasses.replace(defaults, **overrides)
    for name in BY_NAME:
        value = getattr(options, name)
        broken = check(name, value)
        if broken:
            raise UserError(f"{spell(name)}: {broken}, got {value!r}")
    problem = contradiction(options)
    if problem:
        raise UserError(problem)
    return options


def as_flag(name):
    """How the command line spells option ``name``: ``--top-p``; a ``spell`` for :func:`resolve`."""
    return BY_NAME[name].flag


def _values_of(kind):
    """An argparse type: a comma-separated list of ``kind`` values."""
    def parse(text):
        return [kind(part) for part in text.split(",")]
    parse.__name__ = f"comma-separated {kind.__name__}"  # argparse names it in errors
    return parse


def add_flags(parser, evaluate=False):
    """One flag per option (those ``evaluate`` offers, with ``evaluate``); every
    default is ``None``: an unset flag leaves the run's ``generate:`` value.
    ``evaluate``'s flags take comma-separated lists: the settings to sweep."""
    for o in OPTIONS:
        if evaluate and not o.evaluate:
            continue
        text = f"{o.help} (default: the run's generate.{o.name}; built in: {o.default})"
        if o.type is bool:
            parser.add_argument(o.flag, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            metavar = o.name.split("_")[-1].upper()
            parser.add_argument(o.flag, type=_values_of(o.type) if evaluate else o.type,
                                default=None, metavar=metavar + ("[,...]" if evaluate else ""),
                                help=text)


def from_flags(args, evaluate=False):
    """``{name: value}`` of the option flags set in parsed ``args`` (``evaluate``:
    ``{name: [values]}``)."""
    return {o.name: getattr(args, o.name) for o in OPTIONS
            if (o.evaluate or not evaluate) and getattr(args, o.name, None) is not None}


def sweep(values):
    """Every combination of ``{name: [values]}``, as ``{name: value}`` dicts in
    table order, the first option varying slowest; a list given twice the same
    value is one setting."""
    names = [o.name for o in OPTIONS if o.name in values]
    settings = [{}]
    for name in names:
        settings = [{**s, name: v} for s in settings for v in dict.fromkeys(values[name])]
    return settings


def describe(options):
    """``name=value`` of every option, one line (printed to stderr, saved in JSONL)."""
    return " ".join(f"{o.name}={getattr(options, o.name)}" for o in OPTIONS)
