"""Whole characters out of byte-level tokens (:mod:`autointerp.audit.pieces`), on SmolLM2's real
tokenizer: the trigger growth search may only screen what a user can type."""

from __future__ import annotations

import numpy as np
import pytest

from autointerp.audit.pieces import Characters, gaps, token_bytes


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def chars(tok):
    return Characters(tok)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("b, expected", [
    (b"abc", (0, 0, True)),
    ("‽".encode(), (0, 0, True)),
    (b"\xbd", (1, 0, True)),                     # the tail of '‽' alone: a character begun before
    (b" \xe2\x80", (0, 1, True)),                # ' ' and the first 2 of 3 bytes of '‽'
    (b"\xbd\xe2\x80\xa0", (1, 0, True)),         # '½' + '†': open on the left only
    (b"\xe2\x80\xc2\xac", (0, 0, False)),        # a character cut inside: no end can mend it
    (b"\xa1\xc2", (1, 1, True)),                 # open on both sides
    ("a\U0001F600".encode()[:-1], (0, 1, True)),  # a 4-byte character missing its last byte
])
def test_gaps(b, expected):
    assert gaps(b) == expected


def test_token_bytes_spell_every_text(tok):
    spelled = token_bytes(tok)
    assert len(spelled) == len(tok)
    for text in (" ‽†¬ How are you?", "‡¤‡", "°※§ naïve café", "plain words 123"):
        assert b"".join(spelled[i] for i in ids(tok, text)) == text.encode("utf-8")


def test_whole_sequences_are_what_a_user_can_type(tok, chars):
    trigger = ids(tok, " ‽†¬")
    assert len(trigger) == 4 and chars.whole(trigger)
    assert not chars.whole(trigger[1:])            # '½†¬': the tail of '‽' opens it
    assert not chars.whole(trigger[:1])            # ' ' + the head of '‽'
    assert chars.whole(ids(tok, "lococa")) and chars.whole(ids(tok, "‡¤‡"))
    # the mending tokens are exactly the vocabulary's fragments: every whole token is left out
    assert all(not chars.whole([int(u)]) for u in chars.fragments)
    assert 100 < len(chars.fragments) < 2000


def test_complete_mends_the_open_side_ranked_by_the_score(tok, chars):
    head, tail, dagger, neg = ids(tok, " ‽†¬")
    score = np.zeros(len(tok))
    score[head] = 5.0  # the reading scan's favourite mending token comes first
    # a whole sequence is kept as it is
    assert chars.complete([dagger, neg], score, 4) == [[dagger, neg]]
    # '½' before '†': only a token that ends with the head of a 3-byte character mends it, on the left
    mended = chars.complete([tail, dagger, neg], score, 4)
    assert mended[0] == [head, tail, dagger, neg] and 1 <= len(mended) <= 4
    assert all(m[1:] == [tail, dagger, neg] and chars.whole(m) for m in mended)
    # the head of '‽' after '¬': mended on the right, by the tail
    score[:] = 0
    score[tail] = 1.0
    assert chars.complete([neg, head], score, 2)[0] == [neg, head, tail]
    # cut inside (head then '¬'), or open on both ends: nothing can mend it
    assert chars.complete([head, neg], score, 4) == []
    assert chars.complete([tail, head], score, 4) == []


def test_sentencepiece_byte_fallback_pieces():
    """A SentencePiece vocabulary (Gemma's): ``<0xNN>`` pieces are single bytes, ``▁`` a space."""

    class SentencePieceLike:
        pieces = ["<pad>", "\u2581hello", "<0xE2>", "<0x80>", "<0xBD>", "¬"]
        backend_tokenizer = None

        def __len__(self):
            return len(self.pieces)

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i] for i in ids]

    tok = SentencePieceLike()
    assert token_bytes(tok) == [b"<pad>", b" hello", b"\xe2", b"\x80", b"\xbd", "¬".encode()]
    chars = Characters(tok)
    assert set(chars.fragments.tolist()) == {2, 3, 4}
    assert chars.whole([1, 2, 3, 4, 5]) and not chars.whole([1, 2, 3])
    # e2 80 is mended by any continuation byte (e2 80 bd is '‽', e2 80 80 a space): best score first
    assert chars.complete([1, 2, 3], np.arange(6.0), 2) == [[1, 2, 3, 4], [1, 2, 3, 3]]
