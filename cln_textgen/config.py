"""Run configuration: typed dataclasses -> YAML file -> ``--set a.b=value``.

Every layer is strict: an unknown key is an error that names the key (and the
YAML line) and suggests the nearest valid one; a value of the wrong type is an
error naming the key and the type expected; :meth:`Config.validate` then
checks ranges and choices.  The merged result is what a run saves as
``config.yaml``.
"""

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from cln_textgen.errors import UserError
from cln_textgen.strict_yaml import short, yaml_data, yaml_with_lines
from cln_textgen.options import BY_NAME, GenerationOptions, check, contradiction


@dataclasses.dataclass
class DropoutSection:
    """The dropout of a network, as every config that trains one chooses it."""

    dropout: float = 0.1
    attention_dropout: float | None = None  # None: same as dropout

    def check_dropout(self, checks):
        checks.rate("model.dropout", self.dropout)
        checks.rate("model.attention_dropout", self.attention_dropout, allow_none=True)

    @property
    def attention_rate(self):
        return self.dropout if self.attention_dropout is None else self.attention_dropout


@dataclasses.dataclass
class NetworkSection(DropoutSection):
    """The hyper-parameters of the network that a config chooses: declared once,
    here; ``model.json`` (:class:`cln_textgen.model.modeling.ModelConfig`) holds
    them beside the BERT's shape."""

    conditional: bool = True  # false: a plain LM that ignores the label (a baseline)
    # Share of training rows given a reserved null condition instead of their
    # label, so the run can also generate unconditionally: what guidance needs.
    label_dropout: float = 0.1
    label_embedding_size: int = 128
    cond_hidden_units: int | None = None  # project the label embedding first (None: no)


@dataclasses.dataclass
class ModelSection(NetworkSection):
    pretrained: str = ""  # directory of a Google or Hugging Face BERT
    format: str = "auto"  # auto | google | hf
    init: str = "pretrained"  # pretrained | random: seeded random weights of its config (a baseline)
    simplified_vocab: bool = False  # drop vocab entries text can never produce
    lower_case: bool = True  # must match how the BERT was trained


@dataclasses.dataclass
class DataSection:
    train: str = ""
    valid: str | None = None
    test: str | None = None
    format: str = "auto"  # auto | tsv | jsonl
    max_length: int = 128  # tokens per example, [CLS] and [SEP] included
    labels: list[str] | None = None  # fixed label order; None: sorted labels of train


