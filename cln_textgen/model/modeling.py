"""The conditional causal LM: a bert4keras BERT with every LayerNorm conditional.

The model is bert4keras's own BERT with a lower-triangular attention mask
(``application='lm'``), changed through its ``apply`` hook only:

* every ``LayerNormalization`` becomes :class:`ConditionalLayerNormalization`
  fed with the label embedding (2 per transformer layer, the embedding norm
  and the MLM-head norm);
* every weight not loaded from a checkpoint is drawn from one
  :class:`SeededTruncatedNormal` stream, so no two kernels repeat;
* dropout (hidden and attention) draws from a counter the trainer owns and
  checkpoints, so a resumed run draws the same masks as an unbroken one.

Inputs are ``[token_ids, label_ids]``; the output is next-token logits.  The
segment input of BERT is dropped: a left-to-right LM uses segment 0 only, so
``token_type_embeddings[0]`` is folded into the position embeddings at load.
"""

import dataclasses
import json
from pathlib import Path

from cln_textgen.backend import bert4keras, keras, tf
from cln_textgen.config import NetworkSection
from cln_textgen.model.layers import (ConditionalLayerNormalization, DropoutSeed,
                                      SeededAttention, SeededDropout, SeededTruncatedNormal)

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACTIVATIONS = ("gelu", "relu") + _TANH_GELUS


@dataclasses.dataclass
class BertShape:
    """The shape of a BERT, as its ``bert_config.json`` gives it."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def shape_from_google(cls, bert_config, vocab_size=None):
        """The shape fields of a Google-style config dict (``pretrained.PretrainedBert.config``)."""
        return dict(
            vocab_size=bert_config["vocab_size"] if vocab_size is None else vocab_size,
            hidden_size=bert_config["hidden_size"],
            num_hidden_layers=bert_config["num_hidden_layers"],
            num_attention_heads=bert_config["num_attention_heads"],
            intermediate_size=bert_config["intermediate_size"],
            hidden_act=bert_config["hidden_act"],
            max_position=bert_config["max_position_embeddings"],
            layer_norm_eps=bert_config["layer_norm_eps"])


@dataclasses.dataclass
class ModelConfig(NetworkSection, BertShape):
    """Everything needed to rebuild a model; a run saves it as ``model.json``.

    The BERT's shape, then the network settings the config chose (one schema:
    :class:`cln_textgen.config.NetworkSection`), resolved, and the run's seed."""

    num_labels: int = 2
    # A run from before label dropout has no null row: 0 when model.json lacks it.
    label_dropout: float = 0.0
    attention_dropout: float = 0.1
    seed: int = 0
    type_vocab_size: int = 2  # segments of the BERT; the LM folds segment 0 into positions

    @classmethod
    def from_section(cls, bert_config, section, num_labels, vocab_size, seed):
        """The model a config's ``model:`` section asks of a pretrained BERT's config."""
        chosen = {f.name: getattr(section, f.name) for f in dataclasses.fields(NetworkSection)}
        chosen["attention_dropout"] = section.attention_rate
        return cls(**cls.shape_from_google(bert_config, vocab_size), **chosen,
                   num_labels=num_labels, seed=seed,
                   type_vocab_size=bert_config.get("type_vocab_size", 2))

    @property
    def null_id(self):
        """The label embedding's row of the null condition, or ``None``."""
        return self.num_labels if self.conditional and self.label_dropout > 0 else None

    @property
    def condition_rows(self):
        return self.num_labels + (self.null_id is not None)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        return cls(**values)

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + tf.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def activation(name):
    """The Keras activation for a BERT config's ``hidden_act`` (tanh-approximated
    GELUs as a function; bert4keras's own ``gelu`` is the exact erf one)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}")
    return _gelu_tanh if name in _TANH_GELUS else name


# Under a mixed precision policy every norm and the logits stay float32: the
# float32 output of MLM-Norm makes the tied projection float32, and these keep it.
_FLOAT32_HEAD = ("MLM-Bias", "MLM-Activation")


class SeededBert(bert4keras.models.BERT):
    """bert4keras's BERT with the project's layers swapped in through ``apply``:
    every weight drawn from one seeded stream, seeded dropout (exact on resume)
    and float32 norms and logits under mixed precision.  The conditional LM and
    the pretraining network both build on it."""

    def __init__(self, seed, dropout_seed, layer_norm_eps, **kwargs):
        super().__init__(**kwargs)
        self._initializer = SeededTruncatedNormal(stddev=0.02, seed=seed)
        self._dropout_seed = dropout_seed
        self._layer_norm_eps = layer_norm_eps
        self._salts = {}

    @property
    def initializer(self):
        return self._initializer

    def _salt(self, name):
        return self._salts.setdefault(name, len(self._salts) + 1)

    def apply(self, inputs=None, layer=None, arguments=None, **kwargs):
        if layer is bert4keras.layers.LayerNormalization:
            layer = ConditionalLayerNormalization
            kwargs.update(epsilon=self._layer_norm_eps, dtype="float32")
        elif kwargs.get("name") in _FLOAT32_HEAD:
            kwargs["dtype"] = "float32"
        elif layer is bert4keras.layers.Dropout:
            if not kwargs.get("rate"):
                return inputs
            layer = SeededDropout
            kwargs.update(salt=self._salt(kwargs["name"]), source=self._dropout_seed)
        elif layer is bert4keras.layers.MultiHeadAttention:
            layer = SeededAttention
            kwargs.update(salt=self._salt(kwargs["name"]), source=self._dropout_seed)
        return super().apply(inputs=inputs, layer=layer, arguments=arguments, **kwargs)


def seeded_bert(cls, config, dropout_seed, **kwargs):
    """A :class:`SeededBert` subclass ``cls`` of ``config``'s shape and dropout."""
    return cls(seed=config.seed, dropout_seed=dropout_seed, layer_norm_eps=config.layer_norm_eps,
               vocab_size=config.vocab_size, hidden_size=config.hidden_size,
               num_hidden_layers=config.num_hidden_layers,
               num_attention_heads=config.num_attention_heads,
               intermediate_size=config.intermediate_size,
               hidden_act=activation(config.hidden_act), dropout_rate=config.dropout,
               attention_dropout_rate=config.attention_dropout,
               max_position=config.max_position, **kwargs)


