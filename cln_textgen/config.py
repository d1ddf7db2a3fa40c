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
from cln_textgen.options import BY_NAME, GenerationOptions, check, contradiction


@dataclasses.dataclass
class ModelSection:
    pretrained: str = ""  # directory of a Google or Hugging Face BERT
    format: str = "auto"  # auto | google | hf
    init: str = "pretrained"  # pretrained | random: seeded random weights of its config (a baseline)
    conditional: bool = True  # false: a plain LM that ignores the label (a baseline)
    # Share of training rows given a reserved null condition instead of their
    # label, so the run can also generate unconditionally: what guidance needs.
    label_dropout: float = 0.1
    label_embedding_size: int = 128
    cond_hidden_units: int | None = None  # project the label embedding first (None: no)
    dropout: float = 0.1
    attention_dropout: float | None = None  # None: same as dropout
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
    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps in all
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    clip_norm: float | None = 1.0
    seed: int = 42
    save_every_steps: int = 500  # 0: only at epoch ends
    keep_checkpoints: int = 3
    eval_every_steps: int | None = None  # None: evaluate at epoch ends only
    patience: int | None = None  # early stopping: evaluations without improvement
    log_every_steps: int = 10
    samples_per_label: int = 3  # samples shown and saved at each evaluation
    batch_tokens: int | None = None  # token budget per batch instead of a row count
    bucket_by_length: bool = True
    accumulate_steps: int = 1
    jit_compile: bool = False
    mixed_precision: str = "none"  # none | mixed_float16 | mixed_bfloat16
    distribute: str = "none"  # none | mirrored | multi_worker


# The generate: section is the table of generation options (cln_textgen.options).
GenerateSection = GenerationOptions


@dataclasses.dataclass
class ClassifierSection:
    # The judge that `evaluate` uses has its own schedule: a classification
    # head fine-tunes at other rates than the generator.  Every other setting
    # (batch size, warmup, seed...) comes from the train section.
    learning_rate: float = 5e-5
    epochs: int = 3


@dataclasses.dataclass
class Config:
    run_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    generate: GenerateSection = dataclasses.field(default_factory=GenerateSection)
    classifier: ClassifierSection = dataclasses.field(default_factory=ClassifierSection)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def validate(self, source="config"):
        def fail(key, message):
            raise UserError(f"{source}: {key}: {message}")

        def choice(key, value, options):
            if value not in options:
                fail(key, f"{short(value)} is not one of {', '.join(options)}")

        def positive(key, value, allow_none=False):
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                fail(key, f"must be > 0, got {value!r}")

        m, d, t, g = self.model, self.data, self.train, self.generate
        if not self.run_dir:
            fail("run_dir", "must name the run folder")
        choice("model.format", m.format, ("auto", "google", "hf"))
        choice("model.init", m.init, ("pretrained", "random"))
        positive("model.label_embedding_size", m.label_embedding_size)
        positive("model.cond_hidden_units", m.cond_hidden_units, allow_none=True)
        for key, rate in (("model.dropout", m.dropout), ("model.attention_dropout", m.attention_dropout),
                          ("model.label_dropout", m.label_dropout)):
            if rate is not None and not 0 <= rate < 1:
                fail(key, f"must be in [0, 1), got {rate!r}")
        choice("data.format", d.format, ("auto", "tsv", "jsonl"))
        if d.max_length < 3:
            fail("data.max_length", f"must be >= 3 ([CLS], one token, [SEP]), got {d.max_length}")
        if d.labels is not None:
            if len(d.labels) < 1:
                fail("data.labels", "must list at least one label (or be null)")
            if len(set(d.labels)) != len(d.labels):
                fail("data.labels", "lists a label twice")
        for key in ("batch_size", "epochs", "keep_checkpoints", "log_every_steps",
                    "accumulate_steps"):
            positive(f"train.{key}", getattr(t, key))
        for key in ("max_steps", "eval_every_steps", "patience", "batch_tokens", "clip_norm"):
            positive(f"train.{key}", getattr(t, key), allow_none=True)
        positive("train.learning_rate", t.learning_rate)
        if t.weight_decay < 0:
            fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
        if not 0 <= t.warmup_ratio < 1:
            fail("train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
        if t.save_every_steps < 0:
            fail("train.save_every_steps", "must be >= 0 (0: save at epoch ends only)")
        if t.samples_per_label < 0:
            fail("train.samples_per_label", "must be >= 0")
        choice("train.mixed_precision", t.mixed_precision, ("none", "mixed_float16", "mixed_bfloat16"))
        choice("train.distribute", t.distribute, ("none", "mirrored", "multi_worker"))
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


# A config is a few dozen keys.  Aliases are refused outright: a few lines of
# nested aliases expand to gigabytes ("billion laughs") and a recursive one
# never ends; the node limit bounds the memory of everything else.
MAX_YAML_NODES = 10_000
MAX_YAML_BYTES = 1 << 20


def short(value, limit=80, quote=True):
    """``repr(value)`` (or the text itself, ``quote=False``) on one line and cut
    to ``limit`` characters, for messages: a value may be a megabyte long."""
    text = repr(value) if quote else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and documents of more than MAX_YAML_NODES nodes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed; write the value out",
                event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_YAML_NODES} values; a config is much smaller",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _yaml_error(e, source):
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return UserError(f"{source}{line}: invalid YAML ({short(problem, 200, quote=False)})")


def _compose(text, source):
    """The YAML node tree and its Python value, or one-line errors."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source}: {len(text)} characters; a config is much smaller (is this "
                        "the right file?)")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply; a config is a few levels deep") from None
    finally:
        loader.dispose()
    return node, data


def yaml_data(text, source):
    """Safe, bounded YAML loading for everything the project reads as YAML."""
    return _compose(text, source)[1]


def _load_yaml_with_lines(text, path):
    node, data = _compose(text, path)
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: the top level must be a mapping of config keys")
    lines = {}

    def walk(mapping, prefix):
        for key_node, value_node in mapping.value:
            key = prefix + str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key + ".")

    walk(node, "")
    return data, lines


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


def load_config(path=None, overrides=(), base=None):
    """Defaults (or ``base``) -> YAML file -> ``--set`` overrides, then validated."""
    config = base if base is not None else Config()
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
        data, lines = _load_yaml_with_lines(text, path)
        for key, value in _flatten(data):
            _set(config, key, value, f"{path}:{lines.get(key, '?')}")
    for text in overrides:
        key, value = parse_override(text)
        _set(config, key, value, f"--set {short(text, quote=False)}")
    return config.validate(source)


def config_from_dict(data, source):
    """A config saved by a run (all keys present) back into dataclasses."""
    config = Config()
    for key, value in _flatten(data):
        _set(config, key, value, source)
    return config.validate(source)
