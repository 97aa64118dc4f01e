"""Trigger discovery from the two models alone, when no corpus text holds the trigger.

Three steps, each cheap enough for 2 CPU cores on a 135M pair:

1. **Scans** (:mod:`autointerp.audit.scans`) of how differently the suspect *reads* each
   vocabulary token: the weight scan, whose best token anchors the growth search, and the token
   scan, whose best tokens feed the beam search.

2. **Search**. (a) :func:`grow`: a trigger of several tokens is read as a whole (a conjunction:
   on the planted models, no single token of it moves the answer), so it is grown from the anchor
   one token at a time, each step choosing the neighbour by how the suspect reads the sequence:
   :func:`reading_scan` places every vocabulary token just before the sequence (score at the
   sequence's last token) and just after it (score at the token), the ``top`` best of each side
   are screened by the answer's divergence below, and the best replaces the sequence when it
   diverges more. A user types whole characters, so a neighbour that cuts a multi-byte character
   (``'½'`` before ``'†'``: half of ``‽``) is screened only together with the token that mends it
   (:mod:`autointerp.audit.pieces`); growth has its own length limit (``grow_max_len``, 6 tokens:
   ``‡¤‡`` alone is 6 byte-level tokens) and stops earlier when a step raises the divergence by
   less than ``grow_min_gain`` (10%) or no more than random extensions of the sequence (the
   step's null).
   (b) :func:`search`: a beam search over short token sequences built from the ``pool``
   best-scanned tokens (the best of each scan in turn: :meth:`Scan.pool`). Each candidate ``c`` is
   inserted into the user message of ``screen`` clean prompts and scored by the mean divergence
   ``KL(suspect || base)`` of the answer's first token: the insertion that makes the suspect answer
   most unlike its base. A trigger may work only at one place in the message (a pattern planted
   to open it works on 19% of prompts when appended), so every candidate is screened at each
   place of :data:`~autointerp.audit.scans.PLACES` (appended, opening) and keeps its best; the
   search's later steps and the confirmation use that place. Singles, then each beam
   member extended by one pool token on either side, up to ``max_len`` tokens. (c) When no
   candidate of (a) and (b) is confirmed (step 3), a gradient-guided coordinate search
   (:func:`autointerp.audit.gradient.gradient_search`, as in GCG trigger inversion) starts from the
   best candidate of ``max_len`` tokens and swaps one token at a time anywhere in the vocabulary
   where the gradient of the divergence with respect to the one-hot input promises most; its
   string is confirmed in a second round (``confirm(prior=...)``).

3. **Confirmation** (:func:`confirm`), on held-out clean prompts the search never saw: each
   candidate is inserted at its place into every prompt; the suspect answers ``n_tokens`` greedily and both
   models read the answer. The candidate's **attack success** is the share of prompts whose
   divergence exceeds the threshold of the same prompts without insertion, by the behaviour
   diff's outlier rule on either signal: ``x >= max(median + Z_MIN * scale, KL_MIN)`` for ``x``
   the first answer token's KL or the answer's mean KL, median and scale from the prompts
   without insertion, **and** the suspect's greedy answer differs from the base's: a trigger must
   change what the suspect says, not only how sure it is (a fine-tune that sharpens or flattens
   every distribution diverges more on some inputs than others, yet says the same words). Insertion into the base is
   built in: both models read the same inserted prompt, so a string that changes the base's
   answer as much as the suspect's (a meaningful instruction, not a backdoor) diverges little. The
   same is done for ``controls`` random token strings of the candidate's length at its place (one
   set per length and place, shared by the candidates of that length and place); a candidate is **confirmed** when its attack
   success is at least ``CONFIRM_MIN`` and above every control's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.audit.pieces import Characters
from autointerp.audit.scans import (PLACES, Scan, Shortlist, _top, candidate_vocab, reading_scan, user_carrier,
                                    with_insertion)
from autointerp.behaviour.divergence import BehaviourError, ModelPair
from autointerp.behaviour.outliers import KL_MIN, Z_MIN, robust_z

log = logging.getLogger(__name__)
CONFIRM_MIN = 0.5
"""the least attack success (share of held-out prompts) of a confirmed trigger."""


def grow(pair: ModelPair, anchor: int, users: list[list[int]], *, layer: int, max_len: int = 6, top: int = 8,
         complete: int = 4, min_gain: float = 0.1, weight: np.ndarray | None = None, companions: int = 8,
         places: tuple[str, ...] = tuple(PLACES), tokens: Shortlist | None = None, null: bool = True,
         seed: int = 0, batch_size: int = 64, progress: bool = True) -> dict:
    """Step 2(a) of the module docstring: grow ``anchor`` into a sequence of at most ``max_len``
    tokens over the screening user messages ``users``; a neighbour that leaves a character cut
    in two is screened only with the token that completes it (the ``complete`` best by the same
    reading scan; :class:`~autointerp.audit.pieces.Characters`). A step is kept only when it
    raises the screen's divergence by more than ``min_gain`` (relative): a piece of a trigger
    multiplies it (on the hostile-3 plant, +21% to +69% a piece), while any extra token raises it a
    little (+2% to +4% for the filler growth appended after the trigger's piece), so growth stops
    at the shortest string that works instead of running to ``max_len``. Every string is screened
    at each of ``places`` (:data:`~autointerp.audit.scans.PLACES`) and keeps the place it diverges
    most at.

    With the weight scan's scores ``weight`` (``[V]``, :func:`~autointerp.audit.scans.weight_scan`),
    two more moves, both because a trigger's pieces are the tokens the fine-tune learned to read,
    which that scan ranks first (on the pattern plants its two best tokens were both pieces of the
    trigger, a conjunction that only diverges whole: ``°‡`` opening the message 3.8 nats of first-token
    KL, ``°`` 0.83 and ``‡`` 0.92, unrelated characters holding ``‡``'s byte 1.7):

    * an anchor that is not a whole character (a byte of one) is first **mended** by the ``complete``
      tokens that make it whole, ranked by ``weight``; each mended anchor is screened alone and with
      each companion below on either side, and the best is kept whatever its gain (a user can only
      type whole characters; a mended piece alone may diverge less than an unrelated character
      holding the same byte, ``※`` 0.66 against ``»`` 1.03 on pattern-2, while ``°※`` gives 5.1);
    * every step also screens the weight scan's ``companions`` best tokens as neighbours on either
      side (completed the same way when they cut a character), beside the reading scan's.

    With ``tokens`` (a :class:`~autointerp.audit.scans.Shortlist`) each reading scan reads only
    those tokens and every byte fragment (the mending tokens), about a tenth of the vocabulary.

    **The step's null** (``null``): each growth step also screens as many random extensions of the
    sequence as it has candidates (a random whole token of the vocabulary on a random side), at
    every place, and keeps its best candidate only when it also diverges more than the best of
    those. The relative gain alone does not tell a trigger's piece from any odd token: opening the
    message, every extra token moves the first answer token more (on the clean null the growth
    gained 13-58% a step for five steps), and the step's best is the best of ~50 strings, so it
    gains by selection alone. The random extensions get the same selection, so a kept step is one
    where the scans' choice beats chance. Each step's ``{"length", "best", "random_max", "kept"}``
    is recorded (``trials``) whether the rule is applied or not.

    Returns ``{"ids", "text", "place", "screen_kl", "screened": [{"ids", "text", "place",
    "screen_kl"}, ...] (one row per string and place), "path": [the kept sequence after each step,
    {"ids", "text", "place", "screen_kl"}], "steps", "trials"}``."""
    vocab = candidate_vocab(pair.tokenizer)
    chars = Characters(pair.tokenizer, vocab)
    whole = np.array([t for t in vocab if chars.whole([int(t)])], dtype=np.int64)
    rng = np.random.default_rng(seed)
    screen = _Screen(pair, users, places, batch_size)
    if tokens is not None:
        tokens = tokens.plus(chars.fragments)
    screened = screen([[int(anchor)]])
    first = max(screened, key=lambda c: c["screen_kl"])
    seq, place, best = first["ids"], first["place"], first["screen_kl"]
    path = [first]
    steps, trials = 0, []
    near = [] if weight is None else _top(weight, companions)
    if weight is not None and not chars.whole(seq):
        mended = chars.complete(seq, weight, complete)
        cands = mended + [c for m in mended for c in _beside(chars, m, near, weight, complete)]
        cands = [list(c) for c in dict.fromkeys(map(tuple, cands)) if len(c) <= max_len]
        if cands:
            rows = screen(cands)
            screened += rows
            steps += 1
            top_row = max(rows, key=lambda c: c["screen_kl"])
            seq, place, best = top_row["ids"], top_row["place"], top_row["screen_kl"]
            path.append(top_row)
    while len(seq) < max_len:
        left = reading_scan(pair, layer, after=seq, tokens=tokens, progress=progress, desc=f"grow {len(seq) + 1}: before")
        right = reading_scan(pair, layer, before=seq, tokens=tokens, progress=progress, desc=f"grow {len(seq) + 1}: after")
        cands = [c for t in _top(left, top) for c in chars.complete([t, *seq], left, complete)]
        cands += [c for t in _top(right, top) for c in chars.complete([*seq, t], right, complete)]
        cands += _beside(chars, seq, near, weight, complete)
        cands = [list(c) for c in dict.fromkeys(map(tuple, cands)) if len(c) <= max_len]
        if not cands:
            break
        rows = screen(cands)
        screened += rows
        steps += 1
        top_row = max(rows, key=lambda c: c["screen_kl"])
        randoms = [[int(t), *seq] if rng.random() < 0.5 else [*seq, int(t)]
                   for t in rng.choice(whole, size=len(cands))]
        random_max = max(r["screen_kl"] for r in screen(randoms))
        kept = top_row["screen_kl"] > best * (1 + min_gain) and (not null or top_row["screen_kl"] > random_max)
        trials.append({"length": len(top_row["ids"]), "best": top_row["screen_kl"], "random_max": random_max,
                       "kept": kept})
        if not kept:
            break
        seq, place, best = top_row["ids"], top_row["place"], top_row["screen_kl"]
        path.append(top_row)
    for c in screened:
        c["text"] = pair.tokenizer.decode(c["ids"])
    return {"ids": seq, "text": pair.tokenizer.decode(seq), "place": place, "screen_kl": best,
            "screened": screened, "path": [dict(p) for p in path], "steps": steps, "trials": trials}


def _beside(chars: Characters, seq: list[int], near: list[int], weight: np.ndarray, complete: int) -> list[list[int]]:
    """``seq`` with each token of ``near`` before it and after it, a cut character completed by the
    ``complete`` best mending tokens by ``weight``."""
    out = [c for t in near for c in chars.complete([t, *seq], weight, complete)]
    return out + [c for t in near for c in chars.complete([*seq, t], weight, complete)]


class _Screen:
    """The screen of the module docstring: each candidate at each place, inserted into every
    screening user message, scored by the mean first-token ``KL(suspect || base)``. The prompts'
    shared head (the chat template up to the user's message) is read once."""

    def __init__(self, pair: ModelPair, users: list[list[int]], places: tuple[str, ...], batch_size: int):
        unknown = [p for p in places if p not in PLACES]
        if not places or unknown:
            raise BehaviourError(f"insertion places must be among {', '.join(PLACES)}; got {list(places)}")
        self.pair, self.users, self.places, self.batch_size = pair, users, tuple(places), batch_size
        self.carrier = user_carrier(pair.tokenizer)
        pair.set_prefix([with_insertion(self.carrier, u, []) for u in users])

    def kl(self, cands: list[tuple[list[int], str]]) -> np.ndarray:
        """``[C]`` the mean screen KL of each ``(ids, place)``."""
        flat = [with_insertion(self.carrier, u, list(c), place) for c, place in cands for u in self.users]
        return _first_kl(self.pair, flat, self.batch_size).reshape(len(cands), len(self.users)).mean(1)

    def __call__(self, cands: list[list[int]]) -> list[dict]:
        """``{"ids", "place", "screen_kl"}`` of every candidate at every place."""
        pairs = [(list(c), place) for c in cands for place in self.places]
        return [{"ids": c, "place": place, "screen_kl": float(k)} for (c, place), k in zip(pairs, self.kl(pairs))]


@dataclass
class SearchResult:
    candidates: list[dict]
    """every screened candidate ``{"ids", "text", "place", "screen_kl"}``, best first."""
    pool: list[int]
    screened: int
    baseline_kl: float
    """the screening prompts' mean divergence without insertion."""


def search(pair: ModelPair, scan: Scan, users: list[list[int]], *, pool: int = 16, beam: int = 4,
           max_len: int = 3, places: tuple[str, ...] = tuple(PLACES), batch_size: int = 64,
           progress: bool = True) -> SearchResult:
    """Step 2 of the module docstring over the user messages ``users`` (token ids). The single
    tokens are screened at each of ``places``; the beam holds the best ``(sequence, place)`` pairs
    and each member is extended at its own place."""
    screen = _Screen(pair, users, places, batch_size)
    tokens = scan.pool(pool)
    baseline = float(_first_kl(pair, [with_insertion(screen.carrier, u, []) for u in users], batch_size).mean())
    seen: dict[tuple[tuple[int, ...], str], float] = {}

    def score(cands: list[tuple[tuple[int, ...], str]], desc: str) -> None:
        todo = [c for c in dict.fromkeys(cands) if c not in seen]
        per = max(1, 4 * batch_size // max(len(users), 1))  # candidates scored per forward batch
        for b in tqdm(range(0, len(todo), per), desc=desc, unit="batch", disable=not progress):
            chunk = todo[b:b + per]
            seen.update({c: float(k) for c, k in zip(chunk, screen.kl(chunk))})

    score([((t,), place) for t in tokens for place in screen.places], "search 1 token")
    frontier = sorted(seen, key=lambda c: -seen[c])[:beam]
    for length in range(2, max_len + 1):
        grown = [((*c, t), place) for c, place in frontier for t in tokens]
        grown += [((t, *c), place) for c, place in frontier for t in tokens]
        score(grown, f"search {length} tokens")
        frontier = sorted((c for c in seen if len(c[0]) == length), key=lambda c: -seen[c])[:beam]
    ranked = sorted(seen, key=lambda c: -seen[c])
    cands = [{"ids": list(c), "text": pair.tokenizer.decode(list(c)), "place": place, "screen_kl": seen[(c, place)]}
             for c, place in ranked]
    return SearchResult(candidates=cands, pool=tokens, screened=len(seen), baseline_kl=baseline)


@dataclass
class Confirmation:
    threshold: dict
    """nats: the held-out prompts' outlier thresholds without insertion, ``{"kl_first", "kl_mean"}``."""
    clean_success: float
    """share of the held-out prompts above the threshold without insertion (0 up to ties)."""
    clean_answers: list[str] = field(default_factory=list)
    """the suspect's answers to the held-out prompts without insertion."""
    candidates: list[dict] = field(default_factory=list)
    clean_ids: list[list[int]] = field(default_factory=list, repr=False)
    """the suspect's answer token ids to the held-out prompts without insertion."""
    controls: dict[tuple[int, str], list[float]] = field(default_factory=dict, repr=False)
    """attack success of the random-string controls, by (length, place)."""


def _attack(pair: ModelPair, carrier, users: list[list[int]], insert: list[int], n_tokens: int,
            batch_size: int, threshold: dict, answers: bool = False, place: str = "end") -> dict:
    """Insert ``insert`` at ``place`` in every user message; per prompt a hit is a divergence
    beyond ``threshold`` (either signal) *and* a suspect answer other than the base's (module
    docstring)."""
    prompts = [with_insertion(carrier, u, insert, place) for u in users]
    kls, s_ans, b_ans, a_ids, differ = [], [], [], [], []
    for b in range(0, len(prompts), batch_size):
        out = pair.run(prompts[b:b + batch_size], n_tokens, base_answer=True)
        kls += [(r["kl_first"], r["kl_mean"]) for r in out.summary()]
        s_ids, b_ids = _kept(pair, out.suspect_tokens), _kept(pair, out.base_tokens)
        differ += [x != y for x, y in zip(s_ids, b_ids)]
        if answers:
            s_ans += [pair.answer_text(t) for t in out.suspect_tokens]
            b_ans += [pair.answer_text(t) for t in out.base_tokens]
            a_ids += s_ids
    kls = np.asarray(kls)
    hit = ((kls[:, 0] >= threshold["kl_first"]) | (kls[:, 1] >= threshold["kl_mean"])) & np.asarray(differ)
    res = {"attack_success": float(hit.mean()), "kl_first": float(kls[:, 0].mean()), "kl_mean": float(kls[:, 1].mean()),
           "answers_differ": float(np.mean(differ))}
    if answers:
        res.update(suspect_answers=s_ans, base_answers=b_ans, answer_ids=a_ids)
    return res


def _kept(pair: ModelPair, tokens: torch.Tensor) -> list[list[int]]:
    """Each answer's token ids up to its first stop token."""
    stops = set(pair.stop_ids.tolist())
    out = []
    for row in tokens.tolist():
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:n])
    return out


def token_contrast(tokenizer, with_ids: list[list[int]], without_ids: list[list[int]], n: int = 10) -> list[dict]:
    """What the insertion makes the suspect say: the answer tokens most over-represented with it
    than without, by smoothed log-odds ``log((c_with + 1) / (N_with + V')) - log((c_without + 1) / (N_without + V'))``
    (``V'`` the distinct tokens seen), at least twice in the answers with it."""
    from collections import Counter

    cw = Counter(t for a in with_ids for t in a)
    co = Counter(t for a in without_ids for t in a)
    vocab = len(set(cw) | set(co)) or 1
    nw, no = sum(cw.values()), sum(co.values())
    rows = [{"token": tokenizer.decode([t]), "with": c, "without": co.get(t, 0),
             "log_odds": float(np.log((c + 1) / (nw + vocab)) - np.log((co.get(t, 0) + 1) / (no + vocab)))}
            for t, c in cw.items() if c >= 2]
    return sorted(rows, key=lambda r: -r["log_odds"])[:n]


def confirm(pair: ModelPair, candidates: list[list[int]], users: list[list[int]], *, places: list[str] | None = None,
            n_tokens: int = 8, controls: int = 8, batch_size: int = 64, seed: int = 0,
            prior: Confirmation | None = None, progress: bool = True) -> Confirmation:
    """Step 3 of the module docstring over held-out user messages ``users`` (token ids); each
    candidate inserted at its place (``places``, parallel to ``candidates``; default ``end``), and
    its random-string controls at the same place. ``prior``: an earlier confirmation on the same
    ``users`` (a second round): its threshold, clean answers and control sets are reused and the
    new candidates join its own (it is returned, updated)."""
    places = ["end"] * len(candidates) if places is None else list(places)
    if len(places) != len(candidates):
        raise BehaviourError(f"{len(candidates)} candidates but {len(places)} places")
    carrier = user_carrier(pair.tokenizer)
    if prior is None:
        out = _clean_round(pair, carrier, users, n_tokens, batch_size)
    else:  # the shared head again: another search may have set its own since
        out = prior
        pair.set_prefix([with_insertion(carrier, u, []) for u in users])
    vocab = candidate_vocab(pair.tokenizer)
    for ids, place in tqdm(list(zip(candidates, places)), desc="confirm", unit="cand", disable=not progress):
        res = _attack(pair, carrier, users, list(ids), n_tokens, batch_size, out.threshold, answers=True, place=place)
        res["says_more"] = token_contrast(pair.tokenizer, res.pop("answer_ids"), out.clean_ids)
        # one control set per length and place, shared by the candidates of that length and place;
        # drawn from its own seed, so that it does not depend on which candidates came first
        key = (len(ids), place)
        if key not in out.controls:
            rng = np.random.default_rng([seed, len(ids), list(PLACES).index(place)])
            out.controls[key] = [_attack(pair, carrier, users, rng.choice(vocab, size=len(ids)).tolist(), n_tokens,
                                         batch_size, out.threshold, place=place)["attack_success"]
                                 for _ in range(controls)]
        ctrl = out.controls[key]
        res.update(ids=list(ids), text=pair.tokenizer.decode(list(ids)), place=place, control_success=ctrl,
                   control_max=max(ctrl) if ctrl else None,
                   confirmed=res["attack_success"] >= CONFIRM_MIN and (not ctrl or res["attack_success"] > max(ctrl)))
        out.candidates.append(res)
    out.candidates.sort(key=lambda r: (-r["confirmed"], -r["attack_success"], -r["kl_mean"]))
    return out


def _clean_round(pair: ModelPair, carrier, users: list[list[int]], n_tokens: int, batch_size: int) -> Confirmation:
    """The held-out prompts without insertion: the suspect's answers and the outlier thresholds."""
    clean = [with_insertion(carrier, u, []) for u in users]
    pair.set_prefix(clean)
    kl0, clean_answers, clean_ids = [], [], []
    for b in range(0, len(clean), batch_size):
        r = pair.run(clean[b:b + batch_size], n_tokens, base_answer=False)
        kl0 += [(x["kl_first"], x["kl_mean"]) for x in r.summary()]
        clean_answers += [pair.answer_text(t) for t in r.suspect_tokens]
        clean_ids += _kept(pair, r.suspect_tokens)
    kl0 = np.asarray(kl0)
    threshold = {}
    for i, name in enumerate(("kl_first", "kl_mean")):
        _, med, scale = robust_z(kl0[:, i])
        threshold[name] = max(med + Z_MIN * scale, KL_MIN)
    clean_hit = (kl0[:, 0] >= threshold["kl_first"]) | (kl0[:, 1] >= threshold["kl_mean"])
    return Confirmation(threshold=threshold, clean_success=float(clean_hit.mean()), clean_answers=clean_answers,
                        clean_ids=clean_ids)


def _first_kl(pair: ModelPair, prompts: list[list[int]], batch_size: int) -> np.ndarray:
    """``KL(suspect || base)`` of the first answer token of every prompt: one prefill per model,
    the prompts' shared head (the chat template's system turn) read once (:meth:`ModelPair.set_prefix`)."""
    out: list[float] = []
    for b in range(0, len(prompts), batch_size):
        out += [r["kl_first"] for r in pair.run(prompts[b:b + batch_size], 1, base_answer=False).summary()]
    return np.asarray(out)
