"""Speed options of training: padding, accumulation, XLA, mixed precision, and
exact resume with them on."""

import json

import numpy as np
import pytest

from conftest import write_tiny_task
from cln_textgen.data import batching
from cln_textgen.cli import main


def tiny_model(dropout=0.0):
    from cln_textgen.model.modeling import ModelConfig, build_model, conditional_layers

    config = ModelConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32, label_embedding_size=8,
                         dropout=dropout, attention_dropout=dropout, max_position=64)
    model = build_model(config)
    # the condition projections start at zero; give them values so labels matter
    rng = np.random.default_rng(0)
    for layer in conditional_layers(model):
        for dense in (layer.beta_dense, layer.gamma_dense):
            dense.kernel.assign(rng.normal(0, 0.05, dense.kernel.shape).astype(np.float32))
    return model


def rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[2] + rng.integers(5, 20, n - 2).tolist() + [3] for n in lengths]


def one_step(model, batches, accumulate_steps=1, jit_compile=False):
    """One SGD step (plain: Adam would magnify float noise in tiny gradients)."""
    from cln_textgen.backend import keras, tf
    from cln_textgen.model.layers import DropoutSeed
    from cln_textgen.tasks.lm import NextTokenLoss
    from cln_textgen.training.step import TrainStep

    optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(learning_rate=0.5))
    step = TrainStep(model, optimizer, tf.distribute.get_strategy(), DropoutSeed(0),
                     NextTokenLoss(model, 0, gather=not jit_compile),
                     accumulate_steps=accumulate_steps, jit_compile=jit_compile)
    total = sum(batching.real_targets(tokens) for tokens, _ in batches)
    loss, _ = step(batches, total)
    return loss, [w.numpy() for w in model.trainable_weights]


def test_pad_batch_rounds_lengths_up_and_adds_rows_that_predict_nothing():
    token_ids, label_ids = rows([5, 9, 4]), [1, 0, 1]
    tokens, labels = batching.pad_batch(token_ids, label_ids, [0, 1, 2], length_multiple=8,
                                        rows_multiple=2)
    assert tokens.shape == (4, 16) and labels.tolist() == [1, 0, 1, 0]
    assert tokens[3].tolist() == [2] + [0] * 15  # [CLS], then padding: no target
    assert batching.real_targets(tokens) == 4 + 8 + 3
    plain, _ = batching.pad_batch(token_ids, label_ids, [0, 1, 2])
    assert plain.shape == (3, 9) and np.array_equal(tokens[:3, :9], plain)


def test_accumulated_micro_batches_train_exactly_like_one_batch():
    token_ids = rows([7, 12, 5, 9, 11, 6])
    label_ids = [0, 1, 1, 0, 1, 0]
    whole = [batching.pad_batch(token_ids, label_ids, range(6))]
    parts = [batching.pad_batch(token_ids, label_ids, [0, 1, 2]),
             batching.pad_batch(token_ids, label_ids, [3, 4, 5])]
    model = tiny_model()
    start = [w.numpy() for w in model.trainable_weights]
    loss_whole, after_whole = one_step(model, whole)
    for w, value in zip(model.trainable_weights, start):
        w.assign(value)
    loss_parts, after_parts = one_step(model, parts, accumulate_steps=2)
    # the loss is the mean over all 44 real targets either way, not a mean of means
    assert loss_parts == pytest.approx(loss_whole, rel=1e-6)
    for a, b, s in zip(after_whole, after_parts, start):
        assert not np.array_equal(a, s)  # the step changed every weight
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_xla_step_equals_the_gathered_step():
    """Without XLA the output layer runs on real targets only; with XLA on the
    whole (padded) batch: the same loss and update."""
    token_ids = rows([7, 12, 5, 9])
    batches = [batching.pad_batch(token_ids, [0, 1, 1, 0], range(4), length_multiple=16)]
    model = tiny_model()
    start = [w.numpy() for w in model.trainable_weights]
    loss, after = one_step(model, batches)
    for w, value in zip(model.trainable_weights, start):
        w.assign(value)
    loss_xla, after_xla = one_step(model, batches, jit_compile=True)
    assert loss_xla == pytest.approx(loss, rel=1e-5)
    for a, b in zip(after, after_xla):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_norms_and_logits_float32(policy):
    from cln_textgen.backend import keras, tf
    from cln_textgen.model.modeling import conditional_layers
    from cln_textgen.training.step import precision_policy

    with precision_policy(policy):
        model = tiny_model()
    assert keras.mixed_precision.global_policy().name == "float32"  # put back
    low = getattr(tf, policy.split("_")[1])
    assert model.get_layer("Transformer-0-FeedForward").compute_dtype == low.name
    for layer in conditional_layers(model):
        assert layer.compute_dtype == "float32"
        assert layer.beta_dense.compute_dtype == "float32"
    assert all(w.dtype == tf.float32 for w in model.weights)  # variables stay float32
    token_ids = rows([7, 12])
    tokens, labels = batching.pad_batch(token_ids, [0, 1], [0, 1])
    logits = model([tokens, labels])
    assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()


