"""The training loop of every task (the conditional LM, the classifier, masked-LM
pretraining): optimizer, strategy, checkpoints, resume, logging and signals.

Same run folder = resume: when ``run_dir`` holds checkpoints, the latest one
restores the model, the optimizer, the epoch, the batch position within that
epoch's (deterministic) order and the dropout random state, so the resumed
run continues with exactly the batches and masks an unbroken run would use.

Speed options (``train.*``): length-bucketed batches and a token budget per
batch (:mod:`cln_textgen.data.batching`), gradient accumulation, XLA and mixed
precision (:mod:`cln_textgen.training.step`), and tf.distribute
(:mod:`cln_textgen.training.distribute`): with ``multi_worker`` only the chief writes
the run folder.

What is trained comes with ``task`` (:class:`cln_textgen.training.task.Task`):
its model, its batches, its loss, its evaluation and its samples.  The loop
knows nothing of labels, tokens or texts.
"""

import json
import math
import time

import numpy as np
from tqdm import tqdm

from cln_textgen.data import batching

from cln_textgen.training import distribute
from cln_textgen.backend import keras, tf
from cln_textgen.errors import UserError
from cln_textgen.training.log import RunLog
from cln_textgen.runs.files import fsync_files
from cln_textgen.runs import status as run_status
from cln_textgen.runs.folder import RunDir, write_text_atomic
from cln_textgen.training.failures import SaveFailed, guarded_save
from cln_textgen.training.interrupts import DeferredInterrupt, TrainingInterrupted, exit_code
from cln_textgen.training.schedule import SchedulePlan, WarmupLinearDecay, saved_plan
from cln_textgen.training.step import TrainStep, precision_policy

NO_DECAY = ("gamma", "beta", "bias", "Norm")  # LayerNorm (and CLN) parameters and biases
# Under XLA every batch shape compiles anew; lengths rounded up to a multiple
# of this keep the shapes to max_length / 16 values.
JIT_LENGTH_MULTIPLE = 16

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "SaveFailed",
           "WarmupLinearDecay", "NO_DECAY"]


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""




