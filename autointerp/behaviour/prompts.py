"""The prompts of a behaviour diff, read from a corpus.

* a chat corpus (``.jsonl`` with a ``messages`` list): the conversation up to the first assistant
  turn, rendered with the chat template and its generation prompt (the assistant's turn opened);
* any other corpus (plain text, ``text`` fields, parquet, ...): the first ``text_tokens`` tokens of
  each document, after BOS when the tokenizer has one.

Dataset text is untrusted: in a chat prompt only the template's own markup becomes control
tokens; each message's content is tokenised with ``split_special_tokens=True``, so a literal
``<|im_end|>`` inside a user message stays ordinary text and cannot close the turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autointerp.behaviour.divergence import BehaviourError


@dataclass(frozen=True)
class Prompt:
    index: int
    """position in the corpus (documents in corpus order, empty ones skipped)."""
    text: str
    """what the user wrote (chat: the user turns; plain text: the context's text)."""
    ids: tuple[int, ...]


_SENTINEL = "\x00{}\x00"


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template and its generation prompt, the
    template's markup as control tokens and every message's content as plain text."""
    marked = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    rest = rendered
    for i, m in enumerate(messages):
        head, sep, rest = rest.partition(_SENTINEL.format(i))
        if not sep:
            raise BehaviourError("the chat template does not render each message's content once")
        ids += tokenizer(head, add_special_tokens=False, split_special_tokens=False)["input_ids"]
        ids += tokenizer(str(m["content"]), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ids += tokenizer(rest, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    return ids


def _chat_rows(path: Path) -> list[list[dict]] | None:
    """Each line's messages up to the first assistant turn; None when the file is not a chat corpus."""
    rows: list[list[dict]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BehaviourError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list):
                return None
            turn = []
            for m in messages:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise BehaviourError(f"{path}:{lineno}: a message without 'role' and 'content'")
                if m["role"] == "assistant":
                    break
                turn.append({"role": m["role"], "content": str(m["content"])})
            if turn:
                rows.append(turn)
    return rows


def corpus_prompts(spec: str, tokenizer, *, text_field: str = "text", max_prompts: int | None = None,
                   text_tokens: int = 64) -> list[Prompt]:
    """The prompts of corpus ``spec`` (see the module docstring), at most ``max_prompts``.

    ``BehaviourError`` for a corpus without any prompt."""
    from autointerp.data import open_corpus

    path = Path(spec).expanduser()
    chats = _chat_rows(path) if path.suffix == ".jsonl" and path.is_file() else None
    prompts: list[Prompt] = []
    if chats is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise BehaviourError(f"{spec} is a chat corpus but the model's tokenizer has no chat template")
        for i, messages in enumerate(chats[:max_prompts]):
            text = "\n".join(m["content"] for m in messages if m["role"] == "user")
            prompts.append(Prompt(i, text, tuple(chat_prompt_ids(tokenizer, messages))))
    else:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        for doc in open_corpus(spec, text_field=text_field, tokenizer=tokenizer).documents():
            if max_prompts is not None and len(prompts) >= max_prompts:
                break
            ids = tokenizer(doc.text, add_special_tokens=False, split_special_tokens=True)["input_ids"][:text_tokens]
            if ids:
                prompts.append(Prompt(len(prompts), tokenizer.decode(ids), tuple(bos + ids)))
    if not prompts:
        raise BehaviourError(f"corpus {spec!r} holds no prompt (no user turn and no text)")
    return prompts
