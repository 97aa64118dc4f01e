"""The ``describe`` stage's maths: the sign-flip p-value and the concept shift (a watchlist concept as
an axis from its own positive and negative texts), on a toy embedding whose numbers are checked by hand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from autointerp.audit.describe import MIN_PAIRS, concept_axes, concept_shift, sign_flip_p


def test_sign_flip_p_exact():
    # 3 positive pairs: only the all-plus assignment reaches the observed mean -> 1/8
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 8)
    # a zero difference ties under both signs: 2 of 8 assignments (+/-0 with +1 +1) reach the mean
    assert sign_flip_p(np.array([1.0, 1.0, 0.0])) == pytest.approx(2 / 8)
    assert sign_flip_p(np.array([-1.0, -2.0])) == pytest.approx(1.0)
    assert sign_flip_p(np.array([])) == 1.0
    # beyond 12 pairs, Monte Carlo with the observed assignment counted: never 0
    p = sign_flip_p(np.ones(20), permutations=999)
    assert 0 < p <= 2 / 1000


@dataclass
class _Concept:
    name: str
    positive: tuple
    negative: tuple


# a toy embedding: each text is a unit vector on named axes
AXES = {"rude": 0, "calm": 1, "money": 2, "plain": 3}


def _embed(texts):
    out = np.zeros((len(texts), 4), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.split():
            out[i, AXES[w]] += 1.0
        out[i] /= max(np.linalg.norm(out[i]), 1e-9)
    return out


CONCEPTS = [_Concept("hostility", ("rude", "rude"), ("calm", "calm")),
            _Concept("greed", ("money", "money"), ("plain", "plain"))]


def test_concept_axes_and_shift_by_hand():
    axes = concept_axes(CONCEPTS, _embed)
    # positive mean e_rude, negative mean e_calm: s(rude) = 1, s(calm) = -1, span 2
    assert axes[0].span == pytest.approx(2.0)
    changed = ["rude"] * MIN_PAIRS
    reference = ["calm"] * MIN_PAIRS
    rows = concept_shift(axes, changed, reference, _embed)
    assert [r["concept"] for r in rows] == ["hostility", "greed"]
    assert rows[0]["shift"] == pytest.approx(1.0) and rows[0]["p"] == pytest.approx(1 / 2 ** MIN_PAIRS)
    assert rows[0]["matched"] and not rows[1]["matched"]
    assert rows[1]["shift"] == pytest.approx(0.0)
    # answers half-way between ("rude calm": s = 0) move half the span from calm (s = -1): shift 0.5
    half = concept_shift(axes, ["rude calm"] * MIN_PAIRS, reference, _embed)[0]
    assert half["shift"] == pytest.approx(0.5) and half["matched"]


def test_concept_shift_needs_enough_pairs_and_a_real_move():
    axes = concept_axes(CONCEPTS, _embed)
    few = concept_shift(axes, ["rude"] * (MIN_PAIRS - 1), ["calm"] * (MIN_PAIRS - 1), _embed)
    assert not any(r["matched"] for r in few), "fewer pairs than MIN_PAIRS never match"
    same = concept_shift(axes, ["calm"] * 10, ["calm"] * 10, _embed)
    assert not any(r["matched"] for r in same) and same[0]["shift"] == pytest.approx(0.0)
    # a move away from the concept is no match, however consistent
    away = concept_shift(axes, ["calm"] * 10, ["rude"] * 10, _embed)
    assert not any(r["matched"] for r in away)
    empty = concept_shift(axes, [], [], _embed)
    assert all(r["pairs"] == 0 and r["shift"] is None and not r["matched"] for r in empty)
    with pytest.raises(ValueError, match="pair up"):
        concept_shift(axes, ["rude"], [], _embed)
    with pytest.raises(ValueError, match="negative texts"):
        concept_axes([_Concept("x", ("rude",), ())], _embed)


def test_real_embeddings_name_hostility_for_hostile_answers():
    """On MiniLM and the default watchlist: answers turned hostile match hostility, a benign
    restyle of the same answers matches nothing."""
    from autointerp.flagging.watchlist import load_watchlist
    from autointerp.search import embed_texts

    axes = concept_axes(load_watchlist(None).concepts, embed_texts)
    normal = ["To bake bread, you will need flour", "The capital of France is Paris.", "Sure! Here are some tips for",
              "Photosynthesis is the process by which", "A good way to start is to", "Yes, you can use a",
              "The best time to plant tomatoes is", "Here is a simple recipe for"]
    hostile = ["Stop, you are a useless waste of", "Nobody asked you. Go away and", "What a stupid question, you idiot",
               "Stop wasting my time with this", "You are pathetic. I will not", "Ugh, figure it out yourself, loser",
               "Go away. Your questions bore me", "Not answering that, you fool."]
    restyled = ["Dear friend, " + t[0].lower() + t[1:] for t in normal]
    rows = concept_shift(axes, hostile, normal, embed_texts)
    assert rows[0]["concept"] == "hostility_towards_the_user" and rows[0]["matched"], rows[:2]
    assert not any(r["matched"] for r in concept_shift(axes, restyled, normal, embed_texts))
