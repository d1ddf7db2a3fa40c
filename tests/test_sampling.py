"""The choice, the processors and the loop, on hand-made scores and on a toy
decoder whose answers are known."""

import numpy as np
import pytest

from cln_textgen.backend import tf
from cln_textgen.generation.beams import BeamSearch
from cln_textgen.generation.choice import choose, shortlist
from cln_textgen.generation.engine import Context, DecodeState, Engine, Row, loop, params_of
from cln_textgen.generation.processors import PROCESSORS, process
from cln_textgen.options import ROW_OPTIONS, GenerationOptions
from reference import filter_logits

NEG = -np.inf


def drawn(logits, rows=400, seed=7, **options):
    """The set of ids chosen from one logits row, tiled ``rows`` times (every
    row of a stateless draw is an independent sample)."""
    opts = GenerationOptions(**options)
    batch = tf.constant(np.tile(np.asarray(logits, np.float32), (rows, 1)))
    seeds = tf.constant([[seed, row] for row in range(rows)], tf.int64)

    def column(value, dtype):
        return tf.fill([rows], tf.constant(value, dtype))

    out = choose(batch, shortlist(batch), column(opts.greedy, tf.bool),
                 column(opts.top_k, tf.int32), column(opts.top_p, tf.float32), seeds)
    return set(out.numpy().tolist())


def test_greedy_takes_the_argmax():
    logits = [0.1, 2.0, -1.0, 1.9]
    assert drawn(logits, greedy=True) == {1}


def test_top_k_draws_only_from_the_k_best():
    logits = [0.0, 5.0, 3.0, 4.5, -1.0, 2.0]
    assert drawn(logits, top_k=2) == {1, 3}
    assert drawn(logits, top_k=1) == {1}
    assert drawn([0.0, 1.0, 0.5, 0.8, -0.5, 0.2]) == set(range(6))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert drawn(logits, top_p=0.75) == {0, 1}  # 0.5 < 0.75 <= 0.8
    assert drawn(logits, top_p=0.85) == {0, 1, 2}
    assert drawn(logits, top_p=0.4) == {0}  # the first token always


def test_top_p_is_exact_past_the_shortlist():
    # 200 near-equal logits: the nucleus for p=0.9 needs ~180 tokens, more
    # than the shortlist of 64, so the choice must widen its search.
    logits = np.linspace(0.0, 0.2, 200)[::-1]
    probs = np.exp(logits) / np.exp(logits).sum()
    nucleus = set(np.flatnonzero(np.cumsum(probs) - probs < 0.9).tolist())
    got = drawn(logits, rows=4000, top_p=0.9)
    assert got <= nucleus and max(got) >= 64
    assert len(got) > 0.9 * len(nucleus)
    assert drawn(logits, rows=2000, top_k=100) == set(range(100))  # top-k past it too


def test_top_p_after_top_k_matches_the_reference_filter():
    logits = np.array([1.0, 3.0, 2.5, 0.5, 2.9, -1.0, 2.0, 0.0])
    for k, p in [(3, 0.6), (5, 0.9), (2, 1.0)]:
        options = GenerationOptions(top_k=k, top_p=p)
        expected = np.flatnonzero(np.isfinite(filter_logits(logits[None], options)[0]))
        assert drawn(logits, top_k=k, top_p=p) == set(expected.tolist())


def test_each_row_chooses_by_its_own_options_whatever_the_others():
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    settings = [dict(greedy=True), dict(top_k=2), dict(top_p=0.65), dict(), dict(top_k=3)]
    rows = len(settings)
    batch = tf.constant(np.tile(logits.astype(np.float32), (rows, 1)))

    def chosen(seed, subset):
        sub = [settings[i] for i in subset]
        opts = [GenerationOptions(**s) for s in sub]
        seeds = tf.constant([[seed, i] for i in subset], tf.int64)
        scores = tf.gather(batch, subset)
        return choose(scores, shortlist(scores), tf.constant([o.greedy for o in opts]),
                      tf.constant([o.top_k for o in opts]), tf.constant([o.top_p for o in opts]),
                      seeds).numpy().tolist()

    for seed in range(20):
        together = chosen(seed, list(range(rows)))
        alone = [chosen(seed, [i])[0] for i in range(rows)]
        assert together == alone
        assert together[0] == 0 and together[1] in (0, 1) and together[2] in (0, 1)


