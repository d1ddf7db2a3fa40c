"""A run's event log: one JSON object per line in ``metrics.jsonl``, and the
numbers among them as TensorBoard scalars."""

import json
import time

from cln_textgen.backend import tf
from cln_textgen.runs.folder import write_text_atomic


class RunLog:
    """Appends events to a run folder; does nothing when not ``enabled`` (the
    workers of a multi-worker run other than the chief)."""

    def __init__(self, run, enabled=True):
        self.run = run
        self.enabled = enabled
        self._writer = None

    def write(self, event, step, epoch, **values):
        if not self.enabled:
            return
        record = {"event": event, "step": step, "epoch": epoch, "time": round(time.time(), 3),
                  **values}
        with open(self.run.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.run.tensorboard))
        with self._writer.as_default(step=step):
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(f"{event}/{key}", value)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def truncate(self, step):
        """Drop events logged after ``step``: the resumed run logs them again."""
        path = self.run.metrics
        if not self.enabled or not path.is_file():
            return
        kept = [line for line, event in read_events(path) if event.get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_events(path):
    """``(line, event)`` for each whole event of a metrics file.  A line cut short
    by a kill (even inside a multi-byte character) or damaged is skipped."""
    events = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8").rstrip("\n")
                event = json.loads(line)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError
                continue
            if isinstance(event, dict):
                events.append((line, event))
    return events
