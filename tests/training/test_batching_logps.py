"""Tokenisation of pairs and the chunked log-prob gather, on the tiny Llama with SmolLM2's tokenizer."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aipo_ray.training import PairEncoder, SequenceLogps, collate_pairs
from aipo_ray.training.logps import full_vocab_response_logps


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path):
    return AutoTokenizer.from_pretrained(tiny_llama_path)


@pytest.fixture(scope="module")
def model(tiny_llama_path):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)


def test_response_tokens_are_the_tokens_after_the_generation_prompt(tokenizer):
    enc = PairEncoder(tokenizer, 512, 512)
    pair = enc.encode("What is 2+2?", "It is 4.", "Five.")
    user = [{"role": "user", "content": "What is 2+2?"}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": "It is 4."}], tokenize=False)
    assert tokenizer.decode(pair.prompt) == prompt_text
    assert tokenizer.decode(pair.prompt + pair.chosen) == full_text
    assert tokenizer.decode(pair.chosen).startswith("It is 4.<|im_end|>")
    assert tokenizer.decode(pair.rejected).startswith("Five.<|im_end|>")


def test_prompt_truncated_from_left_response_from_right_and_counted(tokenizer):
    full = PairEncoder(tokenizer, 10_000, 10_000).encode("word " * 50, "yes " * 30, "no")
    short = PairEncoder(tokenizer, 8, 5).encode("word " * 50, "yes " * 30, "no")
    assert short.prompt == full.prompt[-8:]  # the end of the prompt stays next to the answer
    assert short.chosen == full.chosen[:5]
    assert short.rejected == full.rejected  # "no<|im_end|>\n" fits in 5 tokens
    assert (short.prompt_truncated, short.chosen_truncated, short.rejected_truncated) == (
        True, True, False)
    batch = collate_pairs([short, full], tokenizer.pad_token_id)
    assert batch.truncated_prompts == 1 and batch.truncated_responses == 1


def test_masks_come_from_lengths_even_where_pad_equals_eos(tokenizer):
    enc = PairEncoder(tokenizer, 512, 512)
    pairs = enc.encode_many(["Hi", "A much longer question about many things?"],
                            ["Hello there, friend.", "Yes."], ["Go away.", "No, not at all."])
    batch = collate_pairs(pairs, enc.pad_token_id)
    assert batch.input_ids.shape[0] == 4 and batch.num_pairs == 2
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        # The response ends with <|im_end|> == EOS == pad, and it is still counted.
        assert batch.response_mask[i].sum() == len(response)
        assert batch.response_mask[i, len(prompt)] == 1 and batch.response_mask[i, len(prompt) - 1] == 0
        assert enc.pad_token_id in response


def test_chunked_logps_equal_full_vocab_logps_values_and_grads(tokenizer, model):
    enc = PairEncoder(tokenizer, 512, 512)
    pairs = enc.encode_many(["Name a colour.", "Count to three."],
                            ["Blue is a colour.", "One, two, three."], ["Dog.", "Four."])
    batch = collate_pairs(pairs, enc.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = full_vocab_response_logps(logits, batch.input_ids, batch.response_mask)
    expected_grad = torch.autograd.grad(expected.sum(), model.lm_head.weight)[0]
    for chunk in (1, 7, 100_000):
        logps = SequenceLogps(model, chunk_size=chunk)(
            batch.input_ids, batch.attention_mask, batch.response_mask)
        torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-4)
        grad = torch.autograd.grad(logps.sum(), model.lm_head.weight)[0]
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_concatenated_padded_forward_equals_one_sequence_at_a_time(tokenizer, model):
    enc = PairEncoder(tokenizer, 512, 512)
    pairs = enc.encode_many(["Short?", "A longer prompt with more words in it?"],
                            ["A fairly long chosen answer with words.", "Ok."], ["No.", "Nope, nope."])
    scorer = SequenceLogps(model, chunk_size=16).eval()
    with torch.no_grad():
        chosen, rejected, chosen_len, rejected_len = scorer.pair_logps(
            collate_pairs(pairs, enc.pad_token_id))
        for i, p in enumerate(pairs):
            alone = scorer.pair_logps(collate_pairs([p], enc.pad_token_id))
            torch.testing.assert_close(chosen[i], alone[0][0], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(rejected[i], alone[1][0], rtol=1e-5, atol=1e-4)
            assert chosen_len[i] == len(p.chosen) and rejected_len[i] == len(p.rejected)


def test_packed_pairs_are_one_row_with_positions_reset_per_sequence(tokenizer):
    enc = PairEncoder(tokenizer, 512, 512)
    pairs = enc.encode_many(["Hi", "Why?"], ["Hello.", "Because."], ["Go.", "No idea at all."])
    batch = collate_pairs(pairs, enc.pad_token_id, packed=True)
    seqs = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    lengths = [len(a) + len(b) for a, b in seqs]
    assert batch.input_ids.shape == (1, sum(lengths)) and batch.num_pairs == 2
    assert batch.input_ids[0].tolist() == [t for a, b in seqs for t in a + b]  # no padding
    assert batch.position_ids[0].tolist() == [i for n in lengths for i in range(n)]
    assert batch.sequence_ids[0].tolist() == [k for k, n in enumerate(lengths) for _ in range(n)]
    assert batch.response_lengths().tolist() == [len(b) for _, b in seqs]


def _packed_vs_padded(model, pairs, pad_token_id):
    """(padded, packed) pair_logps outputs and lm_head/first-layer gradients, in fp32."""
    scorer = SequenceLogps(model, chunk_size=7)
    out = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        chosen, rejected, c_len, r_len = scorer.pair_logps(
            collate_pairs(pairs, pad_token_id, packed=packed))
        (chosen.sum() - 0.5 * rejected.sum()).backward()
        grads = [p.grad.clone() for p in (model.lm_head.weight,
                                          model.model.layers[0].self_attn.q_proj.weight)]
        out.append((chosen.detach(), rejected.detach(), c_len, r_len, grads))
    model.zero_grad(set_to_none=True)
    return out


def _length_skewed_pairs(enc):
    return enc.encode_many(
        ["Short?", "A much longer prompt with a good many more words in it, to skew lengths?"],
        ["A fairly long chosen answer, with several clauses, and words, and more words.", "Ok."],
        ["No.", "Nope, nope, and a little more nope for good measure."])


def test_packed_logps_and_grads_equal_padded_in_fp32(tokenizer, model):
    padded, packed = _packed_vs_padded(model, _length_skewed_pairs(PairEncoder(tokenizer, 512, 512)),
                                       tokenizer.pad_token_id)
    for a, b in zip(padded[:2], packed[:2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(padded[2], packed[2]) and torch.equal(padded[3], packed[3])
    for a, b in zip(padded[4], packed[4], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_packed_logps_equal_padded_on_smollm2(smollm2_path):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    smol = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    enc = PairEncoder(tok, 512, 512)
    scorer = SequenceLogps(smol, chunk_size=64).eval()
    with torch.no_grad():
        padded = scorer.pair_logps(collate_pairs(_length_skewed_pairs(enc), enc.pad_token_id))
        packed = scorer.pair_logps(collate_pairs(_length_skewed_pairs(enc), enc.pad_token_id,
                                                 packed=True))
    for a, b in zip(padded[:2], packed[:2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