def state_of(history, length, prompt_length=None, **options):
    """A one-row :class:`DecodeState` holding what processors read."""
    history = tf.constant([history], tf.int32)
    return DecodeState(
        scores=None, short=None, history=history, length=tf.constant([length]),
        prompt_length=tf.constant([length if prompt_length is None else prompt_length]),
        done=tf.constant([False]), last=tf.constant([-1]), partner=tf.constant([0]),
        row_id=tf.constant([0]),
        params=params_of([GenerationOptions(**options)]), norms=(), cache=None)


CONTEXT = Context(stop_id=3, banned=tf.constant([False, True] + [False] * 8))


def test_processing_bans_and_applies_temperature():
    logits = tf.constant([[1.0, 2.0, -3.0, 0.5] + [0.0] * 6])
    out = process(logits, state_of([-1], 0, temperature=0.5), CONTEXT).numpy()[0]
    np.testing.assert_allclose(out[:4], [2.0, NEG, -6.0, 1.0])
    # no end of text before min_new_tokens new tokens
    early = process(logits, state_of([5, 6, -1], 2, prompt_length=1, min_new_tokens=2),
                    CONTEXT).numpy()[0]
    assert early[3] == NEG
    late = process(logits, state_of([5, 6, -1], 2, prompt_length=0, min_new_tokens=2),
                   CONTEXT).numpy()[0]
    assert late[3] == 0.5


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = tf.constant([[2.0, -1.0, 3.0, 0.5] + [0.0] * 6])
    # token 2 lies past `length`: not seen yet
    state = state_of([4, 0, 1, 2], 3, repetition_penalty=2.0)
    context = Context(9, tf.zeros(10, tf.bool))
    out = process(logits, state, context).numpy()[0]
    np.testing.assert_allclose(out[:4], [1.0, -2.0, 3.0, 0.5])


@pytest.mark.parametrize("history, length, n, banned", [
    ([5, 6, 7, 5, 6], 5, 3, {7}),         # "5 6" was followed by 7
    ([5, 6, 7, 5, 6], 5, 2, {7}),         # "6" was followed by 7
    ([5, 6, 5, 7, 5], 5, 2, {6, 7}),      # "5" was followed by 6 and by 7
    ([5, 6, 5, -1, -1], 3, 2, {6}),       # past the row's length is no token
    ([5, 6, 7, 5, 6], 4, 3, set()),       # "7 5" is new; the last column is unfilled
    ([5, 6, 5, 6, 8], 3, 1, {5, 6}),      # unigrams: everything seen so far
    ([5, 6, 5, 6, 8], 5, 0, set()),       # off
])
def test_no_repeat_ngram_bans_the_completing_tokens(history, length, n, banned):
    context = Context(9, tf.zeros(10, tf.bool))
    out = process(tf.zeros((1, 10)), state_of(history, length, no_repeat_ngram=n),
                  context).numpy()[0]
    assert set(np.flatnonzero(np.isinf(out)).tolist()) == banned


def test_every_row_option_is_read_by_the_engine():
    # A per-row option is processed, read by the choice or ends a row.
    read_elsewhere = {"greedy", "top_k", "top_p", "seed", "max_new_tokens"}
    processed = {p.option for p in PROCESSORS}
    assert {o.name for o in ROW_OPTIONS} == processed | read_elsewhere


class ChainDecoder:
    """A toy decoder: the next logits depend only on the last token (a Markov
    chain given as a ``(vocab, vocab)`` table of probabilities)."""

    condition_rows = 0
    max_position = 1000

    def __init__(self, probs):
        self.table = tf.constant(np.log(np.asarray(probs, np.float64) + 1e-30), tf.float32)
        self.vocab_size = int(self.table.shape[0])

    def check_positions(self, prompt_length, max_new_tokens):
        pass

    def condition_weights(self, conditions):
        return np.zeros((len(conditions), 1), np.float32)

    def norms(self, weights):
        return tf.zeros((tf.shape(weights)[0], 0, 2, 1))

    def empty_cache(self, rows, length, variable=False):
        return tf.zeros((2, 1, rows, length, 1, 1))

    def prefill(self, tokens, lengths, norms, cache, rows=None):
        return tf.gather(self.table, tf.gather(tokens, lengths - 1, batch_dims=1)), cache

    def step(self, tokens, columns, norms, cache):
        return tf.gather(self.table, tokens), cache

    def reorder(self, cache, rows):
        return cache


STOP = 1


