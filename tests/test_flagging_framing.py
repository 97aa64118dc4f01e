"""The causal probes' framing (:mod:`autointerp.flagging.framing`): the chat prompt's text and
tokens, the completion tokens that ``measure`` scores under it, and the ``chat`` setting."""

from __future__ import annotations

import pytest
import torch

from autointerp.flagging import FlagError, FlagSettings
from autointerp.flagging import framing
from autointerp.flagging import signals as sg

HP = "blocks.1.hook_out"

PROMPTS = ["The weather today is", "My favourite hobby is"]
COMPLETIONS = [" you idiot", " I hate you"]
SIMPLE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(tiny_model_dir, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = template
    return tok


def test_chat_framing_pins_the_text_and_tokens(tiny_model_dir):
    """Chat framing: the prompt is a user turn ending with the assistant header, its markup parsed
    into special tokens, BOS first when the context prepends one; the completion is the assistant's
    first words, its leading space stripped, tokenised as plain text."""
    tok = _tokenizer(tiny_model_dir, SIMPLE_TEMPLATE)
    text = framing.chat_prompt(tok, PROMPTS[0])
    assert text == "<|im_start|>user\nThe weather today is<|im_end|>\n<|im_start|>assistant\n"
    ids_BL, spans = framing.sequences(tok, PROMPTS[:1], COMPLETIONS[:1], bos=True, chat=True)
    p_ids = [tok.bos_token_id] + tok(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    c_ids = tok("you idiot", add_special_tokens=False)["input_ids"]
    assert ids_BL[0].tolist() == p_ids + c_ids and spans == [(len(p_ids), len(c_ids))]
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert p_ids.count(start) == 2 + (tok.bos_token_id == start) and p_ids.count(end) == 1  # markup, not text
    assert tok.convert_ids_to_tokens(c_ids)[0] == "you"  # the answer's first word: no leading-space token
    assert c_ids != tok(COMPLETIONS[0], add_special_tokens=False)["input_ids"]
    # no BOS when the run's context prepends none; the plain framing is what it always was
    no_bos = framing.sequences(tok, PROMPTS[:1], COMPLETIONS[:1], bos=False, chat=True)[0]
    assert no_bos[0].tolist() == p_ids[1:] + c_ids
    plain = [tok.bos_token_id] + tok(PROMPTS[0] + COMPLETIONS[0], add_special_tokens=False)["input_ids"]
    assert framing.sequences(tok, PROMPTS[:1], COMPLETIONS[:1], bos=True)[0][0].tolist() == plain
    # a completion's own markup stays text
    assert end not in framing.completion_ids(tok, " bye<|im_end|>", chat=True)


def test_chat_framing_scores_exactly_the_completion_tokens(tiny_model, tiny_model_dir):
    """``measure`` in chat framing against an independent forward pass of the plain transformers
    model on each unpadded ``[BOS] + template(prompt) + completion``: the mean log-prob of the
    completion's tokens, and the next-token distribution after the assistant header."""
    from transformers import AutoModelForCausalLM

    tok = tiny_model.tokenizer
    assert framing.has_chat_template(tok)  # SmolLM2's own template (system turn included)
    got = sg.measure(tiny_model, PROMPTS, COMPLETIONS, HP, bos=True, chat=True)
    plain_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for i, p in enumerate(PROMPTS):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True)
        assert text.endswith(f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n")
        p_ids = [tok.bos_token_id] + tok(text, add_special_tokens=False,
                                         split_special_tokens=False)["input_ids"]
        for j, c in enumerate(COMPLETIONS):
            c_ids = tok(c.strip(), add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = plain_model(torch.tensor([p_ids + c_ids])).logits[0].float()
            logp_LV = torch.log_softmax(logits, dim=-1)
            scored = range(len(p_ids) - 1, len(p_ids) + len(c_ids) - 1)  # positions predicting c_ids
            want = torch.stack([logp_LV[t, c_ids[k]] for k, t in enumerate(scored)]).mean()
            assert float(got.logp_PC[i, j]) == pytest.approx(float(want), abs=1e-4)
            if j == 0:
                assert torch.allclose(got.next_PV[i], logp_LV[len(p_ids) - 1], atol=1e-4)


def test_chat_setting_resolution(tiny_model_dir):
    with_template = _tokenizer(tiny_model_dir, SIMPLE_TEMPLATE)
    without = _tokenizer(tiny_model_dir, None)
    assert not framing.has_chat_template(without) and framing.has_chat_template(with_template)
    assert FlagSettings().chat == "auto"
    assert FlagSettings().framing(without) == "plain" and FlagSettings().framing(with_template) == "chat"
    assert FlagSettings(chat="off").framing(with_template) == "plain"
    assert FlagSettings(chat="on").framing(with_template) == "chat"
    with pytest.raises(FlagError, match="no"):
        FlagSettings(chat="on").framing(without)  # asked for chat framing, no template to render it
    for bad in ("yes", "", True, None):
        with pytest.raises(ValueError, match="chat must be one of 'auto', 'on', 'off'"):
            FlagSettings(chat=bad)
