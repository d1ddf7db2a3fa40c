"""Which checkpoints of a folder exist, and the newest one that reads back.

TensorFlow's own ``latest_checkpoint`` trusts the ``checkpoint`` pointer file:
when that file is damaged, or the newest ``.index`` is missing, it answers
"none", and a caller would take a used run folder for a new one.  Here the
folder itself is listed (``ckpt-N.index`` files, and the pointer's entries)
and each candidate is read back in full before it is used: TensorFlow checks
a CRC of every tensor, so a truncated or bit-flipped file is found here, not
half way through a restore.
"""

import os
import re
import sys
from pathlib import Path

from cln_textgen.errors import UserError

POINTER = "checkpoint"  # TensorFlow's name for the pointer file
_NUMBERED = re.compile(r"^ckpt-(\d+)\.index$")
_POINTER_ENTRY = re.compile(r'^\s*(?:model_checkpoint_path|all_model_checkpoint_paths)\s*:\s*"([^"\n]*)"')
# What a writer that dies mid-save leaves behind: TF's ckpt-N_temp folders and
# the .tmp files of write_text_atomic.
TEMP_PATTERNS = ("*_temp*", ".*.tmp")
_warned = set()  # checkpoints already reported as unreadable in this process


def warn(text):
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _number(prefix):
    match = re.search(r"-(\d+)$", str(prefix))
    return int(match.group(1)) if match else -1


def listed(directory):
    """Prefixes of the checkpoints in ``directory``, newest first: every
    ``ckpt-N.index`` there, and whatever the pointer file names."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = {str(directory / p.name[:-len(".index")]) for p in directory.iterdir()
             if _NUMBERED.match(p.name)}
    try:
        pointer = (directory / POINTER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        pointer = ""
    for line in pointer.splitlines():
        match = _POINTER_ENTRY.match(line)
        if match and Path(match.group(1)).name == match.group(1):  # a plain name, in this folder
            found.add(str(directory / match.group(1)))
    return sorted(found, key=_number, reverse=True)


def has_checkpoint_files(directory):
    """True when ``directory`` holds anything a save wrote (not only temp leftovers)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    temps = {p for pattern in TEMP_PATTERNS for p in directory.glob(pattern)}
    return any(p not in temps and (p.is_file() or has_checkpoint_files(p))
               for p in directory.iterdir())


def unreadable_reason(prefix):
    """None if every tensor of ``prefix`` reads back (CRC checked), else why not."""
    from cln_textgen.backend import tf

    if not Path(prefix + ".index").is_file():
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # TF raises OpError, IndexError, ValueError... for damaged files
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0][:160] if text else 'unreadable'}"
    return None


def newest_readable(directory, say=warn):
    """The newest checkpoint of ``directory`` that reads back, or None if there
    is none.  Skipped ones are named in one line through ``say``.  A checkpoint
    removed while it is read (a trainer rotating its checkpoints) is not an
    error: the folder is listed again."""
    bad, tried = [], set()
    for _ in range(100):  # bounded: every pass tries a new prefix
        candidates = [p for p in listed(directory) if p not in tried]
        if not candidates:
            break
        prefix = candidates[0]
        tried.add(prefix)
        reason = unreadable_reason(prefix)
        if reason is None:
            _report(bad, prefix, say)
            return prefix
        if Path(prefix + ".index").is_file() or not _was_rotated(prefix, directory):
            bad.append((prefix, reason))
    _report(bad, None, say)
    return None


def _was_rotated(prefix, directory):
    """A prefix whose files are all gone while a newer checkpoint exists was
    deleted by the trainer's rotation, not damaged."""
    gone = not list(Path(directory).glob(Path(prefix).name + ".*"))
    return gone and any(_number(p) > _number(prefix) for p in listed(directory))


def _report(bad, used, say):
    fresh = [(p, r) for p, r in bad if p not in _warned]
    if not fresh:
        return
    _warned.update(p for p, _ in fresh)
    names = "; ".join(f"{p} ({r})" for p, r in fresh)
    if used:
        say(f"skipped unreadable checkpoint {names}; using {used}")
    else:
        say(f"unreadable checkpoint {names}")


def require_readable(directory, fix):
    """:func:`newest_readable`, or a one-line error naming the files when the
    folder has checkpoint files and none of them reads back."""
    prefix = newest_readable(directory)
    if prefix is None:
        raise none_readable(directory, fix)
    return prefix


def none_readable(directory, fix):
    names = ", ".join(Path(p).name for p in listed(directory)) or "none listed"
    return UserError(f"{directory}: no checkpoint reads back (checkpoint files: {names}); {fix}")


def repair_pointer(directory, current):
    """Make the pointer file name ``current`` (the checkpoint resumed from) as the
    latest, with the older ones that exist before it.  After a fallback, a
    damaged pointer (an empty one makes TensorFlow's CheckpointManager raise)
    or newer unreadable checkpoints must not lead the trainer astray.  The
    unreadable files themselves stay where they are; a later save of the same
    step replaces them."""
    from cln_textgen.runs.files import write_text_atomic

    directory = Path(directory)
    pointer = directory / POINTER
    if current is None:
        if pointer.is_file() and not listed_in_pointer(directory):
            os.replace(pointer, directory / (POINTER + ".damaged"))  # kept for a look, not used
        return
    name = Path(current).name
    if listed_in_pointer(directory)[:1] == [name]:
        return
    older = [Path(p).name for p in listed(directory)
             if _number(p) < _number(current) and Path(p + ".index").is_file()]
    names = list(reversed(older)) + [name]
    text = f'model_checkpoint_path: "{name}"\n' + "".join(
        f'all_model_checkpoint_paths: "{n}"\n' for n in names)
    write_text_atomic(pointer, text)


def listed_in_pointer(directory):
    """The names the pointer file gives, its current one first; [] if it is unreadable."""
    try:
        text = (Path(directory) / POINTER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    current, others = [], []
    for line in text.splitlines():
        match = _POINTER_ENTRY.match(line)
        if not match:
            if line.strip():
                return []  # not what TensorFlow writes
            continue
        (current if line.lstrip().startswith("model_") else others).append(match.group(1))
    return current + others if len(current) == 1 else []


def remove_temp_leftovers(*directories):
    """Remove what an interrupted save left (TF's ``ckpt-N_temp`` folders)."""
    import shutil

    for directory in directories:
        if Path(directory).is_dir():
            for path in Path(directory).glob("*_temp*"):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
