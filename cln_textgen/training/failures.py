"""A save that fails (a full disk, a lost mount, no permission) ends training
with one line that names the cause and the last good checkpoint, exit code 1.
What the failed save left half-written is removed; nothing else is touched."""

import contextlib

from cln_textgen.runs.checkpoints import remove_temp_leftovers


class SaveFailed(Exception):
    """Writing the run folder failed; the last good checkpoint is kept."""

    exit_code = 1


def cause(error):
    """The reason in a few words: ``No space left on device: 'runs/x/...'``."""
    strerror = getattr(error, "strerror", None)
    if strerror:
        name = getattr(error, "filename", None)
        return f"{strerror}: {name}" if name else strerror
    text = str(getattr(error, "message", "") or error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@contextlib.contextmanager
def guarded_save(what, step, last_good, folders):
    """Turn an OSError or a TensorFlow I/O error while writing ``what`` into
    :class:`SaveFailed`, after removing the temporary folders of ``folders``."""
    from cln_textgen.backend import tf

    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        remove_temp_leftovers(*folders)
        kept = (f"the last good checkpoint is {last_good}" if last_good
                else "no checkpoint was saved yet")
        raise SaveFailed(f"cannot write {what} at step {step} ({cause(e)}); {kept}; free space "
                         "(or fix the folder) and run the same command to resume") from None
