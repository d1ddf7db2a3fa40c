"""Opening a run folder for training: the rules every task's run follows.

A run folder is never deleted or overwritten implicitly.  The one process that
writes it holds its lock (runs/lock.py).  A folder with checkpoint files is
resumed from the newest checkpoint that reads back; when none reads back,
training stops naming the files.  ``--fresh`` is the explicit way to start
over: the old folder is moved aside, not deleted.

A new run checks and reads everything first and writes its files only then,
each atomically, ``config.yaml`` last, then ``manifest.json``: a setup cut
short leaves some of these files and no config.yaml, and the next start sets
the folder up again instead of refusing it.
"""

import datetime
import hashlib
import os

from cln_textgen.errors import UserError
from cln_textgen.runs import checkpoints
from cln_textgen.runs.files import write_text_atomic
from cln_textgen.runs.lock import LOCK_NAME, lock_folder
from cln_textgen.runs.manifest import write_manifest

# What a run writes before its first checkpoint besides its setup files: such a
# folder is a run that died early, not someone else's folder.
EARLY_FILES = (LOCK_NAME, "checkpoints", "metrics.jsonl", "samples", "tensorboard", "loss.png")
START_OVER = "start over with --fresh (moves this folder aside, deletes nothing)"


def start(run, writes, fresh, resume, new, setup_files):
    """Open ``run`` for training: ``resume(writes)`` when it holds checkpoint files,
    else ``new(writes)`` (after checking the folder is a run's, of ``setup_files``);
    each returns the task.  ``writes=False`` (the non-chief workers of a
    multi-worker run) touches nothing; a writer holds the folder's lock, in
    ``task.lock``, and ``--fresh``'s old folder is ``task.moved_to``."""
    def open_run(w):
        if run.has_checkpoints():
            return resume(w)
        if w:
            check_run_folder(run, setup_files)
        return new(w)

    if not writes:
        return open_run(False)
    task, task_lock, moved_to = open_for_writing(run, fresh, lambda: open_run(True))
    task.lock, task.moved_to = task_lock, moved_to
    return task


def open_for_writing(run, fresh, open_run):
    """Lock ``run``'s folder (moving a used one aside first with ``fresh``) and
    return ``(open_run(), lock, moved_to)``; the lock is released and a folder
    it created removed if ``open_run`` fails."""
    lock = lock_folder(run.path, "this run")
    moved_to = None
    try:
        if fresh and _used(run):
            moved_to = run.path.with_name(
                f"{run.path.name}.old-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            os.rename(run.path, moved_to)  # the lock moves with it; take the new folder's
            lock.release()
            lock = lock_folder(run.path, "this run")
        opened = open_run()
    except OSError as e:
        lock.release(remove_created=True)
        raise UserError(f"{run.path}: cannot write the run folder ({e.strerror})") from None
    except BaseException:
        lock.release(remove_created=True)
        raise
    return opened, lock, moved_to


def _used(run):
    return run.path.is_dir() and any(p.name != LOCK_NAME for p in run.path.iterdir())


def check_run_folder(run, setup_files):
    """A folder without config.yaml may hold a setup cut short, nothing else."""
    if run.config.is_file() or not run.path.is_dir():
        return
    foreign = sorted(p.name for p in run.path.iterdir()
                     if p.name not in tuple(setup_files) + EARLY_FILES
                     and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if foreign:
        raise UserError(f"{run.path}: run_dir exists and is not a run folder ({foreign[0]} is "
                        "not a run's file); choose another run_dir, empty it, or pass --fresh "
                        "to move it aside")


def check_setup_files(run, names):
    """A folder with checkpoints needs its setup files back to resume."""
    missing = [name for name in names if not (run.path / name).is_file()]
    if missing:
        raise UserError(f"{run.path}: has checkpoints but lacks {', '.join(missing)}; restore "
                        f"them from a backup, or {START_OVER}")


def resume_checkpoint(run, writes):
    """The newest checkpoint that reads back; the writer also clears what a save
    cut short left and points TensorFlow's pointer files at what reads back."""
    checkpoint = checkpoints.require_readable(
        run.checkpoints, f"restore them from a backup, or {START_OVER}")
    if writes:
        checkpoints.remove_temp_leftovers(run.checkpoints, run.best_checkpoints)
        checkpoints.repair_pointer(run.checkpoints, checkpoint)
        checkpoints.repair_pointer(run.best_checkpoints,
                                   checkpoints.newest_readable(run.best_checkpoints))
    return checkpoint


def write_run_files(run, texts):
    """Write ``texts`` ({path: text}) in order, each atomically, and the manifest.

    The manifest accepts the new contents before they are written, and only them
    once they are: a crash at any point leaves a folder that opens."""
    changed = {path: text for path, text in texts.items()
               if not path.is_file() or path.read_bytes() != text.encode("utf-8")}
    if not changed and (run.path / "manifest.json").is_file():
        return
    write_manifest(run.path, also={path.name: hashlib.sha256(text.encode("utf-8")).hexdigest()
                                   for path, text in changed.items()})
    for path, text in changed.items():
        write_text_atomic(path, text)
    write_manifest(run.path)
