"""NF4 codec and Linear4bit: byte-for-byte parity with bitsandbytes (the reference, run on
CPU), the layout facts, the no-saved-weight backward, and bitsandbytes' state-dict layout in
both directions. Errors name the tensor or key."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lorakit.quant import Linear4bit, nf4_dequantize, nf4_quantize
from lorakit.quant.nf4 import NF4_CODE, dynamic_map, quantize_blockwise_8bit, quantized_nbytes

bnb = pytest.importorskip("bitsandbytes")
F = bnb.functional
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _eager_bitsandbytes():
    # bitsandbytes torch.compiles its odd-shape dequantize fallback; eager gives the same
    # values without seconds of compilation per shape.
    with torch._dynamo.config.patch(disable=True):
        yield


def _bnb(w, blocksize, double_quant):
    return F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")


def _bnb_dequantize(packed, ref, shape):
    if len(shape) > 1 and shape[-1] % ref.blocksize:
        # bitsandbytes 0.50.2's CPU kernel can decode blocks that span rows with the wrong
        # absmax (errors of the size of the weights, e.g. shape (30, 96), blocksize 64); its
        # torch reference, the "default" backend with the CUDA kernel's semantics, is right.
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

        absmax = ref.absmax
        if ref.nested:
            absmax = F.dequantize_blockwise(ref.absmax, ref.state2) + ref.offset
        code = torch.tensor(NF4_CODE)
        return _dequantize_4bit_compute(
            packed.reshape(-1), absmax, code, ref.blocksize, shape, ref.dtype
        )
    return F.dequantize_4bit(packed, ref, quant_type="nf4").reshape(shape)


def _assert_same_encoding(w, blocksize, double_quant):
    packed, state = nf4_quantize(w, blocksize, double_quant)
    ref_packed, ref = _bnb(w, blocksize, double_quant)
    assert torch.equal(packed, ref_packed)
    assert torch.equal(state.absmax, ref.absmax)
    assert state.nested == ref.nested
    if double_quant:
        assert torch.equal(state.offset, ref.offset)
        assert torch.equal(state.nested_absmax, ref.state2.absmax)
        assert torch.equal(state.nested_code, ref.state2.code)
    for dtype in DTYPES:
        ref.dtype = dtype
        expected = _bnb_dequantize(ref_packed, ref, w.shape)
        got = nf4_dequantize(packed, state, dtype)
        assert got.dtype == dtype and got.shape == w.shape
        assert torch.equal(got, expected)


def test_dynamic_map_matches_bitsandbytes():
    assert torch.equal(dynamic_map(), F.create_dynamic_map(signed=True, max_exponent_bits=7))


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize(
    "shape", [(1,), (3,), (7, 9), (64, 64), (100, 70), (127, 33), (31, 257), (30, 96)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_exact_with_bitsandbytes(shape, blocksize, double_quant, dtype):
    torch.manual_seed(sum(shape) + blocksize)
    _assert_same_encoding((torch.randn(shape) * 0.05).to(dtype), blocksize, double_quant)


@pytest.mark.parametrize("blocksize", [32, 4096])
def test_bit_exact_extreme_blocksizes(blocksize):
    torch.manual_seed(0)
    _assert_same_encoding(torch.randn(65, 129), blocksize, True)


def test_bit_exact_many_nested_blocks():
    # 16384 first-level blocks -> 64 nested blocks of 256, heavy-tailed weights
    torch.manual_seed(0)
    w = torch.randn(1024, 1024) * torch.rand(1024, 1) ** 4
    _assert_same_encoding(w.to(torch.bfloat16), 64, True)


def test_nested_8bit_step_matches_bitsandbytes_on_hard_values():
    # dense grid, values near 0 (where the 65536-bin grid decides), exact code values,
    # a zero block and a partial block
    code = dynamic_map()
    parts = [
        torch.linspace(-1, 1, 50001),
        torch.linspace(-1e-4, 1e-4, 4097),
        code,
        (code[:-1] + code[1:]) / 2,
        torch.zeros(256),
        torch.randn(100) * 1e-3,
    ]
    x = torch.cat(parts)
    codes, absmax = quantize_blockwise_8bit(x, 256)
    ref_codes, ref = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(absmax, ref.absmax)
    assert torch.equal(codes, ref_codes)


def test_layout_facts():
    # first element in the high nibble; nearest code; odd n padded with the code of 0.0 (7)
    packed, state = nf4_quantize(torch.tensor([-1.0, 1.0, 0.5]), 64, double_quant=False)
    assert packed.shape == (2, 1) and packed.dtype == torch.uint8
    assert packed[:, 0].tolist() == [0x0F, (12 << 4) | 7]
    assert state.absmax.tolist() == [1.0]
    assert nf4_dequantize(packed, state).tolist() == [-1.0, 1.0, NF4_CODE[12]]
    # ties go to the lower code; a partial trailing block gets its own absmax
    w = torch.zeros(70)
    w[0], w[1], w[64] = 4.0, 4.0 * (NF4_CODE[14] + NF4_CODE[15]) / 2, -2.0
    packed, state = nf4_quantize(w, 64, double_quant=False)
    assert packed[0, 0] == (15 << 4) | 14
    assert state.absmax.tolist() == [4.0, 2.0]


def test_bits_per_parameter():
    packed, state = nf4_quantize(torch.randn(1024, 1024), 64, double_quant=True)
    data, _ = quantized_nbytes(packed, state)
    assert 8 * data / 2**20 == 4 + 8 / 64 + 32 / (64 * 256)
    data, _ = quantized_nbytes(*nf4_quantize(torch.randn(1024, 1024), 64, double_quant=False))
    assert 8 * data / 2**20 == 4.5


def test_bad_inputs_name_the_problem():
    with pytest.raises(TypeError, match="dtype torch.int64"):
        nf4_quantize(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="no elements"):
        nf4_quantize(torch.ones(0, 4))
    with pytest.raises(ValueError, match="blocksize 48"):
        nf4_quantize(torch.ones(4, 4), blocksize=48)
    with pytest.raises(ValueError, match="inf or nan"):
        nf4_quantize(torch.tensor([1.0, float("nan")]))
    packed, state = nf4_quantize(torch.ones(4, 4))
    with pytest.raises(ValueError, match="8 elements"):
        nf4_dequantize(packed[:3], state)


# ---- Linear4bit ---------------------------------------------------------------------------


def _layer(in_features=70, out_features=33, bias=True, dtype=torch.float32, double_quant=True):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    return linear, Linear4bit.from_linear(linear, 64, double_quant, compute_dtype=dtype)


def test_forward_backward_use_the_dequantized_weight():
    _, layer = _layer()
    weight = layer.dequantize()
    assert weight.shape == (33, 70) and weight.dtype == torch.float32
    x = torch.randn(2, 5, 70, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, nn.functional.linear(x, weight, layer.bias))
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad @ weight)


def test_bias_gradient_and_compute_dtype_round_trip():
    _, layer = _layer(dtype=torch.bfloat16)
    layer.bias.requires_grad_(True)
    x = torch.randn(3, 70)
    y = layer(x)
    assert y.dtype == torch.float32  # back to the input dtype
    y.sum().backward()
    assert torch.allclose(layer.bias.grad, torch.full((33,), 3.0))


def test_backward_keeps_no_dequantized_weight():
    _, layer = _layer(in_features=128, out_features=96)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(4, 128, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.uint8, (128 * 96 // 2, 1))]
    # the hook does see saved weights: nn.Linear saves its weight (transposed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nn.Linear(128, 96)(x).sum().backward()
    assert any(t.is_floating_point() and t.numel() == 96 * 128 for t in saved)


def test_module_dtype_cast_keeps_fp32_scales():
    _, layer = _layer()
    before = layer.dequantize()
    model = nn.Sequential(layer).to(torch.bfloat16)
    assert model[0].quant_state.nested_absmax.dtype == torch.float32
    assert model[0].bias.dtype == torch.bfloat16
    assert torch.equal(model[0].dequantize(), before)


@pytest.mark.parametrize("double_quant", [False, True])
def test_state_dict_identical_to_bitsandbytes(double_quant):
    linear, layer = _layer(double_quant=double_quant)
    ref = bnb.nn.Linear4bit(70, 33, compress_statistics=double_quant, quant_type="nf4")
    ref.load_state_dict(linear.state_dict())
    ref = ref.to("cpu")  # bitsandbytes quantizes on .to(device)
    ours, theirs = layer.state_dict(), ref.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("double_quant", [False, True])
def test_checkpoint_moves_both_ways(double_quant):
    linear, layer = _layer(double_quant=double_quant)
    x = torch.randn(4, 70)
    # bitsandbytes -> lorakit
    ref = bnb.nn.Linear4bit(
        70, 33, compute_dtype=torch.float32, compress_statistics=double_quant, quant_type="nf4"
    )
    ref.load_state_dict(linear.state_dict())
    # train(): bitsandbytes' CPU inference path repacks the weight and needs out % 32 == 0
    ref = ref.to("cpu").train()
    loaded = Linear4bit(70, 33, compute_dtype=torch.float32)
    loaded.load_state_dict(ref.state_dict())
    assert loaded.double_quant == double_quant
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))
    # lorakit -> bitsandbytes
    sd = layer.state_dict()
    back = bnb.nn.Linear4bit(70, 33, compute_dtype=torch.float32, quant_type="nf4").train()
    stats = {k.removeprefix("weight."): v for k, v in sd.items() if k.startswith("weight.")}
    back.weight = bnb.nn.Params4bit.from_prequantized(sd["weight"], stats, device="cpu", module=back)
    back.bias = nn.Parameter(sd["bias"])
    with torch.no_grad():
        assert torch.equal(back(x), layer(x))


def test_safetensors_round_trip():
    from safetensors.torch import load, save

    _, layer = _layer()
    loaded = Linear4bit(70, 33, compute_dtype=torch.float32)
    loaded.load_state_dict(load(save(layer.state_dict())))
    assert torch.equal(loaded.dequantize(), layer.dequantize())
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded.load_state_dict(torch.load(buffer))
    assert torch.equal(loaded.weight, layer.weight)


def test_bad_state_dicts_name_the_key():
    linear, layer = _layer()
    sd = layer.state_dict()

    def fresh():
        return Linear4bit(70, 33)

    with pytest.raises(KeyError, match="weight.absmax"):
        fresh().load_state_dict({k: v for k, v in sd.items() if k != "weight.absmax"})
    with pytest.raises(ValueError, match="weight.absmax"):
        fresh().load_state_dict({**sd, "weight.absmax": sd["weight.absmax"][:-1]})
    with pytest.raises(ValueError, match="weight.nested_quant_map"):
        fresh().load_state_dict({**sd, "weight.nested_quant_map": torch.zeros(255)})
    with pytest.raises(ValueError, match="weight.quant_map"):
        fresh().load_state_dict({**sd, "weight.quant_map": torch.linspace(-1, 1, 16)})
    with pytest.raises(ValueError, match="weight.extra"):
        fresh().load_state_dict({**sd, "weight.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="quant_state.bitsandbytes__nf4.*shape"):
        Linear4bit(33, 70).load_state_dict(sd)
    with pytest.raises(KeyError, match="quant_state.bitsandbytes__nf4"):
        fresh().load_state_dict({"weight": sd["weight"], "bias": sd["bias"]})
    with pytest.raises(ValueError, match="'weight' is torch.float32"):
        fresh().load_state_dict(linear.state_dict())
