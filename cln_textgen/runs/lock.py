"""One writer per folder: an exclusive ``flock`` on ``.lock`` inside it.

The kernel drops the lock when its process ends, however it ends (a kill -9
included), so a stale lock never blocks; the file only tells the next writer
who holds the lock, and since when.
"""

import datetime
import fcntl
import os
from pathlib import Path

from cln_textgen.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    def __init__(self, folder, fd, created):
        self.folder, self._fd, self.created = Path(folder), fd, created

    @property
    def path(self):
        return self.folder / LOCK_NAME

    def release(self, remove_created=False):
        """Unlock; a folder this lock created and that holds nothing else is removed."""
        if self._fd is None:
            return
        if remove_created and self.created:
            try:
                if [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
                    self.path.unlink()
                    self.folder.rmdir()
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


def lock_folder(folder, what="this folder"):
    """Take the writer's lock of ``folder`` (created if missing) or exit 2
    naming the process that holds it."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the folder ({e.strerror})") from None
    path = folder / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{path}: cannot open the lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{folder}: in use by {holder}; wait for it to end (or stop it) "
                            f"before writing {what} again") from None
        # The file may have been removed and made anew between open and flock:
        # a lock on an unlinked file protects nothing, so take it again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} since {since}\n".encode(), 0)
            return FolderLock(folder, fd, created)
        os.close(fd)
    raise UserError(f"{path}: the lock file keeps changing; is another program removing it?")