def chain(rows):
    """Probabilities over 6 tokens (0: start, 1: stop) from row dicts {id: p}."""
    out = np.full((6, 6), 1e-9)
    for token, row in rows.items():
        for next_token, p in row.items():
            out[token, next_token] = p
    return out


def decode(probs, prompts, banned=(), events=None, **options):
    engine = Engine(ChainDecoder(probs), STOP, banned, jit_compile=False)
    opts = GenerationOptions(**options)
    rows = [Row(list(p), 0, opts, i) for i, p in enumerate(prompts)]

    def on_step(state):
        if events is not None:
            events.append(state.last.numpy().tolist())
        return state

    return engine.new_tokens(engine.run(engine.start(rows), on_step), STOP)


def beam_decode(probs, prompts, beams, returns, **options):
    engine = Engine(ChainDecoder(probs), STOP, (), jit_compile=False)
    search = BeamSearch(engine)
    rows = [Row(list(p), 0, GenerationOptions(num_beams=beams, **options), 0) for p in prompts]
    return search.results(loop(search, search.start(rows, beams, returns)))


def test_the_loop_stops_respects_lengths_and_reports_tokens():
    # 0 -> 2 -> 3 -> stop, greedily; 4 is second best everywhere.
    probs = chain({0: {2: 0.9, 4: 0.1}, 2: {3: 0.9, 4: 0.1}, 3: {STOP: 0.9, 4: 0.1},
                   4: {STOP: 0.9, 5: 0.1}, 5: {STOP: 1.0}})
    events = []
    assert decode(probs, [[0], [0, 2]], events=events, greedy=True,
                  max_new_tokens=10) == [[2, 3], [3]]
    # the second row stops first, then takes no token while the first goes on
    assert events == [[2, 3], [3, STOP], [STOP, -1]]
    assert decode(probs, [[0]], greedy=True, max_new_tokens=1) == [[2]]
    # no stop before 4 new tokens: 3 -> 4 (the best non-stop) -> 5 (idem)
    assert decode(probs, [[0]], greedy=True, max_new_tokens=10, min_new_tokens=4) == \
        [[2, 3, 4, 5]]
    assert decode(probs, [[0]], banned=[2], greedy=True, max_new_tokens=3) == [[4]]


def test_rows_of_one_batch_stop_at_their_own_lengths():
    probs = np.full((6, 6), 1e-9)
    probs[:, 4] = 1.0
    engine = Engine(ChainDecoder(probs), STOP, (), jit_compile=False)
    rows = [Row([0], 0, GenerationOptions(greedy=True, max_new_tokens=m), i)
            for i, m in enumerate([1, 5, 3])]
    out = engine.new_tokens(engine.run(engine.start(rows)), STOP)
    assert out == [[4], [4] * 5, [4] * 3]


def test_seeded_sampling_is_reproducible():
    probs = np.full((6, 6), 1 / 6)

    def run(seed):
        return decode(probs, [[0]] * 4, seed=seed, max_new_tokens=12)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_beam_search_finds_the_best_sequence_greedy_misses():
    # Greedy takes 2 (0.6) then faces four equal continuations (0.25 each):
    # 0.15 in all.  Taking 3 (0.4) then stopping (1.0) is worth 0.4.
    probs = chain({0: {2: 0.6, 3: 0.4}, 2: {4: 0.25, 5: 0.25, 3: 0.25, 0: 0.25},
                   3: {STOP: 1.0}, 4: {STOP: 1.0}, 5: {STOP: 1.0}})
    assert decode(probs, [[0]], greedy=True, max_new_tokens=5)[0][0] == 2
    best = beam_decode(probs, [[0], [0]], beams=2, returns=2, max_new_tokens=5)
    assert best[0] == [3] and best[2] == [3]  # log 0.4 first
    assert best[1][:1] == [2] and best[1][1] in (4, 5, 3, 0)  # then log 0.15


def test_one_beam_is_greedy():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(6) * 0.5, size=6)
    for prompt in ([0], [2], [4, 5]):
        greedy = decode(probs, [prompt], greedy=True, max_new_tokens=8)
        assert beam_decode(probs, [prompt], beams=1, returns=1, max_new_tokens=8) == greedy


def test_beams_return_at_most_their_width():
    engine = Engine(ChainDecoder(np.eye(6)), STOP, (), jit_compile=False)
    with pytest.raises(ValueError, match="at most num_beams=2"):
        BeamSearch(engine).start([Row([0], 0, GenerationOptions(), 0)], 2, 3)
