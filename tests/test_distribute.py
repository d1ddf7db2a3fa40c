"""tf.distribute on CPU: MirroredStrategy over two logical CPU devices, and
MultiWorkerMirroredStrategy with two local worker processes.

Both need TensorFlow configured before it starts (logical devices, the
collective runtime), so each runs in fresh processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import write_tiny_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

# Trains the same steps (2 micro-batches of 7 rows each) with one device and
# mirrored over two CPU devices; prints their losses, norms and the largest
# weight difference as JSON.
MIRRORED = """
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from cln_textgen.backend import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from cln_textgen.cli import main
from cln_textgen.config import load_config
from cln_textgen.tasks.lm_start import start_run
from cln_textgen.training.trainer import Trainer

config, tmp = sys.argv[1:3]
out = {{}}
for name in ("none", "mirrored"):
    sets = [f"run_dir={{tmp}}/{{name}}", f"train.distribute={{name}}", "model.dropout=0.0",
            "train.samples_per_label=0", "train.batch_size=7",  # 7 rows: a filler row
            "train.accumulate_steps=2"]
    trainer = Trainer(start_run(load_config(config, sets), "test"), progress=False)
    trainer.restore_or_warm_start()
    steps = [trainer.train_on(group) for group in trainer.step_groups(0)[:3]]
    out[name] = dict(replicas=trainer.replicas, steps=steps,
                     weights=[w.numpy() for w in trainer.model.trainable_weights])
diff = max(float(np.abs(a - b).max())
           for a, b in zip(out["none"]["weights"], out["mirrored"]["weights"]))
# The command line, with dropout: mirrored, stopped, then resumed on one device.
args = ["train", "--config", config, "--no-progress", "--set", f"run_dir={{tmp}}/cli",
        "--set", "train.samples_per_label=2", "--set", "train.distribute=mirrored"]
first = main(args + ["--stop-at-step", "3"])
second = main(args[:-2] + ["--set", "train.distribute=none"])
print("RESULT " + json.dumps(dict(
    replicas=[out[n]["replicas"] for n in ("none", "mirrored")],
    steps=[out[n]["steps"] for n in ("none", "mirrored")], weight_diff=diff,
    codes=[first, second])))
"""

# One worker of a multi-worker run: trains like `cln-textgen train`, then
# saves the weights it ends with.
WORKER = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import numpy as np
from cln_textgen.config import load_config
from cln_textgen.tasks.lm_start import start_run
from cln_textgen.training.trainer import Trainer

config, run_dir, steps, out = sys.argv[1:5]
sets = [f"run_dir={{run_dir}}", "train.distribute=multi_worker", f"train.max_steps={{steps}}",
        "train.samples_per_label=1", "train.save_every_steps=2"]
trainer = Trainer(start_run(load_config(config, sets), "test"), progress=False)
restored = trainer.restore_or_warm_start()
status = trainer.fit()
np.savez(out, *[w.numpy() for w in trainer.model.trainable_weights])
print("RESULT", trainer.chief, restored, trainer.step, status)
"""


def python(script, *args, env=None, tmp_path):
    path = tmp_path / f"script-{abs(hash(script))}.py"
    path.write_text(textwrap.dedent(script).format(repo=REPO, tests=TESTS), encoding="utf-8")
    return subprocess.Popen([sys.executable, str(path), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-4000:]
    return out.split("RESULT ")[-1].strip()


@pytest.mark.slow
def test_mirrored_on_two_devices_trains_like_one_device(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48, valid_lines=8)
    result = json.loads(finish(python(MIRRORED, config, tmp_path, tmp_path=tmp_path)))
    assert result["replicas"] == [1, 2]
    one, two = (np.array(s) for s in result["steps"])  # (loss, real targets, grad norm)
    assert np.array_equal(one[:, 1], two[:, 1])
    # Each replica runs half the rows; the gradients are all-reduced: the same
    # loss and update to float32 rounding (measured: 5e-7 in loss, 2e-6 in weights).
    np.testing.assert_allclose(two[:, [0, 2]], one[:, [0, 2]], rtol=1e-5)
    assert result["weight_diff"] < 5e-5
    assert result["codes"] == [0, 0]
    events = [json.loads(line) for line in
              (tmp_path / "cli" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 7))
    assert (tmp_path / "cli" / "samples" / "epoch-2.jsonl").is_file()


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, config, run, steps, tag):
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}))
        processes.append(python(WORKER, config, run, steps, tmp_path / f"{tag}-{index}.npz",
                                env=env, tmp_path=tmp_path))
    results = [finish(p).split() for p in processes]
    weights = [np.load(tmp_path / f"{tag}-{index}.npz") for index in range(2)]
    return results, [[w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))]
                     for w in weights]


@pytest.mark.slow
def test_multi_worker_two_local_processes_agree_and_resume(tmp_path):
    from cln_textgen.backend import tf
    from cln_textgen.model.modeling import ModelConfig, build_model

    config = write_tiny_task(tmp_path / "task", train_lines=48, valid_lines=8)
    run = tmp_path / "run"
    results, weights = run_workers(tmp_path, config, run, 4, "first")
    assert [r[0] for r in results] == ["True", "False"]  # worker 0 is the chief
    assert [r[2] for r in results] == ["4", "4"]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)  # replicas of one model: bitwise the same
    # only the chief wrote the run folder: one line per event, its checkpoints
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-4")
    # the epoch-end and the final (max_steps) evaluations, written once each
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-1.jsonl", "step-4.jsonl"]
    # the other worker holds exactly the weights of the chief's checkpoint
    model = build_model(ModelConfig.load(run / "model.json"))
    tf.train.Checkpoint(model=model).restore(str(run / "checkpoints" / "ckpt-4")).expect_partial()
    for saved, held in zip(model.trainable_weights, weights[1]):
        np.testing.assert_array_equal(saved.numpy(), held)

    # Both workers resume from the chief's checkpoint and go on together.
    results, weights = run_workers(tmp_path, config, run, 6, "second")
    assert [r[1] for r in results] == [str(run / "checkpoints" / "ckpt-4")] * 2
    assert [r[2] for r in results] == ["6", "6"]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 7))
