"""Choosing a run's checkpoint and restoring its model: the rule every command
that reads a trained run (generate, serve, export, evaluate) shares."""

import re
from pathlib import Path

from cln_textgen.errors import UserError
from cln_textgen.model.modeling import build_model
from cln_textgen.runs.checkpoints import none_readable, unreadable_reason


def resolve_checkpoint(run, which="best"):
    """Path of the ``best`` (falls back to latest without valid data) or ``latest``
    checkpoint, of the run's checkpoint saved at step ``which`` (a number), or
    ``which`` itself if it names a checkpoint prefix.  ``best`` and ``latest``
    are the newest checkpoints that read back: a damaged one is skipped with a
    warning (runs/checkpoints.py)."""
    if which == "best":
        path = run.best_checkpoint() or run.latest_checkpoint()
    elif which == "latest":
        path = run.latest_checkpoint()
    else:
        path = _step_checkpoint(run, which) if which.isdigit() else which
        if not Path(path + ".index").is_file():
            raise UserError(f"--checkpoint {which}: not 'best', 'latest', the step of a "
                            "checkpoint of the run or a checkpoint prefix (a path whose "
                            ".index file exists)")
        reason = unreadable_reason(path)
        if reason:
            raise UserError(f"--checkpoint {which}: does not read back ({reason}); pass "
                            "'best', 'latest' or another checkpoint")
    if path is None:
        if run.has_checkpoints():
            raise none_readable(run.checkpoints, "restore them from a backup, or train the run "
                                                 "again with --fresh")
        raise UserError(f"{run.checkpoints}: no checkpoints yet; train the run first "
                        f"(cln-textgen train --config {run.config})")
    return path


def _step_checkpoint(run, step):
    """The prefix of the run's checkpoint of ``step`` (the latest ones first, then the best)."""
    for folder in (run.checkpoints, run.best_checkpoints):
        if Path(folder / f"ckpt-{int(step)}.index").is_file():
            return str(folder / f"ckpt-{int(step)}")
    return str(run.checkpoints / f"ckpt-{int(step)}")


def checkpoint_step(path):
    """The training step a checkpoint was saved at (its number), or ``None``."""
    match = re.search(r"-(\d+)$", str(path or ""))
    return int(match.group(1)) if match else None


def load_model(run, checkpoint="best"):
    """``(model, model_config, checkpoint_path)`` restored from a run folder.

    A trainer may delete the chosen checkpoint (its rotation) between the choice
    and the read: the newest one is then chosen again."""
    from cln_textgen.backend import tf

    model_config = run.read_model_config()
    model = build_model(model_config)
    for attempt in range(3):
        path = resolve_checkpoint(run, checkpoint)
        try:
            tf.train.Checkpoint(model=model).restore(path).expect_partial() \
                .assert_existing_objects_matched()
        except tf.errors.NotFoundError:
            if attempt < 2 and not Path(path + ".index").is_file():
                continue  # rotated away while it was read
            raise UserError(f"{path}: removed while it was read; run the command again") from None
        except (AssertionError, tf.errors.OpError, ValueError) as e:
            raise UserError(f"{path}: the checkpoint does not fit this run's model.json "
                            f"({str(e).splitlines()[0]})") from None
        return model, model_config, path
