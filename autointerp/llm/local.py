"""A client that runs a local causal LM with transformers, in batches.

Prompts are rendered with the tokenizer's chat template and LEFT-padded by hand (the shared
tokenizer's ``padding_side`` is global state we do not touch), so every row's last prompt
token sits at the same position and generation continues all rows in step. Greedy when
``temperature == 0``, plain temperature sampling otherwise.

Teacher-forced reading (:meth:`LocalClient.forced_logprobs`): the prompt's ids and the given
answer's ids (tokenised on their own, so the boundary is exact) are left-padded into one batch
and run through ONE forward pass with explicit ``position_ids = cumsum(mask) - 1`` (a plain
forward pass, unlike ``generate``, does not derive positions from the mask). Only the last
``A + 1`` positions' logits are computed (``logits_to_keep``), ``A`` the longest answer: the
logits at column ``t`` predict the token at ``t + 1``. The prompt tokens all rows of a call
share (a scorer's system prompt and explanation) run once per call, batch 1, and a copy of their
key/value cache is repeated over each batch's rows: the rows' own parts then follow it,
left-padded, so the attention mask is ``[1 x shared | 0 x pad | 1 x own]`` and positions
continue from the shared part.

Log-probabilities come from the raw logits of each generation step
(``output_logits=True``): ``logprob_t = log_softmax(logits_t)[token_t]``. Raw logits, not
the processed ``scores``, because processors (temperature, top-k) would change the numbers
into something that is not the model's distribution.
"""

from __future__ import annotations

import copy
import inspect
import time

import torch

from autointerp.llm.base import (Completion, LLMClient, Message, TokenLogprob, TokenLogprobs, validate_forced,
                                 validate_request)
from autointerp.llm.cache import ResponseCache


