"""Google-named BERT weights in and out of a model built by this package.

Loading maps ``{google_name: array}`` (from :mod:`cln_textgen.model.pretrained`)
onto the layers through bert4keras's own variable mapping; writing goes the
other way, for a pretraining run's checkpoint folder.
"""

import re
import types

from cln_textgen.backend import bert4keras, keras
from cln_textgen.errors import UserError

_WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
_OUTPUT_BIAS = "cls/predictions/output_bias"
_LAYER_INDEX = re.compile(r"bert/encoder/layer_(\d+)/")


def bert_variable_mapping(num_hidden_layers):
    """bert4keras's ``{layer name: [Google variable names]}`` for a BERT of that depth."""
    # variable_mapping() reads nothing but the depth from its instance.
    holder = types.SimpleNamespace(num_hidden_layers=num_hidden_layers)
    return bert4keras.models.BERT.variable_mapping(holder)


def load_bert_weights(model, variables, source, keep_tokens=None, fold_segments=True):
    """Load Google-named BERT ``variables`` into ``model``; returns whether the
    MLM head was among them.

    ``keep_tokens`` selects rows of the token embedding and output bias (a
    simplified vocabulary).  Every shape is checked first, so a config that
    does not belong to the weights is one clear error, not a broadcast deep in
    TensorFlow.  Layers the checkpoint lacks are an error, except the MLM head,
    which then keeps its seeded initial values.  ``fold_segments``: the model has
    no segment embedding (the LM), so segment 0's is added to the positions.
    """
    variables = dict(variables)
    token_types = variables.get("bert/embeddings/token_type_embeddings")
    if fold_segments:  # a model without segments: segment 0's embedding joins the positions
        variables.pop("bert/embeddings/token_type_embeddings", None)
    if fold_segments and token_types is not None and "bert/embeddings/position_embeddings" in variables:
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


def google_variables(model):
    """``{google_name: array}`` of every BERT weight of ``model`` (the inverse of
    :func:`load_bert_weights` without folding), for a Google checkpoint."""
    layers = {layer.name: layer for layer in model.layers}
    depth = sum(1 for name in layers if name.endswith("-FeedForward"))
    values = {}
    for layer_name, names in bert_variable_mapping(depth).items():
        if layer_name in layers:
            # zip: a norm's [beta, gamma] come first, before any condition projections
            weights = layers[layer_name].trainable_weights
            values.update(zip(names, (w.numpy() for w in weights)))
    return values
