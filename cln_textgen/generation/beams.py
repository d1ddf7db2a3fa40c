"""Beam search on the decoding loop of :mod:`cln_textgen.generation.samplers`."""

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.generation.samplers import (Sampler, _ban_masks, _check, _guided, _history,
                                             guide)


class BeamSampler(Sampler):
    """Beam search: the ``num_return`` best-scoring sequences of ``num_beams`` beams.

    A sequence's score is the sum of its tokens' log-probabilities under the
    processed logits (no length normalisation).  Since every step can only
    lower a score, a prompt is done once ``num_return`` finished sequences
    score at least as high as its best live beam: the result is then exactly
    the best that this beam width finds.  With one beam this is greedy search.
    ``on_token`` receives each returned sequence once it is final.
    """

    def __init__(self, num_beams=4, **kwargs):
        super().__init__(**kwargs)
        _check(num_beams=num_beams)
        self.num_beams = int(num_beams)
        self._candidates = tf.function(self._candidates_impl)
        self._guided_candidates = tf.function(
            lambda logits, guidance, *args: self._candidates_impl(guide(logits, guidance), *args))

    def _candidates_impl(self, logits, history, length, banned, scores):
        # The 2 * beams best (score, beam * vocab + token) of each prompt: enough
        # to keep `beams` live beams even if every one of the best ends.
        log_probs = tf.nn.log_softmax(self.process(logits, history, length, banned))
        total = scores[:, None] + log_probs
        total = tf.reshape(total, (-1, self.num_beams * log_probs.shape[-1]))
        return tf.math.top_k(total, k=2 * self.num_beams)

    def __call__(self, decoder, prompts, label_ids, *, stop_id, banned_ids=(),
                 max_new_tokens=64, min_new_tokens=0, num_return=1, on_token=None, seed=None,
                 row_ids=None, guidance=1.0, contrast=None):
        del seed, row_ids  # beam search draws nothing at random
        beams = self.num_beams
        if num_return > beams:
            raise ValueError(f"beam search returns at most num_beams={beams} sequences, "
                             f"not {num_return}")
        groups = len(prompts)
        rows = [list(p) for p in prompts for _ in range(beams)]
        # Only the first beam of each prompt starts live, so the first step
        # does not pick the same token once per identical beam.
        scores = np.tile([0.0] + [-np.inf] * (beams - 1), groups).astype(np.float32)
        tokens = [[] for _ in rows]
        finished = [[] for _ in range(groups)]  # (score, ids) per prompt
        done = np.zeros(groups, bool)
        if max_new_tokens <= 0:
            return self._best([[(0.0, [])]] * groups, num_return, on_token)
        conditions = [label for label in label_ids for _ in range(beams)]
        guided = _guided(guidance, contrast)
        if guided:  # the contrast rows follow the beams, and are reordered with them
            state, logits = decoder.start(rows * 2, conditions + [contrast] * len(rows),
                                          max_new_tokens)
            strength = tf.constant(guidance, tf.float32)

            def candidates(logits, *args):
                return self._guided_candidates(logits, strength, *args)
        else:
            state, logits = decoder.start(rows, conditions, max_new_tokens)
            candidates = self._candidates
        history, start = _history(rows, max_new_tokens)
        masks = _ban_masks(decoder.vocab_size, banned_ids, stop_id)
        vocab = decoder.vocab_size
        for step in range(max_new_tokens):
            top_scores, top_ids = (t.numpy() for t in candidates(
                logits, tf.constant(history), tf.constant(start + step),
                masks[step < min_new_tokens], tf.constant(scores)))
            parents = np.arange(len(rows))
            chosen = np.full(len(rows), stop_id)
            for group in np.flatnonzero(~done):
                live = []
                for rank, (score, flat) in enumerate(zip(top_scores[group], top_ids[group])):
                    parent, token = group * beams + flat // vocab, flat % vocab
                    if score == -np.inf or len(live) == beams:
                        break
                    if token == stop_id:
                        if rank < beams:  # an end found below the beam width is not kept
                            finished[group].append((float(score), tokens[parent]))
                    else:
                        live.append((float(score), parent, int(token)))
                best = sorted(finished[group], key=lambda f: -f[0])
                if not live or (len(best) >= num_return and best[num_return - 1][0] >= live[0][0]):
                    done[group] = True
                    continue
                live += [(-np.inf, live[0][1], live[0][2])] * (beams - len(live))
                for beam, (score, parent, token) in enumerate(live):
                    row = group * beams + beam
                    scores[row], parents[row], chosen[row] = score, parent, token
            if done.all() or step == max_new_tokens - 1:
                break
            tokens = [tokens[p] + [int(t)] if not done[r // beams] else tokens[r]
                      for r, (p, t) in enumerate(zip(parents, chosen))]
            history = history[parents]
            history[:, start + step] = chosen
            scores[np.repeat(done, beams)] = -np.inf
            if guided:
                decoder.reorder(state, np.concatenate([parents, parents + len(rows)]))
                logits = decoder.step(state, np.concatenate([chosen, chosen]))
            else:
                decoder.reorder(state, parents)
                logits = decoder.step(state, chosen)
        for group in np.flatnonzero(~done):  # out of length: live beams count as ends
            for row in range(group * beams, (group + 1) * beams):
                if scores[row] > -np.inf:
                    finished[group].append((float(scores[row]),
                                            tokens[parents[row]] + [int(chosen[row])]))
        return self._best(finished, num_return, on_token)

    @staticmethod
    def _best(finished, num_return, on_token):
        results = []
        for hypotheses in finished:
            ranked = [ids for _, ids in sorted(hypotheses, key=lambda f: -f[0])]
            # Fewer ends than asked for happens only when every token is banned.
            results += (ranked + [[]] * num_return)[:num_return]
        if on_token:
            for row, ids in enumerate(results):
                for token in ids:
                    on_token(row, token)
                on_token(row, None)
        return results
