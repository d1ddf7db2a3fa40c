"""``data.json``: what the training data was when a run started (resolved
path, size, SHA-256, example and label counts of train and valid).  A resumed
run continues mid-epoch by batch position, so it must read the very same
examples: changed content stops it, while the same file reached by another
spelling of its path (``./x.tsv``, an absolute path) is fine.
"""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from cln_textgen.errors import UserError

DATA_NAME = "data.json"


def file_fingerprint(path):
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None  # missing or unreadable: the data reader says so in its own words
    return {"path": os.path.realpath(path), "size": path.stat().st_size, "sha256": h.hexdigest()}


def split_fingerprint(split, labels):
    """The file's fingerprint and the counts of a loaded :class:`Split`."""
    counts = Counter(split.encoded.label_ids)
    return {**file_fingerprint(split.path), "texts": split.texts, "examples": len(split.encoded),
            "labels": {label: counts.get(i, 0) for i, label in enumerate(labels)}}


def read_data_fingerprint(folder):
    path = Path(folder) / DATA_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError
        return record
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable; restore it from a backup") from None


def check_data_unchanged(folder, config, source):
    """Before a resume: the train file (and the valid file, when it is still the
    same path) must hold what the run started with."""
    return check_files_unchanged(folder, {"train": config.data.train, "valid": config.data.valid},
                                 lambda path: _count_texts(path, config), may_move=("valid",))


def check_files_unchanged(folder, paths, count_texts=None, may_move=()):
    """Each file of ``paths`` ({key: path}, keys as in data.json) must hold what
    the run started with; the keys of ``may_move`` may name another file on
    purpose.  False when the run has no data.json."""
    saved = read_data_fingerprint(folder)
    if saved is None:
        return False
    for name, path in paths.items():
        old = saved.get(name)
        if not path or not old:
            continue
        now = file_fingerprint(path)
        if now is None or now["sha256"] == old["sha256"]:
            continue
        if name in may_move and now["path"] != old["path"]:
            continue  # another file was chosen on purpose
        changes = []
        if now["size"] != old["size"]:
            changes.append(f"{old['size']} -> {now['size']} bytes")
        texts = count_texts(path) if count_texts else None
        if texts is not None and texts != old.get("texts"):
            changes.append(f"{old.get('texts')} -> {texts} texts")
        changes.append("SHA-256 differs")
        where = f"{now['path']}" + (f" (the run read {old['path']})" if now["path"] != old["path"] else "")
        raise UserError(f"data.{name}: {where} changed since the run started "
                        f"({', '.join(changes)}); a resumed run must read the same data: restore "
                        "the file, or train a new run_dir")
    return True


def _count_texts(path, config):
    from cln_textgen.data.examples import read_examples

    try:
        return len(read_examples(path, config.data.format)[0])
    except UserError:
        return None
