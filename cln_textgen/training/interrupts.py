"""Ctrl-C and SIGTERM (what job schedulers send before they kill): both stop
training at the next step boundary with a checkpoint, and neither prints a
traceback at any other moment.  Exit codes: 130 for Ctrl-C, 143 for SIGTERM
(128 + the signal number, as shells report them)."""

import signal


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved (or the last one kept)."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Interrupted(KeyboardInterrupt):
    """SIGTERM outside the training loop, raised like Ctrl-C's KeyboardInterrupt."""

    signum = signal.SIGTERM


def exit_code(interrupt):
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def _raise_terminate(signum, frame):
    raise Interrupted


def terminate_as_interrupt():
    """Make SIGTERM raise like Ctrl-C does, for the whole command."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminate)
    except ValueError:  # not the main thread
        pass


class DeferredInterrupt:
    """Ctrl-C or SIGTERM stop training between two steps, never inside one.

    A step and its bookkeeping (the batch position) must be saved together, or
    a resumed run would repeat or skip a batch.  The first signal only sets a
    flag that the loop checks after each step; a second one stops at once,
    keeping the last checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    @property
    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum

    def check(self, trainer):
        if self.requested:
            trainer.save()
            name = "SIGTERM: " if self.signum == signal.SIGTERM else ""
            raise TrainingInterrupted(
                f"{name}interrupted at step {trainer.step}; checkpoint saved in "
                f"{trainer.run.checkpoints}; run the same command to resume", self.signum)

    def restore(self):
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
