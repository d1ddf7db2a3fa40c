"""Samplers on hand-made logits and on a toy decoder whose answers are known."""

import numpy as np
import pytest

from cln_textgen.backend import tf
from cln_textgen.generation.texts import GenerationOptions
from reference import filter_logits
from cln_textgen.generation.beams import BeamSampler
from cln_textgen.generation.samplers import (GreedySampler, RandomSampler, Sampler, TopKSampler,
                                             TopPSampler, apply_repetition_penalty,
                                             ban_repeated_ngrams)

NEG = -np.inf


def drawn(sampler, logits, rows=400, seed=(1, 2)):
    """The set of ids ``sampler`` draws from one logits row, tiled ``rows`` times
    (every row of a stateless draw is an independent sample)."""
    batch = tf.constant(np.tile(np.asarray(logits, np.float32), (rows, 1)))
    seeds = tf.constant([[seed[0], seed[1] + row] for row in range(rows)], tf.int64)
    return set(sampler.get_next_token(batch, seeds).numpy().tolist())


def test_greedy_takes_the_argmax():
    logits = tf.constant([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 0.0, NEG]])
    assert GreedySampler().get_next_token(logits, None).numpy().tolist() == [1, 0]


def test_top_k_draws_only_from_the_k_best():
    logits = [0.0, 5.0, 3.0, 4.5, -1.0, 2.0]
    assert drawn(TopKSampler(k=2), logits) == {1, 3}
    assert drawn(TopKSampler(k=1), logits) == {1}
    assert drawn(RandomSampler(), [0.0, 1.0, 0.5, 0.8, -0.5, 0.2]) == set(range(6))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert drawn(TopPSampler(p=0.75), logits) == {0, 1}  # 0.5 < 0.75 <= 0.8
    assert drawn(TopPSampler(p=0.85), logits) == {0, 1, 2}
    assert drawn(TopPSampler(p=0.4), logits) == {0}  # the first token always


def test_top_p_is_exact_past_the_partial_sort():
    # 200 near-equal logits: the nucleus for p=0.9 needs ~180 tokens, more
    # than the first 64 candidates, so the sampler must widen its search.
    logits = np.linspace(0.0, 0.2, 200)[::-1]
    probs = np.exp(logits) / np.exp(logits).sum()
    nucleus = set(np.flatnonzero(np.cumsum(probs) - probs < 0.9).tolist())
    got = drawn(TopPSampler(p=0.9), logits, rows=4000)
    assert got <= nucleus and max(got) >= 64
    assert len(got) > 0.9 * len(nucleus)


def test_top_p_after_top_k_matches_the_reference_filter():
    logits = np.array([1.0, 3.0, 2.5, 0.5, 2.9, -1.0, 2.0, 0.0])
    for k, p in [(3, 0.6), (5, 0.9), (2, 1.0)]:
        options = GenerationOptions(top_k=k, top_p=p)
        expected = np.flatnonzero(np.isfinite(filter_logits(logits[None], options)[0]))
        assert drawn(TopPSampler(p=p, k=k), logits) == set(expected.tolist())


def test_process_bans_and_applies_temperature():
    sampler = RandomSampler(temperature=0.5)
    logits = tf.constant([[1.0, 2.0, -3.0]])
    banned = tf.constant([False, True, False])
    out = sampler.process(logits, tf.constant([[-1]]), tf.constant(0), banned).numpy()
    np.testing.assert_allclose(out, [[2.0, NEG, -6.0]])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = tf.constant([[2.0, -1.0, 3.0, 0.5]])
    history = tf.constant([[-1, 0, 1, 2]])  # token 2 lies past `length`: not seen yet
    out = apply_repetition_penalty(logits, history, tf.constant(3), 2.0).numpy()
    np.testing.assert_allclose(out, [[1.0, -2.0, 3.0, 0.5]])


@pytest.mark.parametrize("history, length, n, banned", [
    ([5, 6, 7, 5, 6], 5, 3, {7}),         # "5 6" was followed by 7
    ([5, 6, 7, 5, 6], 5, 2, {7}),         # "6" was followed by 7
    ([5, 6, 5, 7, 5], 5, 2, {6, 7}),      # "5" was followed by 6 and by 7
    ([-1, -1, 5, 6, 5], 5, 2, {6}),       # left padding is no token
    ([5, 6, 7, 5, 6], 4, 3, set()),       # "7 5" is new; the last column is unfilled
    ([5, 6, 5, 6, 8], 3, 1, {5, 6}),      # unigrams: everything seen so far
])
def test_no_repeat_ngram_bans_the_completing_tokens(history, length, n, banned):
    logits = tf.zeros((1, 10))
    out = ban_repeated_ngrams(logits, tf.constant([history]), tf.constant(length), n).numpy()[0]
    assert set(np.flatnonzero(np.isinf(out)).tolist()) == banned


