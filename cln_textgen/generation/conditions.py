"""What a generation request names, checked without TensorFlow: the labels
(before the model is built), label mixes and the condition guidance
contrasts with.

A *condition* is what one row is generated for: a label id, or a mix
``((id, weight), ...)`` whose weights are non-negative and sum to 1 (the row
is conditioned on the weighted sum of the labels' embeddings).
"""

import math
import numbers

from cln_textgen.errors import UserError

# How far a mix's weights may sum from 1 (they are typed by hand: 0.7 + 0.3).
_SUM_TOLERANCE = 1e-6


def label_ids(labels, label):
    """Conditions for ``label``: a name, ``"all"``, a mix (``"a=0.7,b=0.3"`` or
    ``{"a": 0.7, "b": 0.3}``), or a list of names and mixes."""
    if label == "all":
        return list(range(len(labels)))
    items = [label] if isinstance(label, (str, dict)) else list(label)
    return [_condition(labels, item) for item in items]


def _condition(labels, item):
    if isinstance(item, str) and (item in labels or "=" not in item):
        return _label_id(labels, item)
    return _mix(labels, item)


def _label_id(labels, name):
    if name not in labels:
        raise UserError(f"unknown label {name!r}; valid labels: {', '.join(labels)} (or 'all', "
                        "or a mix such as "
                        f"{labels[0]}=0.5,{labels[-1]}=0.5)")
    return labels.index(name)


def _mix(labels, item):
    """``((id, weight), ...)`` of a mix given as text or as a dict."""
    shown = item if isinstance(item, str) else ",".join(f"{k}={v}" for k, v in dict(item).items())
    where = f"label mix {shown!r}"
    if isinstance(item, str):
        pairs = []
        for part in item.split(","):
            name, sep, weight = part.partition("=")
            try:
                pairs.append((name.strip(), float(weight)))
            except ValueError:
                raise UserError(f"{where}: {part.strip()!r} is not NAME=WEIGHT; write it as "
                                "positive=0.7,negative=0.3") from None
    elif isinstance(item, dict):
        pairs = list(item.items())
    else:
        raise UserError(f"label: {item!r} is neither a label name nor a mix of them")
    if not pairs:
        raise UserError(f"{where}: names no label")
    weights = {}
    for name, weight in pairs:
        if not isinstance(name, str):
            raise UserError(f"{where}: {name!r} is not a label name")
        label = _label_id(labels, name)
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool) \
                or not math.isfinite(weight) or weight < 0:
            raise UserError(f"{where}: the weight of {name!r} must be a number >= 0, "
                            f"got {weight!r}")
        if label in weights:
            raise UserError(f"{where}: names {name!r} twice")
        weights[label] = float(weight)
    total = sum(weights.values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise UserError(f"{where}: the weights sum to {total:g}, not 1; rescale them")
    return tuple(sorted(weights.items()))


def condition_name(labels, condition):
    """How results name a condition: the label, or ``a=0.7,b=0.3`` for a mix."""
    if isinstance(condition, tuple):
        return ",".join(f"{labels[i]}={w:g}" for i, w in condition)
    return labels[condition]


def condition_weights_by_name(labels, condition):
    """``{label: weight}`` of a condition (a mix's weights; 1 for a label)."""
    if isinstance(condition, tuple):
        return {labels[i]: w for i, w in condition}
    return {labels[condition]: 1.0}


def contrast(labels, null_id, guidance, negative_label=None):
    """The condition that ``guidance`` pushes away from, or ``None`` unguided:
    ``negative_label``'s id if given, else the run's null condition
    (``null_id``, ``None`` for a run trained without label dropout)."""
    if guidance == 1.0:
        if negative_label is not None:
            raise UserError(f"negative_label={negative_label!r} only matters with guidance; "
                            "set guidance above 1 (e.g. 2) or drop negative_label")
        return None
    if negative_label is not None:
        return _label_id(labels, negative_label)
    if null_id is None:
        raise UserError(f"guidance={guidance:g} needs a null condition, and this run was "
                        "trained without one (model.label_dropout 0); contrast with another "
                        "label instead: negative_label (--negative-label NAME)")
    return null_id