class _ConditionalLM(bert4keras.models.LM_Mask, SeededBert):
    """bert4keras BERT LM (lower-triangular attention) of seeded layers."""


def build_model(config, dropout_seed=None):
    """The Keras model ``[token_ids, label_ids] -> logits`` for ``config``.

    ``dropout_seed`` is the :class:`DropoutSeed` the trainer checkpoints; a new
    one is made when not given (inference, tests).
    """
    dropout_seed = dropout_seed or DropoutSeed(config.seed)

    token_in = keras.layers.Input(shape=(None,), dtype="int32", name="Input-Token")
    label_in = keras.layers.Input(shape=(), dtype="int32", name="Input-Label")
    cond = None
    if config.conditional:
        cond = keras.layers.Embedding(
            config.condition_rows,
            config.label_embedding_size,
            embeddings_initializer=SeededTruncatedNormal(stddev=0.02, seed=config.seed + 1),
            name="Label-Embedding",
        )(label_in)

    transformer = seeded_bert(_ConditionalLM, config, dropout_seed, segment_vocab_size=0,
                              with_mlm="linear", name="cln_lm")
    # bert4keras creates its own token input; ours replaces it so that the
    # model's inputs are exactly [tokens, labels] in that order.
    transformer.layers["Input-Token"] = token_in
    transformer.build(
        layer_norm_cond=cond,
        layer_norm_cond_hidden_size=config.cond_hidden_units,
        layer_norm_cond_hidden_act="linear",
        additional_input_layers=label_in,
    )
    return transformer.model


def conditional_layers(model):
    return [l for l in model.layers if isinstance(l, ConditionalLayerNormalization)]


# ---------------------------------------------------------------- the accessor
#
# The cached decoder runs the forward pass again over the model's variables
# and the train step splits the model before its output layer: both need its
# parts by role.  bert4keras names them (layer names, its attention's and
# feed-forward's sub-layers); those names are used here and nowhere else, and
# a test checks that the parts hold every weight of the model exactly once.


