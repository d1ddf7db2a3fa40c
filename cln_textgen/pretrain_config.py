"""The config of ``cln-textgen pretrain``: masked-LM pretraining of a BERT on raw text.

Layered like the training config (:mod:`cln_textgen.config`: defaults, YAML,
``--set``, unknown keys refused); the ``train:`` section is the same training
loop's.  Either ``model.pretrained`` names a BERT to continue pretraining
(domain-adaptive pretraining) or ``model.vocab`` and the shape keys describe a
new BERT trained from scratch.
"""

import dataclasses

from cln_textgen.config import (Checks, DropoutSection, Schema, TrainSection, config_from_dict,
                                load_config)


@dataclasses.dataclass
class PretrainModelSection(DropoutSection):
    pretrained: str = ""  # a Google or Hugging Face BERT to continue pretraining
    format: str = "auto"  # auto | google | hf
    vocab: str = ""  # a new BERT: its vocab.txt (with [PAD] [UNK] [CLS] [SEP] [MASK])
    layers: int = 4  # a new BERT's shape: transformer layers,
    hidden: int = 256  # hidden size,
    heads: int = 4  # attention heads,
    intermediate: int | None = None  # feed-forward size (None: 4 x hidden)
    max_position: int = 512  # and positions
    # A new BERT: attention heads per layer that start out looking at a
    # neighbour (previous, next, two back, ...); 0 is BERT's random start.
    local_heads: int = 0
    lower_case: bool = True


@dataclasses.dataclass
class PretrainDataSection:
    corpus: list[str] = dataclasses.field(default_factory=list)  # text files, one text a line
    # Held-out text files, each text scored alone; none: held_out_fraction of
    # the corpus texts, chosen by a hash of the text.
    held_out: list[str] = dataclasses.field(default_factory=list)
    held_out_fraction: float = 0.02
    max_length: int = 128  # tokens per training row; texts are packed [CLS] a [SEP] b [SEP] ...
    mask_rate: float = 0.15  # share of a masked row's tokens that are targets
    lm_share: float = 0.0  # share of each batch's rows trained left to right instead


def _pretrain_train():
    return TrainSection(learning_rate=1e-4, epochs=1, warmup_ratio=0.05, seed=0,
                        eval_every_steps=None)


@dataclasses.dataclass
class PretrainConfig(Schema):
    run_dir: str = "runs/pretrain"
    model: PretrainModelSection = dataclasses.field(default_factory=PretrainModelSection)
    data: PretrainDataSection = dataclasses.field(default_factory=PretrainDataSection)
    train: TrainSection = dataclasses.field(default_factory=_pretrain_train)

    def validate(self, source="config"):
        checks = Checks(source)
        m, d = self.model, self.data
        if not self.run_dir:
            checks.fail("run_dir", "must name the run folder")
        checks.choice("model.format", m.format, ("auto", "google", "hf"))
        if m.pretrained and m.vocab:
            checks.fail("model.vocab", "give model.pretrained (continue pretraining a BERT) or "
                        "model.vocab (a new BERT), not both")
        for key in ("layers", "hidden", "heads", "max_position"):
            checks.positive(f"model.{key}", getattr(m, key))
        checks.positive("model.intermediate", m.intermediate, allow_none=True)
        if m.hidden % m.heads:
            checks.fail("model.hidden", f"{m.hidden} is not a multiple of model.heads ({m.heads})")
        if not 0 <= m.local_heads < m.heads:
            checks.fail("model.local_heads", f"must be in [0, model.heads), got {m.local_heads}")
        if m.pretrained:  # its shape is the checkpoint's: a shape key here would be ignored
            default = PretrainModelSection()
            for key in ("layers", "hidden", "heads", "intermediate", "max_position",
                        "local_heads"):
                if getattr(m, key) != getattr(default, key):
                    checks.fail(f"model.{key}", "describes a new BERT; model.pretrained keeps "
                                "its own shape and weights: remove it (or model.pretrained)")
        if m.local_heads and (m.hidden // m.heads) % 2:
            checks.fail("model.local_heads", "needs an even head size (model.hidden / model.heads)")
        m.check_dropout(checks)
        if d.max_length < 16 or d.max_length > m.max_position:
            checks.fail("data.max_length", f"must be from 16 to model.max_position "
                        f"({m.max_position}), got {d.max_length}")
        if not 0 < d.mask_rate < 1:
            checks.fail("data.mask_rate", f"must be in (0, 1), got {d.mask_rate!r}")
        checks.rate("data.lm_share", d.lm_share)
        checks.rate("data.held_out_fraction", d.held_out_fraction)
        self.train.check(checks)
        return self


# What fixes the meaning of a pretraining run's checkpoints: kept on resume.
# (Where the starting weights and vocabulary came from is not: they are read once.)
FROZEN_FIELDS = tuple(f"model.{f.name}" for f in dataclasses.fields(PretrainModelSection)
                      if f.name not in ("pretrained", "format", "vocab")) + (
    "data.held_out_fraction", "data.max_length", "data.mask_rate", "data.lm_share",
    "train.seed", "train.batch_size", "train.batch_tokens", "train.bucket_by_length",
    "train.accumulate_steps")


def load_pretrain_config(path=None, overrides=()):
    return load_config(path, overrides, schema=PretrainConfig)


def pretrain_config_from_dict(data, source):
    return config_from_dict(data, source, schema=PretrainConfig)
