"""tf.distribute for training: the strategy ``train.distribute`` names, and who writes.

Every worker of a multi-worker run computes the same global batches (the
batch plan is a pure function of the data and ``train.seed``) and each
replica takes its own rows of them, so no input pipeline has to be sharded.
Only the chief writes the run folder; the other workers write their
checkpoints to a temporary folder, as TensorFlow's multi-worker guide asks
(every worker takes part in a save), and drop it.
"""

import json
import os
import tempfile

from cln_textgen.backend import tf
from cln_textgen.errors import UserError
from cln_textgen.model.layers import DropoutSeed


def make_strategy(name):
    """The strategy for ``train.distribute``; must run before any tensor exists."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All local GPUs; a machine without any has one CPU device, unless
        # logical CPU devices were configured (the tests make two).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown train.distribute {name!r}")


def _check_tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError("train.distribute: multi_worker needs the TF_CONFIG environment "
                        "variable on every worker (see docs/distributed.md)")
    try:
        config = json.loads(text)
        config["cluster"], config["task"]["type"], config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise UserError('TF_CONFIG: expected JSON like {"cluster": {"worker": ["host:port", '
                        '...]}, "task": {"type": "worker", "index": 0}}') from None


def chief_by_tf_config(name):
    """Whether this process will be the chief, known before any strategy exists
    (the run folder is set up before TensorFlow starts its workers)."""
    if name != "multi_worker":
        return True
    _check_tf_config()
    config = json.loads(os.environ["TF_CONFIG"])
    return _chief(config["task"]["type"], config["task"]["index"], config["cluster"])


def _chief(task_type, task_id, jobs):
    """The chief is the task of type ``chief``, or worker 0 when there is none."""
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)


def is_chief(strategy):
    """Whether this process writes the run folder (always, unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return _chief(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def scratch_folder(chief):
    """A temporary folder for a non-chief worker's writes (None on the chief);
    it is removed when the returned object is cleaned up or collected."""
    if chief:
        return None
    return tempfile.TemporaryDirectory(prefix="cln-textgen-worker-")


def same_on_all_workers(strategy, value):
    """Whether the integer ``value`` is the same in every replica (one all-gather)."""
    if strategy.num_replicas_in_sync == 1:
        return True
    values = strategy.run(lambda: tf.constant([value], tf.int64))
    gathered = strategy.gather(values, axis=0).numpy()
    return bool((gathered == gathered[0]).all())


def split_rows(*arrays):
    """This replica's rows of each array of a global batch (rows are a multiple
    of the replicas)."""
    replica = tf.distribute.get_replica_context()
    count = replica.num_replicas_in_sync
    if count == 1:
        return arrays
    rows = tf.shape(arrays[0])[0] // count
    start = rows * replica.replica_id_in_sync_group
    return tuple(array[start:start + rows] for array in arrays)


class ReplicaDropoutSeed(DropoutSeed):
    """A :class:`DropoutSeed` whose masks also differ between replicas.

    With one replica it draws exactly what ``DropoutSeed`` draws (so a run
    trains the same with or without a strategy); with several, the replica
    id is folded into the seed, or every replica would drop the same units
    of its rows.
    """

    def draw(self, shape, salt):
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.num_replicas_in_sync == 1:
            return super().draw(shape, salt)
        seed = tf.random.experimental.stateless_fold_in(self.variable, salt)
        seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group)
        return tf.random.stateless_uniform(shape, seed=seed)