@dataclasses.dataclass
class TrainSection:
    """The training loop's settings, the same for every task."""

    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps in all
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-7  # AdamW's epsilon (BERT's own pretraining used 1e-6)
    warmup_ratio: float = 0.06
    clip_norm: float | None = 1.0
    seed: int = 42
    save_every_steps: int = 500  # 0: only at epoch ends
    keep_checkpoints: int = 3
    eval_every_steps: int | None = None  # None: evaluate at epoch ends only
    patience: int | None = None  # early stopping: evaluations without improvement
    log_every_steps: int = 10
    batch_tokens: int | None = None  # token budget per batch instead of a row count
    bucket_by_length: bool = True
    accumulate_steps: int = 1
    jit_compile: bool = False
    mixed_precision: str = "none"  # none | mixed_float16 | mixed_bfloat16
    distribute: str = "none"  # none | mirrored | multi_worker

    def check(self, checks):
        for key in ("batch_size", "epochs", "keep_checkpoints", "log_every_steps",
                    "accumulate_steps"):
            checks.positive(f"train.{key}", getattr(self, key))
        for key in ("max_steps", "eval_every_steps", "patience", "batch_tokens", "clip_norm"):
            checks.positive(f"train.{key}", getattr(self, key), allow_none=True)
        checks.positive("train.learning_rate", self.learning_rate)
        checks.positive("train.adam_epsilon", self.adam_epsilon)
        if self.weight_decay < 0:
            checks.fail("train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            checks.fail("train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.save_every_steps < 0:
            checks.fail("train.save_every_steps", "must be >= 0 (0: save at epoch ends only)")
        checks.choice("train.mixed_precision", self.mixed_precision,
                      ("none", "mixed_float16", "mixed_bfloat16"))
        checks.choice("train.distribute", self.distribute, ("none", "mirrored", "multi_worker"))


@dataclasses.dataclass
class LMTrainSection(TrainSection):
    samples_per_label: int = 3  # samples shown and saved at each evaluation


# The generate: section is the table of generation options (cln_textgen.options).
GenerateSection = GenerationOptions


@dataclasses.dataclass
class ClassifierSection:
    # The judge that `evaluate` uses has its own schedule: a classification
    # head fine-tunes at other rates than the generator.  Every other setting
    # (batch size, warmup, seed...) comes from the train section.
    learning_rate: float = 5e-5
    epochs: int = 3


class Checks:
    """The value checks of ``validate``: each failure is one line naming the key."""

    def __init__(self, source):
        self.source = source

    def fail(self, key, message):
        raise UserError(f"{self.source}: {key}: {message}")

    def choice(self, key, value, options):
        if value not in options:
            self.fail(key, f"{short(value)} is not one of {', '.join(options)}")

    def positive(self, key, value, allow_none=False):
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            self.fail(key, f"must be > 0, got {value!r}")

    def rate(self, key, value, allow_none=False):
        if value is None and allow_none:
            return
        if value is None or not 0 <= value < 1:
            self.fail(key, f"must be in [0, 1), got {value!r}")


class Schema:
    """A root config: dumps itself as the run's ``config.yaml``."""

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


@dataclasses.dataclass
class Config(Schema):
    """The config of ``train`` (and ``classifier train``, ``evaluate``)."""

    run_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: LMTrainSection = dataclasses.field(default_factory=LMTrainSection)
    generate: GenerateSection = dataclasses.field(default_factory=GenerateSection)
    classifier: ClassifierSection = dataclasses.field(default_factory=ClassifierSection)

    def validate(self, source="config"):
        checks = Checks(source)
        fail, choice, positive = checks.fail, checks.choice, checks.positive
        m, d, t, g = self.model, self.data, self.train, self.generate
        if not self.run_dir:
            fail("run_dir", "must name the run folder")
        choice("model.format", m.format, ("auto", "google", "hf"))
        choice("model.init", m.init, ("pretrained", "random"))
        positive("model.label_embedding_size", m.label_embedding_size)
        positive("model.cond_hidden_units", m.cond_hidden_units, allow_none=True)
        m.check_dropout(checks)
        checks.rate("model.label_dropout", m.label_dropout)
        choice("data.format", d.format, ("auto", "tsv", "jsonl"))
        if d.max_length < 3:
            fail("data.max_length", f"must be >= 3 ([CLS], one token, [SEP]), got {d.max_length}")
        if d.labels is not None:
            if len(d.labels) < 1:
                fail("data.labels", "must list at least one label (or be null)")
            if len(set(d.labels)) != len(d.labels):
                fail("data.labels", "lists a label twice")
        t.check(checks)
        if t.samples_per_label < 0:
            fail("train.samples_per_label", "must be >= 0")
        for name in BY_NAME:
            broken = check(name, getattr(g, name))
            if broken:
                fail(f"generate.{name}", f"{broken}, got {getattr(g, name)!r}")
        problem = contradiction(g)
        if problem:
            fail("generate", problem)
        if g.guidance != 1.0 and not m.conditional:
            fail("generate.guidance", f"{g.guidance:g} guides by the label, which a model "
                 "with model.conditional false does not read: set generate.guidance to 1")
        if g.guidance != 1.0 and not m.label_dropout > 0:
            fail("generate.guidance", f"{g.guidance:g} needs the null condition that "
                 "model.label_dropout trains (set it, e.g. 0.1), or keep 1 here and guide "
                 "with --negative-label when generating")
        positive("classifier.learning_rate", self.classifier.learning_rate)
        positive("classifier.epochs", self.classifier.epochs)
        return self


# ---------------------------------------------------------------- loading


def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_name(tp):
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp):
    """``value`` as type ``tp``, or raise TypeError.  YAML already typed it."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise TypeError
        return [_coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        # Labels and paths may look like numbers in YAML (0, 1, 2024): take them as text.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    raise TypeError


def _suggest(key, options):
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(options)}"


def _set(obj, dotted, value, where):
    """Set ``dotted`` (``train.batch_size``) on the config tree ``obj``."""
    *parents, last = dotted.split(".")
    prefix = ""
    for part in parents:
        fields = _fields(type(obj))
        if part not in fields or not dataclasses.is_dataclass(getattr(obj, part)):
            sections = [n for n, f in fields.items() if dataclasses.is_dataclass(getattr(obj, n))]
            raise UserError(f"{where}: unknown section {short(prefix + part)}"
                            + _suggest(part[:100], [prefix + s for s in sections]))
        obj, prefix = getattr(obj, part), prefix + part + "."
    fields = _fields(type(obj))
    if last not in fields:
        raise UserError(f"{where}: unknown key {short(prefix + last)}"
                        + _suggest((prefix + last)[:100], [prefix + n for n in fields]))
    current = getattr(obj, last)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {prefix + last} is a section; give it a mapping of keys")
        for key, sub in value.items():
            _set(current, str(key), sub, where)
        return
    tp = typing.get_type_hints(type(obj))[last]
    try:
        setattr(obj, last, _coerce(value, tp))
    except TypeError:
        raise UserError(f"{where}: {prefix + last} must be {_type_name(tp)}, got {short(value)}") from None


def _flatten(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_override(text):
    """``'train.batch_size=16'`` -> ``('train.batch_size', 16)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {short(text, quote=False)}: expected KEY=VALUE, e.g. --set train.batch_size=16")
    try:
        value = yaml_data(raw, f"--set {short(text)}") if raw.strip() else None
    except UserError:
        if any(c in raw for c in "&*!"):
            raise  # aliases, tags, huge values: refused, not read as plain text
        value = raw
    return key.strip(), value


def load_config(path=None, overrides=(), base=None, schema=Config):
    """Defaults of ``schema`` (or ``base``) -> YAML file -> ``--set`` overrides,
    then validated."""
    config = base if base is not None else schema()
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read the config ({e})") from None
        data, lines = yaml_with_lines(text, path)
        for key, value in _flatten(data):
            _set(config, key, value, f"{path}:{lines.get(key, '?')}")
    for text in overrides:
        key, value = parse_override(text)
        _set(config, key, value, f"--set {short(text, quote=False)}")
    return config.validate(source)


def config_from_dict(data, source, schema=Config):
    """A config saved by a run (all keys present) back into dataclasses."""
    config = schema()
    for key, value in _flatten(data):
        _set(config, key, value, source)
    return config.validate(source)