class LocalClient(LLMClient):
    supports_logprobs = True
    supports_prefill = True
    supports_forced_logprobs = True
    forced_logit_budget = 4096
    """rows x kept positions per forced forward pass (x vocabulary floats of logits)."""
    min_shared_prefix = 16
    """a forced batch whose rows share at least this many prompt tokens computes them once."""

    def __init__(self, model, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 512,
                 cache: ResponseCache | None = None):
        """``model``: a model spec for :func:`autointerp.models.load_model`, or a ``LoadedModel``.

        ``max_new_tokens`` is a ceiling: a request for more raises ``ValueError``.
        """
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from autointerp.models import resolve

        # Generation runs on a plain transformers model read from the same safetensors folder,
        # never on the model wrapped by a TransformerBridge: the bridge replaces attention with
        # its own step-by-step version, which does not use the KV cache of `generate`, and every
        # token after the first comes out wrong ("The-----").
        spec = model if isinstance(model, str) else model.spec
        folder = resolve(spec)[0] if isinstance(model, str) else model.source
        dtype = torch.float32 if isinstance(model, str) else model.dtype
        self.model = spec
        self.hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(device).eval()
        self.tokenizer = model.tokenizer if not isinstance(model, str) else AutoTokenizer.from_pretrained(folder)
        self.device = str(next(self.hf_model.parameters()).device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.cache = cache
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = self.hf_model.generation_config.eos_token_id
        eos = eos if eos is not None else tok.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self._piece_text: dict[int, str] = {}
        # transformers 5.x renames forward's `past_key_values` to `cache` (the old name warns, and
        # goes in 5.40); 4.x knows only the old name
        self._cache_kwarg = ("cache" if "cache" in inspect.signature(self.hf_model.forward).parameters
                             else "past_key_values")

    def __repr__(self) -> str:
        return f"LocalClient(model={self.model!r}, device={self.device!r}, batch_size={self.batch_size})"

    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None, schema: dict | None = None) -> Completion:
        return self.generate_many([messages], max_tokens=max_tokens, temperature=temperature,
                                  logprobs=logprobs, schema=schema)[0]

    def generate_many(self, conversations: list[list[Message]], *, max_tokens: int, temperature: float = 0.0,
                      logprobs: int | None = None, schema: dict | None = None) -> list[Completion]:
        if schema is not None:
            raise ValueError("the local client does not constrain answers to a JSON schema (supports_schema is False)")
        for m in conversations:
            validate_request(m, max_tokens, temperature, logprobs, True)
        if max_tokens > self.max_new_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} exceeds this client's max_new_tokens={self.max_new_tokens}")
        params = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}
        results, todo = self._cached(conversations, params)
        # Similar lengths together: less padding per batch.
        prompts = {i: self.prompt_ids(conversations[i]) for i in todo}
        todo.sort(key=lambda i: len(prompts[i]))
        # the prompt tokens every request of the call shares (an explainer's system prompt and
        # instructions) run once, even for one batch; each batch continues from a copy of their cache
        t0 = time.monotonic()
        prefix = self._shared_prefix([prompts[i] for i in todo])
        prefix_latency = (time.monotonic() - t0) / max(len(todo), 1)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            if self.deadline is not None and self.deadline.passed:  # nothing starts after the deadline
                for i in idx:
                    results[i] = self.deadline.failure(self.model)
                continue
            t0 = time.monotonic()
            outs = self._generate_batch([prompts[i] for i in idx], max_tokens, temperature, logprobs, prefix)
            latency = (time.monotonic() - t0) / len(idx) + prefix_latency  # the batch's time, shared among its rows
            for i, c in zip(idx, outs):
                c.latency_s = latency
                if self.cache is not None:
                    self.cache.put(self.model, conversations[i], params, c)
                results[i] = c
        return results

    def _cached(self, conversations: list[list[Message]], params: dict) -> tuple[list[Completion | None], list[int]]:
        """Cache hits in place (``None`` elsewhere) and the indices still to compute."""
        results: list[Completion | None] = [None] * len(conversations)
        todo = []
        for i, m in enumerate(conversations):
            hit = self.cache.get(self.model, m, params) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        return results, todo

    def forced_logprobs(self, conversations: list[list[Message]], *, top_logprobs: int) -> list[Completion]:
        validate_forced(conversations, top_logprobs)
        params = {"forced": True, "top_logprobs": top_logprobs}
        results, todo = self._cached(conversations, params)
        pairs = {i: (self.prompt_ids(conversations[i][:-1]),
                     self.tokenizer(conversations[i][-1]["content"], add_special_tokens=False)["input_ids"])
                 for i in todo}
        limit = getattr(self.hf_model.config, "max_position_embeddings", None)
        for i in [i for i in todo if limit and sum(map(len, pairs[i])) > limit]:
            n = sum(map(len, pairs[i]))
            results[i] = Completion(text=None, status="error", model=self.model,
                                    error=f"prompt + answer is {n} tokens, over the model's context of {limit}")
            todo.remove(i)
        todo.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        t0 = time.monotonic()
        prefix = self._shared_prefix([pairs[i][0] for i in todo])
        prefix_latency = (time.monotonic() - t0) / max(len(todo), 1)  # shared among all rows
        start = 0
        while start < len(todo):
            # as many rows as the logit budget allows (at least one), at most batch_size
            end, widest = start, 0
            while end < len(todo) and end - start < self.batch_size:
                widest = max(widest, len(pairs[todo[end]][1]) + 1)
                if end > start and (end - start + 1) * widest > self.forced_logit_budget:
                    break
                end += 1
            idx = todo[start:end]
            if self.deadline is not None and self.deadline.passed:
                for i in idx:
                    results[i] = self.deadline.failure(self.model)
                start = end
                continue
            t0 = time.monotonic()
            outs = self._forced_batch([pairs[i] for i in idx], top_logprobs, prefix)
            latency = (time.monotonic() - t0) / len(idx) + prefix_latency
            for i, c in zip(idx, outs):
                # the answer as given; its tokens' texts spell it unless a character was split
                # between tokens (callers check)
                c.text, c.latency_s = conversations[i][-1]["content"], latency
                if self.cache is not None:
                    self.cache.put(self.model, conversations[i], params, c)
                results[i] = c
            start = end
        return results

    @torch.inference_mode()
    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[int, object | None]:
        """The prompt tokens every row of a call shares, run once: ``(length, key/value cache)``,
        or ``(0, None)`` when they are fewer than ``min_shared_prefix`` or the cache type cannot
        be repeated over a batch. Never a row's last prompt token: each row's own part must hold
        the position that predicts its first answer token."""
        if len(prompts) < 2:
            return 0, None
        shared = min(_common_prefix_len(prompts), min(map(len, prompts)) - 1)
        if shared < self.min_shared_prefix:
            return 0, None
        prefix_1P = torch.tensor([prompts[0][:shared]], device=self.device)
        out = self.hf_model(input_ids=prefix_1P, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        return (shared, cache) if hasattr(cache, "batch_repeat_interleave") else (0, None)

    @torch.inference_mode()
    def _forced_batch(self, pairs: list[tuple[list[int], list[int]]], top_n: int,
                      prefix: tuple[int, object | None] = (0, None)) -> list[Completion]:
        rows = [p + a for p, a in pairs]
        keep = max(len(a) for _, a in pairs) + 1
        shared, cache = prefix
        if cache is not None:  # the call's shared prompt prefix (_shared_prefix), one copy per batch
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(rows))
        width = max(map(len, rows)) - shared
        ids_BP = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask_BP = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask_BP[:, :shared] = 1
        for b, r in enumerate(rows):  # left padding of each row's own part: every answer ends at the last column
            own = r[shared:]
            ids_BP[b, width - len(own):] = torch.tensor(own)
            mask_BP[b, shared + width - len(own):] = 1
        pos_BP = (mask_BP.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits_BKV = self.hf_model(input_ids=ids_BP.to(self.device), attention_mask=mask_BP.to(self.device),
                                   position_ids=pos_BP.to(self.device), **{self._cache_kwarg: cache},
                                   use_cache=cache is not None, logits_to_keep=keep).logits
        completions = []
        for b, (_, answer) in enumerate(pairs):
            # column keep-1-len(answer)+t of the kept logits predicts answer token t
            logp_AV = torch.log_softmax(logits_BKV[b, keep - 1 - len(answer):keep - 1].float(), dim=-1).cpu()
            lps = self._token_logprobs(logp_AV, answer, top_n)
            completions.append(Completion(text="".join(t.token for t in lps), status="ok", logprobs=lps,
                                          model=self.model))
        return completions

    def _piece(self, token_id: int) -> str:
        """One token's text (memoised: the same few thousand ids recur at every position)."""
        text = self._piece_text.get(token_id)
        if text is None:
            text = self._piece_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat-templated conversation, ending with the assistant's turn opening,
        or, when the last message is the assistant's (a prefill), inside that message."""
        prefill = messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                                  continue_final_message=prefill)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], max_tokens: int, temperature: float,
                        logprobs: int | None, prefix: tuple[int, object | None] = (0, None)) -> list[Completion]:
        shared, cache = prefix
        if cache is not None and all(len(p) > shared for p in prompts):
            # ids [shared prefix | pad | own]: generate reads the cache for the prefix and derives
            # positions from the mask (cumsum - 1), so padding between the two is skipped
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(prompts))
        else:
            shared, cache = 0, None
        width = max(len(p) for p in prompts) - shared
        ids_BP = torch.full((len(prompts), shared + width), self.pad_id, dtype=torch.long)
        mask_BP = torch.zeros((len(prompts), shared + width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding of each row's own part: the prompt ends at the last column
            ids_BP[b, :shared] = torch.tensor(p[:shared], dtype=torch.long)
            mask_BP[b, :shared] = 1
            ids_BP[b, shared + width - (len(p) - shared):] = torch.tensor(p[shared:])
            mask_BP[b, shared + width - (len(p) - shared):] = 1
        width = shared + width
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    if temperature > 0 else {"do_sample": False})
        out = self.hf_model.generate(
            input_ids=ids_BP.to(self.device), attention_mask=mask_BP.to(self.device),
            max_new_tokens=max_tokens, **({self._cache_kwarg: cache} if cache is not None else {}),
            pad_token_id=self.pad_id, return_dict_in_generate=True, output_logits=logprobs is not None,
            **sampling)
        new_BT = out.sequences[:, width:].cpu()
        if logprobs is not None:
            logp_BTV = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu()
        completions = []
        for b in range(len(prompts)):
            tokens = new_BT[b].tolist()
            # Keep the tokens before the first stop token (rows that stopped early are padded after it).
            n = next((t for t, tok in enumerate(tokens) if tok in self.stop_ids), len(tokens))
            tokens = tokens[:n]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            lps = self._token_logprobs(logp_BTV[b], tokens, logprobs) if logprobs is not None else None
            completions.append(Completion(text=text, status="ok", logprobs=lps, model=self.model))
        return completions

    def _token_logprobs(self, logp_TV: torch.Tensor, tokens: list[int], top_n: int) -> list[TokenLogprobs]:
        piece = self._piece
        chosen = logp_TV.gather(1, torch.tensor(tokens, dtype=torch.long).view(-1, 1)).view(-1).tolist() \
            if tokens else []
        if top_n > 0 and tokens:
            vals_TK, ids_TK = (x.tolist() for x in logp_TV[:len(tokens)].topk(top_n, dim=-1))
        result = []
        for t, tok in enumerate(tokens):
            top = ([TokenLogprob(piece(a), v) for v, a in zip(vals_TK[t], ids_TK[t])] if top_n > 0 else [])
            result.append(TokenLogprobs(token=piece(tok), logprob=chosen[t], top=top))
        return result


def _common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all ``seqs`` share."""
    n = min(map(len, seqs))
    for i in range(n):
        first = seqs[0][i]
        if any(s[i] != first for s in seqs):
            return i
    return n
