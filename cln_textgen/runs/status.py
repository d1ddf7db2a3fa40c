"""Where a run stands: the one rule of "complete", and whether a writer holds it.

The trainer asks :func:`completion` with its live counters; ``runs`` and
``show`` ask it with the counters read back from ``metrics.jsonl``, so a run
is complete for both by the same rule (patience included).
"""

import fcntl
import os

from cln_textgen.runs.lock import LOCK_NAME


def steps_finished(train, step):
    return bool(train.max_steps and step >= train.max_steps)


def patience_exhausted(train, bad_evals, has_valid):
    """``bad_evals``: evaluations since the best valid loss (only with valid data)."""
    return bool(train.patience and has_valid and bad_evals >= train.patience)


def completion(train, step, epochs_done, bad_evals, has_valid):
    """Why a run with these counters is complete under the ``train:`` section
    ``train``, or None."""
    if steps_finished(train, step):
        return "reached train.max_steps"
    if patience_exhausted(train, bad_evals, has_valid):
        return "early stopping: valid loss stopped improving"
    if epochs_done >= train.epochs:
        return "done"
    return None


def bad_evals(valid_losses):
    """Evaluations since the best of ``valid_losses`` (in order), as the trainer
    counts them: an equal loss is no improvement."""
    best, bad = float("inf"), 0
    for loss in valid_losses:
        if loss < best:
            best, bad = loss, 0
        else:
            bad += 1
    return bad


def writer(folder):
    """Who holds the writer's lock of ``folder`` (``"PID N since ..."``), or None.

    Asked with a shared lock taken and dropped at once: a writer starting in
    that instant would be told the folder is in use, and can simply start again."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None
