"""scoring.py: per-token log-probs against closed forms (a bigram model with designed probabilities) and
against a naive full-forward reference on tiny real architectures; batched == one at a time; BOS handling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers.bigram import CITY_A, CITY_B, IN, IS, OF, THE, BigramLM, bigram_logprob, designed_table

from editdecay.errors import DataError
from editdecay.evaluate.scoring import continuation, score_continuations, special_prefix


class BigramNoKeep(BigramLM):
    """The same model without ``logits_to_keep``: scoring must slice the full logits itself."""

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


PROBS = {(IS, THE): 0.5, (IS, OF): 0.25, (IS, CITY_A): 0.2, (CITY_A, CITY_B): 0.6, (1, THE): 0.7}


def test_continuation_adds_one_space_only_when_needed():
    assert continuation("Paris") == " Paris"
    assert continuation(" Paris") == " Paris"
    assert continuation("\nParis") == "\nParis"
    assert continuation("") == " "


def test_tokens_of_the_fixture_are_as_the_tests_assume(tiny_tok):
    ids = tiny_tok([" is", " the", " of", " in", " city"], add_special_tokens=False)["input_ids"]
    assert ids == [[IS], [THE], [OF], [IN], [CITY_A, CITY_B]]


@pytest.mark.parametrize("cls", [BigramLM, BigramNoKeep])
def test_single_and_multi_token_targets_match_closed_form(tiny_tok, cls):
    model = cls(designed_table(len(tiny_tok), PROBS))
    the, city, of = score_continuations(model, tiny_tok, [("A is", " the"), ("A is", " city"), ("Some is", " of")])
    assert the.token_ids == (THE,)
    assert the.logprobs[0] == pytest.approx(math.log(0.5), abs=1e-5)
    assert the.is_argmax == (True,)
    assert city.token_ids == (CITY_A, CITY_B)
    assert city.logprobs == pytest.approx((math.log(0.2), math.log(0.6)), abs=1e-5)
    assert city.is_argmax == (False, True)  # 0.2 loses to " the" (0.5); 0.6 is the top of its row
    assert city.mean_nll == pytest.approx(-(math.log(0.2) + math.log(0.6)) / 2, abs=1e-5)
    assert city.token_accuracy == 0.5 and not city.all_argmax
    assert of.logprobs[0] == pytest.approx(math.log(0.25), abs=1e-5)


def test_target_without_leading_space_is_scored_as_its_own_tokens(tiny_tok):
    model = BigramLM(designed_table(len(tiny_tok), PROBS))
    plain = tiny_tok("the", add_special_tokens=False)["input_ids"]
    (score,) = score_continuations(model, tiny_tok, [("A is", "the")])
    assert list(score.token_ids) == plain and plain != [THE]
    expected = [bigram_logprob(len(tiny_tok), PROBS, prev, nxt) for prev, nxt in zip([IS] + plain[:-1], plain, strict=True)]
    assert score.logprobs == pytest.approx(expected, abs=1e-5)


def test_bos_tokenizer_prefixes_prompt_not_target(tiny_tok_bos):
    assert special_prefix(tiny_tok_bos) == [tiny_tok_bos.bos_token_id]
    model = BigramLM(designed_table(len(tiny_tok_bos), PROBS))
    empty, after_is = score_continuations(model, tiny_tok_bos, [("", " the"), ("A is", " city")])
    assert empty.token_ids == (THE,)  # conditioned on BOS alone: P(the | BOS) = 0.7
    assert empty.logprobs[0] == pytest.approx(math.log(0.7), abs=1e-5)
    assert after_is.token_ids == (CITY_A, CITY_B)
    assert after_is.logprobs == pytest.approx((math.log(0.2), math.log(0.6)), abs=1e-5)


def test_empty_prompt_without_bos_is_a_clear_error(tiny_tok):
    model = BigramLM(designed_table(len(tiny_tok), PROBS))
    with pytest.raises(DataError, match="record 1.*prompt"):
        score_continuations(model, tiny_tok, [("A is", " the"), ("", " the")])
    with pytest.raises(DataError, match="continuation"):
        score_continuations(model, tiny_tok, [("A is", "")])


def _reference(model, prompt_ids, target_ids):
    """Naive: full forward of prompt + target, full log-softmax, read the target positions."""
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    p = len(prompt_ids)
    return [logp[p - 1 + j, t].item() for j, t in enumerate(target_ids)]


PAIRS = [("The city of Paris is located in", " France"), ("A", " the river"), ("In 1990 the capital", " of"),
         ("Rome is the capital of", "Italy"), ("x", " y z w v u t"), ("The", " city")]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_batched_equals_one_at_a_time_equals_reference(make_tiny, arch):
    model, tok = make_tiny(arch, n_layers=2)
    batched = score_continuations(model, tok, PAIRS, batch_size=4)
    single = [score_continuations(model, tok, [pair], batch_size=1)[0] for pair in PAIRS]
    for (prompt, cont), b, s in zip(PAIRS, batched, single, strict=True):
        p_ids = tok(prompt)["input_ids"]
        t_ids = tok(cont, add_special_tokens=False)["input_ids"]
        assert list(b.token_ids) == t_ids == list(s.token_ids)
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)
        assert b.logprobs == pytest.approx(_reference(model, p_ids, t_ids), abs=1e-4)
        assert b.is_argmax == s.is_argmax


def test_bos_model_matches_reference_and_training_mode_is_restored(make_tiny, tiny_tok_bos):
    model, tok = make_tiny("llama", n_layers=2, tokenizer=tiny_tok_bos)
    model.train()
    scores = score_continuations(model, tok, PAIRS[:3], batch_size=2)
    assert model.training
    model.eval()
    for (prompt, cont), s in zip(PAIRS[:3], scores, strict=True):
        p_ids = tok(prompt)["input_ids"]
        assert p_ids[0] == tok.bos_token_id
        t_ids = tok(cont, add_special_tokens=False)["input_ids"]
        assert s.logprobs == pytest.approx(_reference(model, p_ids, t_ids), abs=1e-4)


def test_alternatives_sharing_a_prefix_equal_separate_scoring(make_tiny):
    from editdecay.evaluate.scoring import score_alternatives

    model, tok = make_tiny("llama", n_layers=2)
    groups = [("the correct answer is", [" answer1", " answer2", " answer3"]), ("Rome is in", [" Italy", " France"]),
              ("A", [" the", " of", " the"]), ("The city", [" x"])]
    grouped = score_alternatives(model, tok, groups, batch_size=3)
    for (prompt, conts), row in zip(groups, grouped, strict=True):
        separate = score_continuations(model, tok, [(prompt, c) for c in conts], batch_size=1)
        assert len(row) == len(conts)
        for g, s in zip(row, separate, strict=True):
            assert g.token_ids == s.token_ids
            assert g.logprobs == pytest.approx(s.logprobs, abs=1e-4)
            assert g.is_argmax == s.is_argmax


def test_alternatives_closed_form_on_bigram(tiny_tok):
    from editdecay.evaluate.scoring import score_alternatives

    model = BigramLM(designed_table(len(tiny_tok), PROBS))
    ((the, of),) = score_alternatives(model, tiny_tok, [("A is", [" the", " of"])])
    assert the.logprobs[0] == pytest.approx(math.log(0.5), abs=1e-5) and the.is_argmax == (True,)
    assert of.logprobs[0] == pytest.approx(math.log(0.25), abs=1e-5) and of.is_argmax == (False,)


def test_peft_wrapped_model_scores_like_its_merged_weights(make_tiny):
    from peft import LoraConfig, get_peft_model

    from editdecay.evaluate.scoring import _accepts_logits_to_keep

    model, tok = make_tiny("llama", n_layers=2)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.eval()
    assert _accepts_logits_to_keep(peft_model)  # the slicing path reaches through the wrapper
    scores = score_continuations(peft_model, tok, PAIRS[:3], batch_size=2)
    for (prompt, cont), s in zip(PAIRS[:3], scores, strict=True):
        ref = _reference(peft_model, tok(prompt)["input_ids"], tok(cont, add_special_tokens=False)["input_ids"])
        assert s.logprobs == pytest.approx(ref, abs=1e-4)