@dataclasses.dataclass(frozen=True)
class Block:
    """One transformer layer, in the order the forward pass meets its parts:
    the attention's query/key/value/output Dense layers, its norm, the
    feed-forward's two Dense layers (the first with the activation), its norm."""

    query: object
    key: object
    value: object
    attention_output: object
    attention_norm: ConditionalLayerNormalization
    intermediate: object
    output: object
    feed_forward_norm: ConditionalLayerNormalization

    def layers(self):
        return [self.query, self.key, self.value, self.attention_output, self.attention_norm,
                self.intermediate, self.output, self.feed_forward_norm]


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The parts of a model from :func:`build_model`, by role (see :func:`model_parts`).

    The head is the MLM head: ``head_dense`` then ``head_norm`` give the hidden
    states that the token embedding, transposed (tied weights), turns into
    logits, plus ``output_bias``.
    """

    token_embedding: object  # .embeddings: (vocab, hidden)
    position_embedding: object  # .embeddings: (positions, hidden)
    label_embedding: object  # None for an unconditional model
    embedding_norm: ConditionalLayerNormalization
    blocks: tuple
    head_dense: object
    head_norm: ConditionalLayerNormalization
    head_bias: object  # the layer adding output_bias
    head_activation: object  # the identity, as a layer (float32 under mixed precision)
    heads: int
    key_size: int
    head_size: int

    @property
    def output_bias(self):
        return self.head_bias.beta

    @property
    def vocab_size(self):
        return int(self.token_embedding.embeddings.shape[0])

    @property
    def max_position(self):
        return int(self.position_embedding.embeddings.shape[0])

    def norms(self):
        """Every norm, in the order the forward pass meets them."""
        inner = [norm for block in self.blocks
                 for norm in (block.attention_norm, block.feed_forward_norm)]
        return [self.embedding_norm, *inner, self.head_norm]

    def output_logits(self, hidden):
        """Logits from ``head_norm``'s output, through the model's own Keras layers
        (so that they keep their float32 policy under mixed precision)."""
        return self.head_activation(self.head_bias(self.token_embedding(hidden, mode="dense")))

    def weights(self):
        """Every variable of the parts, part by part."""
        layers = [self.token_embedding, self.position_embedding, self.label_embedding,
                  self.embedding_norm, *[l for b in self.blocks for l in b.layers()],
                  self.head_dense, self.head_norm, self.head_bias]
        return [weight for layer in layers if layer is not None for weight in layer.weights]


def model_parts(model):
    """The :class:`ModelParts` of ``model`` (built by :func:`build_model`)."""
    layers = {layer.name: layer for layer in model.layers}

    def get(name):
        if name not in layers:
            raise RuntimeError(f"the model has no layer {name!r}: bert4keras named its layers "
                               "otherwise; update model_parts in cln_textgen/model/modeling.py")
        return layers[name]

    depth = sum(1 for name in layers
                if name.startswith("Transformer-") and name.endswith("-FeedForward"))
    blocks = []
    for i in range(depth):
        attention = get(f"Transformer-{i}-MultiHeadSelfAttention")
        feed_forward = get(f"Transformer-{i}-FeedForward")
        blocks.append(Block(
            query=attention.q_dense, key=attention.k_dense, value=attention.v_dense,
            attention_output=attention.o_dense,
            attention_norm=get(f"Transformer-{i}-MultiHeadSelfAttention-Norm"),
            intermediate=feed_forward.i0_dense, output=feed_forward.o_dense,
            feed_forward_norm=get(f"Transformer-{i}-FeedForward-Norm")))
    first = get("Transformer-0-MultiHeadSelfAttention")
    return ModelParts(
        token_embedding=get("Embedding-Token"), position_embedding=get("Embedding-Position"),
        label_embedding=layers.get("Label-Embedding"), embedding_norm=get("Embedding-Norm"),
        blocks=tuple(blocks), head_dense=get("MLM-Dense"), head_norm=get("MLM-Norm"),
        head_bias=get("MLM-Bias"), head_activation=get("MLM-Activation"),
        heads=first.heads, key_size=first.key_size, head_size=first.head_size)
