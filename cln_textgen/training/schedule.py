"""The learning-rate schedule, and how it goes on when a resumed run is given
more (or fewer) steps than it planned.

The plan: linear warmup from 0 to ``peak`` over ``warmup`` steps, then linear
decay to 0 at ``total``.  Its variables (``total``, and a ramp from ``anchor``
to ``ramp_end``) are saved with every checkpoint, so a resumed run follows the
plan it started with, whatever the command line says.

The rule when ``train.epochs`` or ``train.max_steps`` change on resume at step
``s``: during warmup only the total changes.  Past warmup, the rate goes on
from its current value and moves linearly, over ``max(warmup, warmup_ratio x
the steps left)`` steps, to the schedule the new total would have had from the
start, and follows it from there.  The rate never jumps; a finished run given
more epochs (its rate is 0) warms up again instead of staying at 0.
"""

from cln_textgen.backend import keras, tf


@keras.utils.register_keras_serializable(package="cln_textgen")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then linear decay
    to 0 at ``total``; optionally a linear ramp from ``fraction * peak`` at step
    ``anchor`` to the plan at step ``ramp_end``.  All but ``peak`` may be
    variables (:class:`SchedulePlan`)."""

    def __init__(self, peak, total, warmup, anchor=None, fraction=1.0, ramp_end=None):
        self.peak = float(peak)
        self.total = total if isinstance(total, tf.Variable) else int(total)
        self.warmup = warmup if isinstance(warmup, tf.Variable) else int(warmup)
        self.anchor = self.warmup if anchor is None else anchor
        self.ramp_end = self.anchor if ramp_end is None else ramp_end
        self.fraction = fraction

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        total, warmup, anchor, end = (tf.cast(v, tf.float32) for v in (
            self.total, self.warmup, self.anchor, self.ramp_end))
        fraction = tf.cast(self.fraction, tf.float32)

        def plan(t):
            return (total - t) / tf.maximum(total - warmup, 1.0)

        warm = step / tf.maximum(warmup, 1.0)
        ramp = fraction + (plan(end) - fraction) * (step - anchor) / tf.maximum(end - anchor, 1.0)
        decay = tf.where(step < end, ramp, plan(step))
        return self.peak * tf.clip_by_value(tf.minimum(warm, decay), 0.0, 1.0)

    def get_config(self):
        def plain(value):
            return value.numpy().item() if isinstance(value, tf.Variable) else value

        return {"peak": self.peak, "total": plain(self.total), "warmup": plain(self.warmup),
                "anchor": plain(self.anchor), "fraction": plain(self.fraction),
                "ramp_end": plain(self.ramp_end)}


class SchedulePlan:
    """The schedule's variables; saved in the checkpoint under ``schedule_*``."""

    KEYS = ("schedule_total", "schedule_warmup", "schedule_anchor", "schedule_fraction",
            "schedule_ramp_end")

    def __init__(self, total, warmup):
        def variable(value, dtype, name):
            return tf.Variable(value, dtype=dtype, trainable=False, name=name)

        self.total = variable(int(total), tf.int64, "schedule_total")
        self.warmup = variable(int(warmup), tf.int64, "schedule_warmup")
        self.anchor = variable(int(warmup), tf.int64, "schedule_anchor")
        self.fraction = variable(1.0, tf.float32, "schedule_fraction")
        self.ramp_end = variable(int(warmup), tf.int64, "schedule_ramp_end")

    def variables(self):
        return dict(zip(self.KEYS, (self.total, self.warmup, self.anchor, self.fraction,
                                    self.ramp_end)))

    def schedule(self, peak):
        return WarmupLinearDecay(peak, self.total, self.warmup, self.anchor, self.fraction,
                                 self.ramp_end)

    def retarget(self, schedule, step, new_total, warmup_ratio):
        """Apply the rule above at ``step``; returns the old total, or None when
        the plan already ends at ``new_total``.  The warmup stays the one the
        run started with."""
        old = int(self.total.numpy())
        if old == new_total:
            return None
        warmup = int(self.warmup.numpy())
        if step > warmup:
            current = float(schedule(step)) / schedule.peak  # what the next step would use
            self.fraction.assign(current)
            self.anchor.assign(step)
            self.ramp_end.assign(step + max(warmup, round(warmup_ratio * (new_total - step)), 1))
        self.total.assign(new_total)
        return old


def saved_plan(checkpoint_path):
    """True if the checkpoint holds a schedule plan (runs older than it do not)."""
    names = {name.split("/")[0] for name, _ in tf.train.list_variables(checkpoint_path)}
    return all(key in names for key in SchedulePlan.KEYS)
