"""``manifest.json``: size and SHA-256 of the files that give a run's
checkpoints their meaning.  A later edit (labels swapped, a vocabulary line
lost) would silently change what every checkpoint means, so each command that
opens a run compares them first.  Runs made before manifests existed have
none: they are checked for consistency only, and get one at their next train.
"""

import hashlib
import json

from cln_textgen.errors import UserError
from cln_textgen.runs.files import write_text_atomic

MANIFEST_NAME = "manifest.json"
TRACKED = ("config.yaml", "model.json", "labels.json", "vocab.txt", "data.json")


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(path):
    return {"size": path.stat().st_size, "sha256": _digest(path)}


def write_manifest(folder, also=None):
    """Record the tracked files present in ``folder``.  ``also`` maps a name to
    a digest that stays accepted too: the one of a file about to be replaced,
    so that a crash between the two writes leaves a run that still opens."""
    files = {}
    for name in TRACKED:
        path = folder / name
        if path.is_file():
            files[name] = describe(path)
            if also and name in also and also[name] != files[name]["sha256"]:
                files[name]["also"] = [also[name]]
    write_text_atomic(folder / MANIFEST_NAME, json.dumps({"files": files}, indent=2) + "\n")


def read_manifest(folder):
    """``{name: entry}``, or None for a run made before manifests."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError
        return files
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: unreadable manifest; restore it, or delete it to open the run "
                        "with the basic checks only") from None


def verify_manifest(folder):
    """One line, exit 2, for a tracked file that is gone or not as the run wrote it."""
    files = read_manifest(folder)
    if files is None:
        return False
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing, but the run wrote it ({MANIFEST_NAME}); restore it "
                            "from a backup")
        digest = _digest(path)
        if digest != entry.get("sha256") and digest not in entry.get("also", ()):
            raise UserError(
                f"{path}: changed since the run wrote it ({entry.get('size')} -> "
                f"{path.stat().st_size} bytes, SHA-256 differs); the checkpoints depend on it: "
                "undo the edit, or train a new run_dir (use --set for training options)")
    return True
