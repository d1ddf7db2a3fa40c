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
import re
import types
from pathlib import Path

from cln_textgen.backend import bert4keras, keras, tf
from cln_textgen.errors import UserError
from cln_textgen.model.layers import (ConditionalLayerNormalization, DropoutSeed,
                                      SeededAttention, SeededDropout, SeededTruncatedNormal)

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACTIVATIONS = ("gelu", "relu") + _TANH_GELUS


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild a model; a run saves it as ``model.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position: int = 512
    layer_norm_eps: float = 1e-12
    num_labels: int = 2
    label_embedding_size: int = 128
    cond_hidden_units: int | None = None
    conditional: bool = True
    # Share of training rows given the null condition instead of their label
    # (classifier-free guidance); above 0 the label embedding has one more row.
    label_dropout: float = 0.0
    dropout: float = 0.1
    attention_dropout: float = 0.1
    seed: int = 0

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


class _ConditionalLM(bert4keras.models.LM_Mask, bert4keras.models.BERT):
    """bert4keras BERT LM whose layers are swapped in through ``apply``."""

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


def build_model(config, dropout_seed=None):
    """The Keras model ``[token_ids, label_ids] -> logits`` for ``config``.

    ``dropout_seed`` is the :class:`DropoutSeed` the trainer checkpoints; a new
    one is made when not given (inference, tests).
    """
    act = activation(config.hidden_act)
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

    transformer = _ConditionalLM(
        seed=config.seed,
        dropout_seed=dropout_seed,
        layer_norm_eps=config.layer_norm_eps,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=act,
        dropout_rate=config.dropout,
        attention_dropout_rate=config.attention_dropout,
        max_position=config.max_position,
        segment_vocab_size=0,
        with_mlm="linear",
        name="cln_lm",
    )
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


_WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
_OUTPUT_BIAS = "cls/predictions/output_bias"
_LAYER_INDEX = re.compile(r"bert/encoder/layer_(\d+)/")


def bert_variable_mapping(num_hidden_layers):
    """bert4keras's ``{layer name: [Google variable names]}`` for a BERT of that depth."""
    # variable_mapping() reads nothing but the depth from its instance.
    holder = types.SimpleNamespace(num_hidden_layers=num_hidden_layers)
    return bert4keras.models.BERT.variable_mapping(holder)


def load_bert_weights(model, variables, source, keep_tokens=None):
    """Load Google-named BERT ``variables`` into ``model``; returns whether the
    MLM head was among them.

    ``keep_tokens`` selects rows of the token embedding and output bias (a
    simplified vocabulary).  Every shape is checked first, so a config that
    does not belong to the weights is one clear error, not a broadcast deep in
    TensorFlow.  Layers the checkpoint lacks are an error, except the MLM head,
    which then keeps its seeded initial values.
    """
    variables = dict(variables)
    token_types = variables.pop("bert/embeddings/token_type_embeddings", None)
    if token_types is not None and "bert/embeddings/position_embeddings" in variables:
        variables["bert/embeddings/position_embeddings"] = (
            variables["bert/embeddings/position_embeddings"] + token_types[0]
        )
    if keep_tokens is not None:
        for name in (_WORD_EMBEDDINGS, _OUTPUT_BIAS):
            if name in variables:
                variables[name] = variables[name][keep_tokens]

    layer_ids = {int(m.group(1)) for name in variables if (m := _LAYER_INDEX.match(name))}
    expected = sum(1 for layer in model.layers if layer.name.endswith("-FeedForward"))
    layers = {layer.name: layer for layer in model.layers}
    if layer_ids and layer_ids != set(range(expected)):
        raise UserError(f"{source}: the weights have {len(layer_ids)} transformer layers but "
                        f"the config says num_hidden_layers={expected}; use the config that "
                        "belongs to these weights")

    pairs, mlm_loaded = [], False
    for layer_name, names in bert_variable_mapping(expected).items():
        if layer_name not in layers:
            continue  # parts of BERT this model does not use (pooler, NSP, segments)
        found = [name in variables for name in names]
        if not any(found) and layer_name.startswith("MLM-"):
            continue
        if not all(found):
            missing = next(n for n, ok in zip(names, found) if not ok)
            raise UserError(f"{source}: variable {missing} is missing; is this a complete BERT "
                            "checkpoint?")
        # zip: a conditional norm has [beta, gamma] first, then its condition projections
        for weight, name in zip(layers[layer_name].trainable_weights, names):
            want, got = tuple(weight.shape), tuple(variables[name].shape)
            if want != got:
                raise UserError(f"{source}: {name} has shape {got} but the model config gives "
                                f"{want}; the config does not belong to these weights")
            pairs.append((weight, variables[name]))
        mlm_loaded = mlm_loaded or layer_name.startswith("MLM-")
    keras.backend.batch_set_value(pairs)
    return mlm_loaded
