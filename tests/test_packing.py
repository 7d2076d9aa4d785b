"""Pre-packed and int8 linear layers: same numbers as the dense layer, same generations."""

import copy

import pytest
import torch

from conscience.generation import generate
from conscience.packing import Int8Linear, PackedLinear, int8_supported, pack_linears, packing_supported
from conscience.tiny_model import tiny_model

needs_packing = pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN fp32 packing here")


@needs_packing
def test_packed_linear_matches_dense_with_bias_and_any_leading_shape():
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    packed = PackedLinear(layer)
    for shape in ((1, 24), (4, 24), (2, 7, 24)):
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(packed(x), layer(x), atol=1e-5)
    assert not packed.state_dict()  # the opaque weight (and the bias) stay out of any checkpoint


@pytest.mark.skipif(not int8_supported(), reason="no int8 weight kernel here")
def test_int8_linear_is_within_the_rounding_error_and_far_from_a_wrong_weight():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        dense = layer(x)
        q = Int8Linear(layer, torch.float32)(x)
    step = layer.weight.abs().amax(dim=1) / 127  # one rounding step per output row
    bound = (x.abs().sum(-1, keepdim=True) * step / 2).max()
    assert (q - dense).abs().max() <= bound + 1e-4
    assert (q - dense).abs().max() > 0  # really rounded
    wrong = Int8Linear(torch.nn.Linear(64, 32), torch.float32)(x)
    assert not torch.allclose(wrong, dense, atol=bound.item())


@needs_packing
def test_a_packed_copy_generates_what_the_dense_model_generates():
    lm = tiny_model(0)
    lm.tokenizer.padding_side = "left"
    clone = copy.deepcopy(lm.model).eval()
    n_linear = sum(type(m) is torch.nn.Linear for m in clone.modules())
    assert pack_linears(clone) == n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in clone.modules())
    packed = type(lm)(clone, lm.tokenizer, lm.spec, lm.identity)
    chats = [[{"role": "user", "content": "Is this answer aligned?"}], [{"role": "user", "content": "Write code"}]]
    dense_out = generate(lm, chats, max_new_tokens=12)
    packed_out = generate(packed, chats, max_new_tokens=12)
    assert [g.text for g in packed_out] == [g.text for g in dense_out]
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(clone(input_ids=ids).logits, lm.model(input_ids=ids).logits, atol=1e-4)


def test_probing_the_kernels_leaves_the_global_rng_alone():
    from conscience import packing

    packing.packing_supported.cache_clear()
    packing.int8_supported.cache_clear()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    packing_supported(torch.float32), packing_supported(torch.bfloat16), int8_supported()
    assert torch.equal(torch.rand(3), expected)
