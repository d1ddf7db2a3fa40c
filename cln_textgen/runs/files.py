"""Writing a run's files so that a crash, a full disk or a second writer
leaves the old content or the new one, never a mix or a torn file."""

import os
import tempfile
from pathlib import Path


def _fsync(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # gone already (a rotated checkpoint): nothing to sync
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; nothing to do there
    finally:
        os.close(fd)
    return True


def fsync_dir(path):
    """Make a rename or a new file in ``path`` survive a power cut."""
    _fsync(path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data, fsync=True):
    """Write via a temporary file of a unique name and rename it over ``path``.

    The unique name keeps two writers from sharing a temporary file; on any
    error the temporary file is removed and the error goes on unchanged.  The
    file gets the mode a plain ``open`` would give it (mkstemp's is 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)


def write_text_atomic(path, text, fsync=True):
    write_bytes_atomic(path, text.encode("utf-8"), fsync)


def fsync_files(paths):
    """fsync files another library wrote (TensorFlow does not sync its checkpoints)."""
    folders = {Path(path).parent for path in paths if _fsync(path)}
    for folder in folders:
        fsync_dir(folder)
