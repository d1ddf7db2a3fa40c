"""What a generation request names, checked without TensorFlow: the labels
(before the model is built) and the step of a checkpoint."""

import re

from cln_textgen.errors import UserError


def label_ids(labels, label):
    """Ids in ``labels`` for ``label``: a name, a list of names, or ``"all"``."""
    names = labels if label == "all" else [label] if isinstance(label, str) else list(label)
    unknown = [name for name in names if name not in labels]
    if unknown:
        raise UserError(f"unknown label {unknown[0]!r}; valid labels: "
                        f"{', '.join(labels)} (or 'all')")
    return [labels.index(name) for name in names]


def checkpoint_step(path):
    """The training step a checkpoint was saved at (its number), or ``None``."""
    match = re.search(r"-(\d+)$", str(path or ""))
    return int(match.group(1)) if match else None
