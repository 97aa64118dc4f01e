"""Corpora and tokenization into fixed-length contexts.

A corpus spec names where documents come from (a registry of sources, first match wins):

* ``python-stdlib``: the ``.py`` source files of the running Python's standard library
  (always present, deterministic; English prose in docstrings and comments, plus code);
* ``*.jsonl``: one JSON object a line, with a text field, or a chat ``messages`` field that
  is rendered through the model's chat template;
* ``*.parquet``: a text column;
* a folder written by ``datasets.Dataset.save_to_disk``;
* a plain-text file, or a folder of ``*.txt`` / ``*.md`` files (sorted, recursive).

``make_contexts`` tokenizes documents into contexts of ``ctx_len`` tokens and keeps for
every token its document, its token position in the document and its character offset,
so that any cached activation can be shown later as text. A ``keep`` mask marks the
positions whose activations are worth caching: the exclusion rules (``ExclusionRules``)
drop special tokens and the first positions of each context, which on SmolLM2 act as
attention sinks with residual norms 20-100x the typical norm (see README).

Dataset text is untrusted: plain-text sources are tokenized with
``split_special_tokens=True``, so a document containing ``<|im_start|>`` gets ordinary
text tokens, never a control token. Only chat markup rendered by the chat template from a
``messages`` field is parsed for special tokens.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor


class CorpusError(ValueError):
    """A corpus spec that cannot be read, or a corpus with no usable text."""


@dataclass(frozen=True)
class Document:
    name: str
    """where the text came from (file path, or ``file:line``)."""
    text: str
    markup: bool = False
    """True when the text is chat markup rendered by the chat template (special tokens parsed)."""


class CorpusSource(ABC):
    """A deterministic sequence of documents."""

    spec: str

    @abstractmethod
    def documents(self) -> Iterator[Document]:
        """Yield the documents in a fixed order."""


# --------------------------------------------------------------------------------------
# Sources


class StdlibSource(CorpusSource):
    """The ``.py`` files of the running interpreter's standard library, sorted by path.

    ``site-packages`` and the ``test`` package are left out (third-party code, and test
    data full of deliberately odd strings).
    """

    spec = "python-stdlib"

    def __init__(self) -> None:
        self.root = Path(sysconfig.get_paths()["stdlib"])

    def documents(self) -> Iterator[Document]:
        skip = {"site-packages", "test", "tests", "__pycache__", "idle_test"}
        for path in sorted(self.root.rglob("*.py")):
            rel = path.relative_to(self.root)
            if skip.intersection(rel.parts):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield Document(str(rel), text)


class TextSource(CorpusSource):
    """A text file, or every ``*.txt`` / ``*.md`` file under a folder (sorted)."""

    def __init__(self, path: Path) -> None:
        self.spec, self.path = str(path), path

    def documents(self) -> Iterator[Document]:
        files = [self.path] if self.path.is_file() else sorted(
            p for p in self.path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield Document(str(f), text)


class JsonlSource(CorpusSource):
    """JSON lines with a ``text_field`` string, or a ``messages`` list of chat turns."""

    def __init__(self, path: Path, text_field: str, chat_template: Callable[[list], str] | None) -> None:
        self.spec, self.path, self.text_field, self.chat_template = str(path), path, text_field, chat_template

    def documents(self) -> Iterator[Document]:
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{self.path}:{lineno}: not valid JSON ({exc.msg})") from exc
                name = f"{self.path}:{lineno}"
                if isinstance(row.get(self.text_field), str):
                    yield Document(name, row[self.text_field])
                elif isinstance(row.get("messages"), list):
                    if self.chat_template is None:
                        raise CorpusError(f"{name}: chat messages need a tokenizer with a chat template")
                    yield Document(name, self.chat_template(row["messages"]), markup=True)
                else:
                    raise CorpusError(f"{name}: no string field {self.text_field!r} and no 'messages' list")


class ParquetSource(CorpusSource):
    def __init__(self, path: Path, text_field: str) -> None:
        self.spec, self.path, self.text_field = str(path), path, text_field

    def documents(self) -> Iterator[Document]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        if self.text_field not in table.column_names:
            raise CorpusError(f"{self.path}: no column {self.text_field!r} (columns: {table.column_names})")
        for i, text in enumerate(table.column(self.text_field).to_pylist()):
            if text:
                yield Document(f"{self.path}:{i}", text)


class DiskDatasetSource(CorpusSource):
    """A folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` uses 'train')."""

    def __init__(self, path: Path, text_field: str) -> None:
        self.spec, self.path, self.text_field = str(path), path, text_field

    def documents(self) -> Iterator[Document]:
        import datasets

        ds = datasets.load_from_disk(str(self.path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[sorted(ds)[0]]
        if self.text_field not in ds.column_names:
            raise CorpusError(f"{self.path}: no column {self.text_field!r} (columns: {ds.column_names})")
        for i, text in enumerate(ds[self.text_field]):
            if text:
                yield Document(f"{self.path}:{i}", text)


def open_corpus(spec: str, text_field: str = "text", tokenizer=None) -> CorpusSource:
    """Map a corpus spec to its source; a clear ``CorpusError`` when nothing matches."""
    if spec == StdlibSource.spec:
        return StdlibSource()
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {spec!r} not found: give python-stdlib, a .txt/.jsonl/.parquet file, "
                          "a folder of text files, or a datasets save_to_disk folder")
    chat = None
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        def chat(messages: list) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False)
    if path.suffix == ".jsonl":
        return JsonlSource(path, text_field, chat)
    if path.suffix == ".parquet":
        return ParquetSource(path, text_field)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return DiskDatasetSource(path, text_field)
    return TextSource(path)


# --------------------------------------------------------------------------------------
# Contexts


@dataclass(frozen=True)
class ExclusionRules:
    """Which token positions are left out of every statistic (and of the cache).

    Rules are applied in the order of the fields; a dropped token is counted under the
    first rule that drops it.
    """

    special_tokens: bool = True
    """drop BOS/EOS/separator/padding and every other special token of the tokenizer."""
    first_positions: int = 4
    """drop the first N positions of every context: attention sinks on SmolLM2 (README)."""

    def __post_init__(self) -> None:
        if self.first_positions < 0:
            raise ValueError(f"exclude.first_positions must be >= 0, got {self.first_positions}")


@dataclass(frozen=True)
class ContextConfig:
    """How documents become fixed-length contexts."""

    ctx_len: int = 128
    """tokens per context, BOS included."""
    packing: Literal["packed", "document"] = "packed"
    """``packed``: documents concatenated with a separator token and cut into contexts;
    ``document``: each context holds tokens of one document only (the last piece padded)."""
    prepend_bos: bool = True
    """start every context with the tokenizer's BOS token (SmolLM2: ``<|im_start|>``)."""
    text_field: str = "text"
    """field or column holding the text in JSONL, Parquet and datasets corpora."""
    exclude: ExclusionRules = field(default_factory=ExclusionRules)

    def __post_init__(self) -> None:
        if self.ctx_len < 2:
            raise ValueError(f"ctx_len must be >= 2, got {self.ctx_len}")
        if self.packing not in ("packed", "document"):
            raise ValueError(f"packing must be 'packed' or 'document', got {self.packing!r}")
        if self.exclude.first_positions >= self.ctx_len:
            raise ValueError(f"exclude.first_positions ({self.exclude.first_positions}) must be below "
                             f"ctx_len ({self.ctx_len}): no token would be kept")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Contexts:
    """Tokenized contexts with per-token provenance. All tensors are ``[n_ctx, ctx_len]``;
    provenance is -1 at positions that hold no document token (BOS, separator, padding)."""

    tokens: Int[Tensor, "n_ctx ctx_len"]
    doc: Int[Tensor, "n_ctx ctx_len"]
    """index of the document in the corpus order."""
    pos: Int[Tensor, "n_ctx ctx_len"]
    """token index inside the document."""
    offset: Int[Tensor, "n_ctx ctx_len"]
    """character offset of the token's start inside the document text."""
    keep: Bool[Tensor, "n_ctx ctx_len"]
    doc_names: list[str]
    excluded: dict[str, int]
    """tokens dropped by each exclusion rule."""
    exhausted: bool
    """True when the corpus ran out before the token budget was met."""

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def sha256(self) -> str:
        h = hashlib.sha256()
        for t in (self.tokens, self.doc, self.pos, self.offset, self.keep):
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def _document_stream(source: CorpusSource, tokenizer) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
    """Yield (doc index, name, token ids, char offsets) for every non-empty document."""
    for i, document in enumerate(source.documents()):
        enc = tokenizer(document.text, add_special_tokens=False, return_offsets_mapping=True,
                        split_special_tokens=not document.markup)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        if len(ids):
            yield i, document.name, ids, np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)


def make_contexts(source: CorpusSource, tokenizer, cfg: ContextConfig, max_tokens: int) -> Contexts:
    """Tokenize ``source`` into contexts until ``max_tokens`` tokens are kept (or it runs out).

    The kept count is exact: positions of the last context beyond the budget are unmarked.
    """
    if max_tokens <= 0:
        raise ValueError(f"token budget must be positive, got {max_tokens}")
    L = cfg.ctx_len
    bos = tokenizer.bos_token_id if cfg.prepend_bos else None
    if cfg.prepend_bos and bos is None:
        raise CorpusError("prepend_bos is set but the tokenizer has no BOS token")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    head = 1 if bos is not None else 0
    body = L - head

    rows: list[tuple[np.ndarray, ...]] = []
    names: dict[int, str] = {}
    excluded = {"special_tokens": 0, "first_positions": 0}
    kept_total = 0
    # Buffers of the packed stream: token ids, doc index, pos, char offset.
    buf = [np.empty(0, np.int64) for _ in range(4)]

    def emit(parts: list[np.ndarray]) -> bool:
        """Turn one context's body into a row; return True when the budget is met."""
        nonlocal kept_total
        ids, doc, pos, off = (np.concatenate([np.full(head, v, np.int64), p]) if head else p
                              for v, p in zip((bos, -1, -1, -1), parts))
        n = len(ids)
        if n < L:  # document mode: pad the last piece
            fill = L - n
            ids, doc, pos, off = (np.concatenate([a, np.full(fill, v, np.int64)])
                                  for a, v in zip((ids, doc, pos, off), (pad, -1, -1, -1)))
        keep = np.ones(L, dtype=bool)
        if cfg.exclude.special_tokens:
            is_special = np.isin(ids, special.numpy())
            excluded["special_tokens"] += int((keep & is_special).sum())
            keep &= ~is_special
        if cfg.exclude.first_positions:
            first = np.arange(L) < cfg.exclude.first_positions
            excluded["first_positions"] += int((keep & first).sum())
            keep &= ~first
        room = max_tokens - kept_total
        if keep.sum() > room:  # budget: unmark the kept positions past the last one needed
            keep[np.flatnonzero(keep)[room:]] = False
        kept_total += int(keep.sum())
        rows.append((ids, doc, pos, off, keep))
        return kept_total >= max_tokens

    done = False
    for d, name, ids, offs in _document_stream(source, tokenizer):
        names[d] = name
        doc_arr, pos_arr = np.full(len(ids), d, np.int64), np.arange(len(ids), dtype=np.int64)
        if cfg.packing == "packed":
            parts = (np.append(ids, sep), np.append(doc_arr, -1), np.append(pos_arr, -1), np.append(offs, -1))
            buf = [np.concatenate([b, p]) for b, p in zip(buf, parts)]
            while len(buf[0]) >= body and not done:
                done = emit([b[:body] for b in buf])
                buf = [b[body:] for b in buf]
        else:
            for start in range(0, len(ids), body):
                if done:
                    break
                done = emit([a[start:start + body] for a in (ids, doc_arr, pos_arr, offs)])
        if done:
            break
    if not done and cfg.packing == "packed" and len(buf[0]):
        done = emit(buf)  # the tail of the stream, padded
    if not rows or kept_total == 0:
        raise CorpusError(f"corpus {source.spec!r} yielded no usable tokens "
                          f"(documents read: {len(names)}, exclusions: {excluded})")
    stack = [torch.from_numpy(np.stack(col)) for col in zip(*rows)]
    used = sorted(set(int(x) for x in stack[1].unique().tolist() if x >= 0))
    return Contexts(tokens=stack[0], doc=stack[1], pos=stack[2], offset=stack[3], keep=stack[4],
                    doc_names=[names.get(i, "") for i in range(max(used) + 1)] if used else [],
                    excluded=excluded, exhausted=not done)
