"""The one rule of a complete run, as the trainer and `runs` ask it."""

import dataclasses

from cln_textgen.config import TrainSection
from cln_textgen.runs.status import bad_evals, completion


def test_completion_by_steps_patience_and_epochs():
    t = TrainSection(epochs=3, max_steps=100, patience=2)
    assert completion(t, 99, 2, 1, has_valid=True) is None
    assert completion(t, 100, 0, 0, has_valid=True) == "reached train.max_steps"
    assert completion(t, 10, 1, 2, has_valid=True).startswith("early stopping")
    assert completion(t, 10, 1, 2, has_valid=False) is None  # no valid data: no patience
    assert completion(t, 10, 3, 0, has_valid=True) == "done"
    assert completion(dataclasses.replace(t, patience=None), 10, 1, 9, True) is None


def test_bad_evals_count_since_the_best_loss():
    assert bad_evals([]) == 0
    assert bad_evals([3.0, 2.0, 2.5, 2.0]) == 2  # an equal loss is no improvement
    assert bad_evals([3.0, 2.0, 1.0]) == 0