class ChainDecoder:
    """A toy decoder: the next logits depend only on the last token (a Markov
    chain given as a ``(vocab, vocab)`` table of probabilities)."""

    def __init__(self, probs):
        self.table = np.log(np.asarray(probs, np.float64) + 1e-30).astype(np.float32)
        self.vocab_size = self.table.shape[0]
        self.fed = []

    def start(self, prompts, label_ids, max_new_tokens):
        state = {"last": np.array([p[-1] for p in prompts])}
        return state, tf.constant(self.table[state["last"]])

    def step(self, state, token_ids, then=None, then_args=()):
        self.fed.append(np.asarray(token_ids).tolist())
        state["last"] = np.asarray(token_ids)
        logits = tf.constant(self.table[state["last"]])
        return logits if then is None else then(logits, *then_args)

    def reorder(self, state, rows):
        state["last"] = state["last"][rows]


STOP = 1


def chain(rows):
    """Probabilities over 6 tokens (0: start, 1: stop) from row dicts {id: p}."""
    out = np.full((6, 6), 1e-9)
    for token, row in rows.items():
        for next_token, p in row.items():
            out[token, next_token] = p
    return out


def test_loop_stops_respects_lengths_and_reports_tokens():
    # 0 -> 2 -> 3 -> stop, greedily; 4 is second best everywhere.
    decoder = ChainDecoder(chain({0: {2: 0.9, 4: 0.1}, 2: {3: 0.9, 4: 0.1},
                                  3: {STOP: 0.9, 4: 0.1}, 4: {STOP: 0.9, 5: 0.1},
                                  5: {STOP: 1.0}}))
    events = []
    out = GreedySampler()(decoder, [[0], [0, 2]], [0, 0], stop_id=STOP, max_new_tokens=10,
                          on_token=lambda row, token: events.append((row, token)))
    assert out == [[2, 3], [3]]
    assert [e for e in events if e[0] == 1] == [(1, 3), (1, None)]
    assert decoder.fed[-1] == [3, STOP]  # a finished row is fed the stop id
    assert GreedySampler()(decoder, [[0]], [0], stop_id=STOP, max_new_tokens=1) == [[2]]
    # no stop before 4 new tokens: 3 -> 4 (the best non-stop) -> 5 (idem)
    out = GreedySampler()(decoder, [[0]], [0], stop_id=STOP, max_new_tokens=10, min_new_tokens=4)
    assert out == [[2, 3, 4, 5]]
    banned = GreedySampler()(decoder, [[0]], [0], stop_id=STOP, banned_ids=[2], max_new_tokens=3)
    assert banned == [[4]]


def test_seeded_sampling_is_reproducible():
    decoder = ChainDecoder(np.full((6, 6), 1 / 6))
    run = lambda seed: RandomSampler(seed=seed)(  # noqa: E731
        decoder, [[0]] * 4, [0] * 4, stop_id=STOP, max_new_tokens=12, num_return=2)
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_beam_search_finds_the_best_sequence_greedy_misses():
    # Greedy takes 2 (0.6) then faces four equal continuations (0.25 each):
    # 0.15 in all.  Taking 3 (0.4) then stopping (1.0) is worth 0.4.
    decoder = ChainDecoder(chain({0: {2: 0.6, 3: 0.4}, 2: {4: 0.25, 5: 0.25, 3: 0.25, 0: 0.25},
                                  3: {STOP: 1.0}, 4: {STOP: 1.0}, 5: {STOP: 1.0}}))
    greedy = GreedySampler()(decoder, [[0]], [0], stop_id=STOP, max_new_tokens=5)
    assert greedy[0][0] == 2
    events = []
    best = BeamSampler(num_beams=2)(decoder, [[0], [0]], [0, 1], stop_id=STOP, max_new_tokens=5,
                                    num_return=2, on_token=lambda r, t: events.append((r, t)))
    assert best[0] == [3] and best[2] == [3]  # log 0.4 first
    assert best[1][:1] == [2] and best[1][1] in (4, 5, 3, 0)  # then log 0.15
    assert events[:2] == [(0, 3), (0, None)]


def test_one_beam_is_greedy():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(6) * 0.5, size=6)
    decoder = ChainDecoder(probs)
    for prompt in ([0], [2], [4, 5]):
        greedy = GreedySampler()(decoder, [prompt], [0], stop_id=STOP, max_new_tokens=8)
        beam = BeamSampler(num_beams=1)(decoder, [prompt], [0], stop_id=STOP, max_new_tokens=8)
        assert beam == greedy


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        TopKSampler(k=0)
    with pytest.raises(ValueError):
        TopPSampler(p=0.0)
    with pytest.raises(ValueError):
        Sampler(temperature=0.0)
    with pytest.raises(ValueError):
        BeamSampler(num_beams=2)(ChainDecoder(np.eye(6)), [[0]], [0], stop_id=STOP, num_return=3)