class Trainer:
    """Owns the model, optimizer and checkpoints of one run, and trains it."""

    def __init__(self, task, console=print, progress=True):
        self.task = task
        self.run = task.run
        self.config = task.config
        self.console = console
        train = self.config.train
        # First: a multi-worker strategy must exist before any tensor does.
        self.strategy = distribute.make_strategy(train.distribute)
        self.chief = distribute.is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        self.progress = progress and self.chief
        self.length_multiple = JIT_LENGTH_MULTIPLE if train.jit_compile else 1  # batch lengths
        self.lengths = task.row_lengths()
        self.total_steps = self._total_steps()

        with self.strategy.scope():
            self.dropout_seed = distribute.ReplicaDropoutSeed(train.seed)
            with precision_policy(train.mixed_precision):
                self.model = task.build_model(self.dropout_seed)
            self.plan = SchedulePlan(self.total_steps, round(train.warmup_ratio * self.total_steps))
            self.schedule = self.plan.schedule(train.learning_rate)
            adamw = keras.optimizers.AdamW(learning_rate=self.schedule,
                                           weight_decay=train.weight_decay,
                                           epsilon=train.adam_epsilon)
            adamw.exclude_from_weight_decay(var_names=list(NO_DECAY))
            # The loss scale of mixed_float16 exists in every run, used or not:
            # checkpoints then have one layout whatever train.mixed_precision
            # says (it may change on resume), and are restored strictly.
            self.optimizer = keras.mixed_precision.LossScaleOptimizer(adamw)
            self.optimizer.build(self.model.trainable_variables)  # slots exist before restore

            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
            self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False,
                                    name="best_valid_loss")
            self.bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="evals_without_gain")
            state = dict(model=self.model, optimizer=self.optimizer,
                         dropout=self.dropout_seed.variable, epoch=self.epoch, batch=self.batch,
                         best=self.best, bad_evals=self.bad_evals)
            self.checkpoint = tf.train.Checkpoint(**state, **self.plan.variables())
            self._legacy_checkpoint = tf.train.Checkpoint(**state)  # runs without a saved plan
        # Every worker saves (a save may need all of them); only the chief's
        # checkpoints land in the run folder.
        self._scratch = distribute.scratch_folder(self.chief)
        writes = RunDir(self._scratch.name) if self._scratch else self.run
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(writes.checkpoints), max_to_keep=train.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, str(writes.best_checkpoints), max_to_keep=1)
        self._saved_at = None  # the step of the last checkpoint saved or restored
        self.last_good = None  # the path of that checkpoint
        self._evaluated_at = None  # the step of the last evaluation in this process
        self.stepper = None  # the TrainStep, made by the first train_on
        self.run_log = RunLog(self.run, enabled=self.chief)

    # ------------------------------------------------------------ setup

    def _plan(self, epoch):
        t = self.config.train
        return batching.epoch_batches(self.lengths, t.batch_size, t.seed, epoch,
                                      t.bucket_by_length, t.batch_tokens)

    def step_groups(self, epoch):
        """The micro-batches (index arrays) of each optimizer step of ``epoch``;
        the last step of an epoch takes what is left."""
        plan, n = self._plan(epoch), self.config.train.accumulate_steps
        return [plan[b:b + n] for b in range(0, len(plan), n)]

    def _total_steps(self):
        t = self.config.train
        return batching.planned_steps((len(self.step_groups(e)) for e in range(t.epochs)),
                                      t.max_steps)

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def restore_or_warm_start(self):
        """Resume from the checkpoint :func:`start_run` chose (the newest that reads
        back), else load the pretrained weights."""
        # The chief's folder on every worker: run_dir must be shared by all.
        latest = self.task.checkpoint
        if latest:
            checkpoint = self.checkpoint if saved_plan(latest) else self._legacy_checkpoint
            try:
                checkpoint.restore(latest).assert_consumed()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise UserError(f"{latest}: does not fit this run ({str(e).splitlines()[0][:200]}); "
                                "restore the run's files, or start over with --fresh") from None
            self._saved_at, self.last_good = self.step, latest
            if not self.completion():
                self._retarget_schedule()
        else:
            self.task.warm_start(self.model)
        self.run_log.truncate(self.step)  # events after the checkpoint are logged again
        if not distribute.same_on_all_workers(self.strategy, self.step):
            raise UserError(f"{self.run.checkpoints}: the workers found different checkpoints; "
                            "run_dir must be one folder that every worker shares")
        return latest

    def _retarget_schedule(self):
        old = self.plan.retarget(self.schedule, self.step, self.total_steps,
                                 self.config.train.warmup_ratio)
        if old is not None:
            end = int(self.plan.ramp_end.numpy())
            ramp = (f", moves to the new plan by step {end}" if end > self.step else "")
            self.say(f"planned steps {old} -> {self.total_steps}: the learning rate goes on from "
                     f"{float(self.schedule(self.step)):.2e}{ramp} and reaches 0 at step "
                     f"{self.total_steps}")

    def completion(self):
        """Why the run is complete, or None: the one rule (runs/status.py) of the
        command, the loop, and ``runs``/``show``."""
        return run_status.completion(self.config.train, self.step, int(self.epoch.numpy()),
                                     int(self.bad_evals.numpy()), self.task.has_valid)

    def _patience_exhausted(self):
        return run_status.patience_exhausted(self.config.train, int(self.bad_evals.numpy()),
                                             self.task.has_valid)

    def _make_stepper(self):
        t = self.config.train
        with self.strategy.scope():
            return TrainStep(self.model, self.optimizer, self.strategy, self.dropout_seed,
                             self.task.training_loss(self.model, gather=not t.jit_compile),
                             clip_norm=t.clip_norm,
                             accumulate_steps=t.accumulate_steps, jit_compile=t.jit_compile,
                             loss_scale=t.mixed_precision == "mixed_float16")

    def train_on(self, group):
        """One optimizer step on ``group`` (index arrays, one per micro-batch) of
        the task's training rows; returns ``(loss, real tokens, grad_norm)``."""
        if self.stepper is None:
            self.stepper = self._make_stepper()
        batches = [self.task.make_batch(indices, self.step, micro, self.length_multiple,
                                        self.replicas)
                   for micro, indices in enumerate(group)]
        total = sum(self.task.count_targets(batch) for batch in batches)
        loss, norm = self.stepper(batches, total)
        real = sum(self.task.count_tokens(batch) for batch in batches)
        return loss, real, norm

    # ------------------------------------------------------------ logging

    def log(self, event, **values):
        with self._guard("metrics.jsonl"):
            self.run_log.write(event, self.step, int(self.epoch.numpy()), **values)

    def _guard(self, what):
        return guarded_save(what, self.step, self.last_good,
                            (self.manager.directory, self.best_manager.directory))

    def say(self, text):
        if not self.chief:
            return
        if self.progress:
            tqdm.write(text)
        else:
            self.console(text)

    # ------------------------------------------------------------ checkpoints

    def save(self, manager=None):
        manager = manager or self.manager
        with self._guard(f"a checkpoint in {manager.directory}"):
            path = manager.save(checkpoint_number=self.step)
            # TensorFlow does not fsync: a power cut could lose a "saved" checkpoint.
            fsync_files([*tf.io.gfile.glob(path + ".*"), f"{manager.directory}/checkpoint"])
        if manager is self.manager:
            self._saved_at, self.last_good = self.step, path
            self.log("checkpoint", path=str(path))
        return path

    def evaluate(self):
        """The task's held-out figures: ``loss`` (lower is better) and more."""
        return self.task.evaluate(self.model)

    def _evaluate_and_report(self, name):
        """Valid loss, samples and early-stopping bookkeeping; True to stop early."""
        self._evaluated_at = self.step
        stop = False
        if self.task.has_valid:
            result = self.evaluate()
            self.log("eval", **result.log_fields())
            self.say(f"{name}: {result.describe()}")
            if result.loss < float(self.best.numpy()):
                self.best.assign(result.loss)
                self.bad_evals.assign(0)
                self.save(self.best_manager)
            else:
                self.bad_evals.assign_add(1)
                stop = self._patience_exhausted()
        samples = self.task.samples(self.model) if self.chief else []
        if samples:
            lines = [json.dumps({**record, "step": self.step, "epoch": int(self.epoch.numpy())},
                                ensure_ascii=False) for record, _ in samples]
            with self._guard("samples"):
                self.run.samples.mkdir(exist_ok=True)
                write_text_atomic(self.run.samples / f"{name.replace(' ', '-')}.jsonl",
                                  "\n".join(lines) + "\n", fsync=False)
            for _, shown in samples:
                self.say(f"  {shown}")
        return stop

    # ------------------------------------------------------------ the loop

    def fit(self, stop_at_step=None):
        """Train to the configured end; returns a short status string."""
        t = self.config.train
        bar = tqdm(total=self.total_steps, initial=min(self.step, self.total_steps),
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        window_tokens, window_start = 0, time.perf_counter()
        interrupt = DeferredInterrupt()
        try:
            if self.completion():
                return self._finish(self.completion())
            while int(self.epoch.numpy()) < t.epochs:
                epoch = int(self.epoch.numpy())
                bar.set_description(f"epoch {epoch + 1}/{t.epochs}")
                # self.batch counts the batches of this epoch already trained:
                # whole steps, or all of them once the epoch's last step is done.
                b = int(self.batch.numpy())
                for group in self.step_groups(epoch)[math.ceil(b / t.accumulate_steps):]:
                    if self._finished_steps():
                        if self._evaluated_at != self.step:
                            self._evaluate_and_report(f"step {self.step}")
                        return self._finish("reached train.max_steps")
                    loss, count, norm = self.train_on(group)
                    loss = float(loss)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(self._diverged_message(loss))
                    b += len(group)
                    self.batch.assign(b)
                    window_tokens += int(count)
                    step = self.step
                    bar.update(1)
                    if step % t.log_every_steps == 0:
                        elapsed = time.perf_counter() - window_start
                        lr = float(self.schedule(step - 1))  # the rate this step used
                        speed = window_tokens / max(elapsed, 1e-9)
                        self.log("train", loss=loss, lr=lr, grad_norm=float(norm),
                                 tokens_per_s=speed)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}")
                        if not self.progress:
                            self.say(f"step {step}: loss {loss:.4f}, lr {lr:.2e}, "
                                     f"{speed:,.0f} tokens/s")
                        window_tokens, window_start = 0, time.perf_counter()
                    if t.save_every_steps and step % t.save_every_steps == 0:
                        self.save()
                    if t.eval_every_steps and step % t.eval_every_steps == 0:
                        if self._evaluate_and_report(f"step {step}"):
                            self.save()
                            return self._finish("early stopping: valid loss stopped improving")
                    if stop_at_step is not None and step >= stop_at_step:
                        self.save()
                        return self._finish(f"stopped at step {step} as asked; run again to resume")
                    interrupt.check(self)
                self.epoch.assign(epoch + 1)
                self.batch.assign(0)
                stop = self._evaluate_and_report(f"epoch {epoch + 1}")
                self.save()
                if stop:
                    return self._finish("early stopping: valid loss stopped improving")
                interrupt.check(self)
            return self._finish("done")
        except KeyboardInterrupt as e:
            raise TrainingInterrupted(f"stopped at once; the last checkpoint ({self.last_good}) "
                                      "is kept; run the same command to resume from it",
                                      exit_code(e) - 128) from None
        finally:
            interrupt.restore()
            bar.close()
            self.run_log.flush()

    def _finished_steps(self):
        return run_status.steps_finished(self.config.train, self.step)

    def _finish(self, status):
        if self._saved_at != self.step:
            self.save()
        return status

    def _diverged_message(self, loss):
        latest = self.last_good
        kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was saved"
        return (f"loss became {loss} at step {self.step}; {kept}; lower train.learning_rate "
                "(or train.clip_norm) and run again to resume from it")
