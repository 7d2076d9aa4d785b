"""The loss maths against hand-computed numbers and against TRL's DPO loss."""

import copy
import math

import pytest
import torch

from conscience.losses import dpo_loss, hybrid_loss, sequence_logps, token_kl


def test_sequence_logps_by_hand():
    # V=2; row 0: logits (0, 0) → log ½ per token; row 1: logits (log 3, 0) → p(0)=¾, p(1)=¼
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                           [[math.log(3), 0.0], [math.log(3), 0.0], [math.log(3), 0.0]]])
    labels = torch.tensor([[0, 1, -100], [0, 1, 1]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    out = sequence_logps(logits, labels, mask)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(2 * math.log(0.5), abs=1e-6)
    assert out[1].item() == pytest.approx(2 * math.log(0.25), abs=1e-6)


def test_sequence_logps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))


def test_dpo_loss_by_hand():
    # logratios: chosen -10-(-12)=2, rejected -20-(-19)=-1; beta=0.5 → z = 0.5*(2+1) = 1.5
    losses, chosen_r, rejected_r = dpo_loss(torch.tensor([-10.0]), torch.tensor([-20.0]),
                                            torch.tensor([-12.0]), torch.tensor([-19.0]), beta=0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.5)), abs=1e-6)  # -log σ(1.5) = 0.201413
    assert losses.item() == pytest.approx(0.201413, abs=1e-5)
    assert chosen_r.item() == pytest.approx(1.0) and rejected_r.item() == pytest.approx(-0.5)
    # policy == reference → log 2
    same, _, _ = dpo_loss(torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]),
                          torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]), beta=0.1)
    assert torch.allclose(same, torch.full((2,), math.log(2)))


def test_dpo_loss_gradient_favours_chosen():
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    losses, _, _ = dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=1.0)
    losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)


def test_dpo_loss_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.0)


def test_hybrid_loss():
    task = torch.tensor(2.0)
    assert hybrid_loss(task, torch.tensor([1.0, 3.0]), lam=0.5).item() == pytest.approx(3.0)
    assert hybrid_loss(task, torch.tensor([1.0, 3.0]), lam=0.0) is task  # plain SFT: the same tensor
    assert hybrid_loss(task, None, lam=1.0) is task
    with pytest.raises(ValueError, match="lam"):
        hybrid_loss(task, None, lam=-1.0)


def test_matches_trl_dpo_sigmoid_loss(tmp_path):
    """TRL 1.x has no standalone DPO loss function: its sigmoid loss lives inside
    DPOTrainer._compute_loss. We drive that with a tiny model and fixed reference log-probs
    and compare it with sequence_logps + dpo_loss on the same model outputs."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from conscience.tiny_model import tiny_model

    torch.manual_seed(0)
    lm = tiny_model(0)
    rows = [
        {"prompt": [{"role": "user", "content": "Is this ethical?"}],
         "chosen": [{"role": "assistant", "content": "Yes, I can help safely."}],
         "rejected": [{"role": "assistant", "content": "No rulers harm money power"}]},
        {"prompt": [{"role": "user", "content": "Write code"}],
         "chosen": [{"role": "assistant", "content": "def add(a, b):\n    return a + b"}],
         "rejected": [{"role": "assistant", "content": "import pickle, os"}]},
    ]
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], beta=0.3, per_device_train_batch_size=2, use_cpu=True)
    trainer = trl.DPOTrainer(model=lm.model, ref_model=copy.deepcopy(lm.model), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=lm.tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    ref_chosen, ref_rejected = torch.tensor([-40.0, -35.0]), torch.tensor([-38.0, -44.0])
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref_chosen, ref_rejected
    trainer.precompute_ref_logps = True  # use the reference log-probs given in the batch
    trl_loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]
    logps = sequence_logps(logits[:, :-1], batch["input_ids"][:, 1:], mask)
    chosen, rejected = logps.chunk(2)
    ours, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
    assert abs(ours.mean().item() - math.log(2)) > 0.1  # a case where the reference matters
    assert ours.mean().item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-5)


def test_token_kl_by_hand():
    # V=2; policy (0, log 3) → p = (¼, ¾); reference (0, 0) → q = (½, ½)
    # KL = ¼ log(¼/½) + ¾ log(¾/½) = ¼ log ½ + ¾ log 1.5 ≈ 0.130812
    policy = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, -5.0]]])
    ref = torch.zeros(1, 3, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    mask = torch.tensor([[1, 1, 0]])  # the third position (a very different one) is not counted
    assert token_kl(policy, ref, mask).item() == pytest.approx(expected, abs=1e-6)
    assert token_kl(policy, policy.clone(), torch.ones(1, 3)).item() == pytest.approx(0.0, abs=1e-7)
    assert token_kl(policy, ref, torch.zeros(1, 3)).item() == 0.0  # nothing masked in: 0, not NaN


def test_token_kl_gradient_pulls_the_policy_to_the_reference():
    policy = torch.tensor([[[0.0, math.log(3)]]], requires_grad=True)
    token_kl(policy, torch.zeros(1, 1, 2), torch.ones(1, 1)).backward()
    assert policy.grad[0, 0, 1] > 0 > policy.grad[0, 0, 0]  # descent lowers the over-weighted token
    with pytest.raises(ValueError, match="shape mismatch"):
        token_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))