def trainer_for(config, run_dir, *sets):
    from cln_textgen.config import load_config
    from cln_textgen.tasks.lm_start import start_run
    from cln_textgen.training.trainer import Trainer

    overrides = [f"run_dir={run_dir}", "train.samples_per_label=0", *sets]
    trainer = Trainer(start_run(load_config(config, overrides), "test"), progress=False)
    trainer.restore_or_warm_start()
    return trainer


def test_bfloat16_trains_close_to_float32(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48, valid_lines=8)
    losses = {}
    for policy in ("none", "mixed_bfloat16"):
        trainer = trainer_for(config, tmp_path / policy, "model.dropout=0.0",
                              f"train.mixed_precision={policy}")
        losses[policy] = [trainer.train_on(group)[0] for group in trainer.step_groups(0)[:2]]
    np.testing.assert_allclose(losses["mixed_bfloat16"], losses["none"], rtol=1e-2)


@pytest.mark.slow
def test_float16_loss_scale_is_checkpointed_and_precision_may_change_on_resume(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=48, valid_lines=8)
    run = tmp_path / "run"
    first = trainer_for(config, run)
    first.fit(stop_at_step=1)
    first.task.lock.release()  # one writer at a time, as separate commands would be
    # float32 -> float16: the checkpoint has no loss scale; a fresh one starts
    fresh = trainer_for(config, run, "train.mixed_precision=mixed_float16")
    fresh.fit(stop_at_step=2)
    fresh.task.lock.release()
    assert int(fresh.stepper.optimizer.dynamic_counter.numpy()) == 1  # one finite step
    # float16 -> float16: the loss scale comes back from the checkpoint
    resumed = trainer_for(config, run, "train.mixed_precision=mixed_float16")
    resumed.fit(stop_at_step=3)
    resumed.task.lock.release()
    assert int(resumed.stepper.optimizer.dynamic_counter.numpy()) == 2
    # float16 -> float32: the checkpoint's loss scale is left unused
    assert trainer_for(config, run).step == 3


@pytest.mark.slow
def test_stop_and_resume_is_exact_with_buckets_token_budget_and_accumulation(tmp_path):
    config = write_tiny_task(tmp_path / "task", train_lines=64, valid_lines=8)
    common = ["--config", str(config), "--no-progress", "--set", "train.samples_per_label=0",
              "--set", "train.batch_tokens=200", "--set", "train.accumulate_steps=2",
              "--set", "train.epochs=1", "--set", "model.dropout=0.1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *common, "--set", f"run_dir={straight}"]) == 0
    assert main(["train", *common, "--set", f"run_dir={resumed}", "--stop-at-step", "2"]) == 0
    assert main(["train", *common, "--set", f"run_dir={resumed}"]) == 0

    def train_events(run):
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [(e["step"], e["loss"]) for e in map(json.loads, lines) if e["event"] == "train"]

    losses = train_events(straight)
    assert len(losses) >= 3 and losses == train_events(resumed)
    from cln_textgen.backend import tf

    last = f"ckpt-{losses[-1][0]}"
    a = tf.train.load_checkpoint(str(straight / "checkpoints" / last))
    b = tf.train.load_checkpoint(str(resumed / "checkpoints" / last))
    names = [n for n in a.get_variable_to_shape_map() if not n.startswith("save_counter")]
    assert all(np.array_equal(a.get_tensor(n), b.get_tensor(n)) for n in names)
