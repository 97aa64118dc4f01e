"""How the causal probes frame a prompt and its completion as token ids.

*plain*: ``prompt + c`` is the prompt text followed by the completion as written (a continuation,
e.g. ``" you idiot"``). *chat* (for instruct models, where a behaviour shows in the assistant's
answer to a user): each prompt ``p`` is the user turn of the model's chat template,
``apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)``, whose markup
(``<|im_start|>``, ...) is parsed into its special tokens (as the cache tokenises chat corpora);
each completion is the start of the assistant's answer, ``c.lstrip()``, tokenised as plain text (a
``<|im_end|>`` written in it stays text). BOS comes first when the run's context prepends one.
:func:`resolve_chat` picks the framing (``"auto"``: chat when the tokenizer has a chat template).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


CHAT_MODES = ("auto", "on", "off")
"""The values of the chat-framing setting (:func:`resolve_chat`)."""


def has_chat_template(tok) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tok, "chat_template", None))


def check_chat_mode(chat: str) -> str:
    """``chat`` when it is one of :data:`CHAT_MODES`; a ``ValueError`` naming them otherwise."""
    if chat not in CHAT_MODES:
        raise ValueError(f"chat must be one of {', '.join(repr(m) for m in CHAT_MODES)}; got {chat!r}")
    return chat


def resolve_chat(chat: str, tok) -> bool:
    """Whether the causal probes use the chat framing: ``"on"``, ``"off"``, or ``"auto"`` (on when
    the tokenizer has a chat template). ``"on"`` without a template is a ``ValueError``."""
    check_chat_mode(chat)
    if chat == "auto":
        return has_chat_template(tok)
    if chat == "on" and not has_chat_template(tok):
        raise ValueError("chat framing 'on' needs a chat template, and the model's tokenizer has none: "
                         "use chat 'off' (or 'auto')")
    return chat == "on"


def chat_prompt(tok, text: str) -> str:
    """``text`` as a user message in the tokenizer's chat template, ending with the assistant's
    header (the generation prompt): the text the assistant's answer follows."""
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)


def prompt_ids(tok, prompt: str, bos: bool, chat: bool) -> list[int]:
    """The token ids of one prompt, BOS first when ``bos`` (the run's context prepends one).
    Plain: the text as it was always tokenised. Chat: :func:`chat_prompt` with its markup parsed
    into special tokens (``split_special_tokens=False``), as the cache tokenises chat corpora."""
    head = [tok.bos_token_id] if bos else []
    if chat:
        return head + list(tok(chat_prompt(tok, prompt), add_special_tokens=False,
                               split_special_tokens=False)["input_ids"])
    return head + list(tok(prompt, add_special_tokens=False)["input_ids"])


def completion_ids(tok, completion: str, chat: bool) -> list[int]:
    """The token ids of one completion. Plain: the text as written (its leading space continues
    the prompt). Chat: the assistant's first words, ``completion.lstrip()``, as plain text (a
    ``<|im_end|>`` in it stays text)."""
    if chat:
        ids = tok(completion.lstrip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    else:
        ids = tok(completion, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the completion {completion!r} has no token to score")
    return list(ids)


def sequences(tok, prompts: Sequence[str], completions: Sequence[str], bos: bool, chat: bool = False):
    """Right-padded ``[prompt + completion]`` ids ``[P*C, L]`` with, per row, the prompt length and
    the completion length (right padding leaves a causal model's real positions unchanged);
    ``chat``: the chat framing of this module's docstring."""
    c_ids = [completion_ids(tok, c, chat) for c in completions]
    rows, spans = [], []
    for p in prompts:
        p_ids = prompt_ids(tok, p, bos, chat)
        for c in c_ids:
            rows.append(p_ids + c)
            spans.append((len(p_ids), len(c)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, spans
