"""One conscience step everywhere: the trainer's pairs are the pairs of ``Conscience`` responses.

The online round is a batched :meth:`Conscience.step`; these tests rebuild the step from its
parts (the policy's sampling copy drafts, the frozen copy's copy rewrites, the reviewer judges)
and check that, for the same seed, prompts and samples, the pairs are the same ones.
"""

import json
from pathlib import Path

import torch

from conscience.conscience import Conscience
from conscience.conscience_config import ConscienceConfig
from conscience.generation import LocalGenerator, Sampling
from conscience.pairs import pairs_from_responses
from conscience.tiny_model import tiny_model
from conscience.training.config import TrainConfig

torch.set_num_threads(1)


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Write code number {i}"},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]}) + "\n" for i in range(8)))
    values = dict(data=str(data), output_dir=str(tmp_path / "out"), max_steps=2, batch_size=2, lam=1.0,
                  align_every=1, align_prompts="task", align_batch=2, k=2, sample_max_new_tokens=8,
                  alt_max_new_tokens=8, max_length=64, margin=0.0, dpo_batch=2, lr=1e-2, lora_targets=["q_proj", "v_proj"],
                  conscience=ConscienceConfig(threshold=1.0, verdict="verbal"))
    values.update(overrides)
    return TrainConfig(**values)


def _conscience(policy, frozen, reviewer, cfg: TrainConfig, frozen_copy=None) -> Conscience:
    """The inference step, built from the trainer's parts: drafts from the policy's sampling copy,
    alternatives from the frozen copy's (adapter disabled) or the policy's."""
    from conscience.training.online import generation_copy, sampling_dtype

    dtype = sampling_dtype(policy.model, cfg.sample_dtype)
    drafter = LocalGenerator(generation_copy(policy, dtype, adapter=True))
    if cfg.writer == "frozen":
        rewriter = LocalGenerator(frozen_copy or generation_copy(frozen, dtype, adapter=False), frozen_weights=True)
    else:
        rewriter = drafter
    return Conscience(drafter, judge=frozen, reviewer=reviewer, mode=cfg.conscience.mode, max_rounds=1, rewriter=rewriter)


def _samplings(cfg: TrainConfig, seed: int) -> tuple[Sampling, Sampling]:
    return (Sampling(cfg.sample_max_new_tokens, cfg.sample_temperature, cfg.sample_top_p, seed),
            Sampling(cfg.alt_max_new_tokens, cfg.sample_temperature, cfg.sample_top_p, seed + 1))


def _as_tuples(pairs) -> list[tuple]:
    return [(p.prompt, p.chosen, p.rejected, p.chosen_score, p.rejected_score) for p in pairs]


def test_the_trainers_pairs_are_the_conscience_steps_pairs(tmp_path, monkeypatch):
    from conscience.training import run_training
    from conscience.training.online import _sampling
    from conscience.training.trainer import ConscienceTrainer

    cfg = _config(tmp_path, max_steps=3)
    original = ConscienceTrainer.sample_round
    rounds = []

    def checked(self, prompts, seed):
        with _sampling(self.policy.model):  # the trainer's own RNG stream is left untouched
            conscience = _conscience(self.policy, self.frozen, self.reviewer, self.cfg, self.frozen_writer())
            step = conscience.step(prompts, *_samplings(self.cfg, seed), k=self.cfg.k, revise_empty=False)
        result = original(self, prompts, seed)
        rounds.append((step.responses, result))
        return result

    monkeypatch.setattr(ConscienceTrainer, "sample_round", checked)
    run_training(cfg, lm=tiny_model(0))
    assert len(rounds) == cfg.max_steps  # align_every=1: a round at every step, the policy moving
    assert sum(len(result.pairs) for _, result in rounds) > 0
    for responses, result in rounds:
        assert [[c.text for c in r.candidates] for r in result.responses] == [[c.text for c in r.candidates]
                                                                              for r in responses]
        assert _as_tuples(result.pairs) == _as_tuples(pairs_from_responses(responses, cfg.margin))


def test_one_prompt_trains_on_the_pair_that_respond_answers_with(tmp_path):
    from conscience.training.online import online_round
    from conscience.training.run import apply_lora
    from conscience.verdict.factory import make_reviewer

    for writer in ("frozen", "policy"):
        cfg = _config(tmp_path, writer=writer)
        lm = apply_lora(tiny_model(0), cfg)
        with torch.no_grad():  # a trained adapter: the policy is no longer its frozen copy
            for name, p in lm.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        reviewer = make_reviewer(cfg.conscience_config(), lm)
        prompt, seed = "Write code that stores passwords", 11
        trained = online_round(lm, lm, reviewer, [prompt], k=1, seed=seed, writer=writer, mode=cfg.conscience.mode,
                               max_new_tokens=cfg.sample_max_new_tokens, alt_max_new_tokens=cfg.alt_max_new_tokens,
                               temperature=cfg.sample_temperature, top_p=cfg.sample_top_p, margin=cfg.margin,
                               sample_dtype=cfg.sample_dtype)
        response = _conscience(lm, lm, reviewer, cfg).respond(prompt, *_samplings(cfg, seed))
        assert response.draft.answer.strip() and response.flagged  # threshold 1: flagged, so revised
        [served] = trained.responses
        assert [c.text for c in served.candidates] == [c.text for c in response.candidates]
        assert [c.verdict.score for c in served.candidates] == [c.verdict.score for c in response.candidates]
        assert _as_tuples(trained.pairs) == _as_tuples(pairs_from_responses([response]))
        if response.candidates[1].answer.strip() not in ("", response.draft.answer.strip()):
            assert len(trained.pairs) == 1


def test_sampling_is_passed_per_call_and_never_stored():
    from conscience.generation import generate

    lm = tiny_model(0)
    conscience = Conscience(lm, max_rounds=0, max_new_tokens=4)
    before = conscience.sampling
    sampling = Sampling(max_new_tokens=3, temperature=1.0, seed=5)
    response = conscience.respond("Hello", sampling)
    assert conscience.sampling == before
    chat = [{"role": "user", "content": "Hello"}]
    assert response.draft.text == generate(lm, [chat], max_new_tokens=3, temperature=1.0, seed=5)[0].text


def test_generate_gives_openai_logprobs_when_asked():
    from conscience.generation import generate

    lm = tiny_model(0)
    chat = [{"role": "user", "content": "Tell me about rain"}]
    plain = generate(lm, [chat], max_new_tokens=6)[0]
    [with_logprobs] = LocalGenerator(lm).generate([chat], Sampling(max_new_tokens=6, top_logprobs=3))
    assert plain.logprobs is None and with_logprobs.text == plain.text
    assert len(with_logprobs.logprobs) == with_logprobs.new_tokens
    for entry in with_logprobs.logprobs:  # greedy: every token is its step's most likely one
        assert len(entry["top_logprobs"]) == 3
        assert entry["token"] == entry["top_logprobs"][0]["token"]
        assert entry["logprob"] == entry["top_logprobs"][0]["logprob"] <= 0
