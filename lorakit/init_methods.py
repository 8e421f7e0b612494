"""Inits that start the adapter from the base weight: PiSSA, OLoRA and LoftQ (registered names
for ``init_lora_weights``).

Each splits the base weight ``W`` (``[out, in]``) into a part the adapter holds and a residual
the base keeps, so the adapted model starts exactly (PiSSA, OLoRA) or approximately (LoftQ) at
the original model:

    pissa            W = W_res + s*B@A, B@A = the top-r singular triplets of W / s
                     (B = U_r sqrt(S_r/s), A = sqrt(S_r/s) V_r^T)           PEFT's layout
    pissa_niter_N    the same from torch.svd_lowrank with N subspace iterations
    olora            W = W_res + s*B@A, B = Q[:, :r], A = R[:r] from W = QR  (PEFT's rule)
    loftq            W ~ Q + s*B@A with Q an NF4 tensor: alternate Q = NF4(W - s*B@A) and
                     s*B@A = rank-r SVD of W - Q; the base becomes a 4-bit ``Linear4bit`` (Q)
    loftq_iter_N     the same with N alternations (``loftq`` is 1, PEFT's default)

These inits rewrite the base, so they also run when such an adapter is loaded (as in PEFT):
the base gets the same residual again and the saved factors replace A/B. ``pissa_niter_N`` is
seeded so that this is reproducible in lorakit. For an adapter that applies to the untouched
base, save it with ``lorakit.save_converted_adapter``. Linear layers only.

Differences from PEFT: LoftQ folds the scaling into the factors (s*B@A is the fitted low-rank
part for any ``lora_alpha``; PEFT sets B@A to it, right only when s == 1), runs on CPU with
lorakit's own NF4 codec, and leaves a 4-bit base behind; OLoRA honours ``fan_in_fan_out``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import NotFoundError
from lorakit.formats import peft
from lorakit.inits import register_init
from lorakit.inject import adapter_configs
from lorakit.io import adapter_state_dict
from lorakit.quant.linear4bit import Linear4bit
from lorakit.quant.nf4 import nf4_dequantize, nf4_quantize

_SVD_SEED = 0


# ---- pure tensor math --------------------------------------------------------------------------
def pissa_factors(weight: torch.Tensor, r: int, scaling: float, niter: int | None = None):
    """``(A [r, in], B [out, r])`` with ``s*B@A`` the best rank-r part of ``weight`` (fp32).

    ``niter=None``: exact SVD; otherwise ``torch.svd_lowrank(weight, r, niter)`` (seeded).
    """
    w = weight.float()
    if niter is None:
        u, s_vals, vh = torch.linalg.svd(w, full_matrices=False)
        u, s_vals, vh = u[:, :r], s_vals[:r], vh[:r]
    else:
        devices = [w.device] if w.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_SVD_SEED)
            u, s_vals, v = torch.svd_lowrank(w, q=r, niter=niter)
        vh = v.T
    root = torch.sqrt(s_vals / scaling)
    return root[:, None] * vh, u * root[None, :]


def olora_factors(weight: torch.Tensor, r: int):
    """``(A, B) = (R[:r], Q[:, :r])`` from the QR decomposition ``weight = Q R`` (fp32)."""
    q, rr = torch.linalg.qr(weight.float())
    return rr[:r].contiguous(), q[:, :r].contiguous()


def low_rank(matrix: torch.Tensor, r: int):
    """``(L [out, r], R [r, in])`` with ``L @ R`` the best rank-r approximation (SVD)."""
    u, s_vals, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = torch.sqrt(s_vals[:r])
    return u[:, :r] * root[None, :], root[:, None] * vh[:r]


def loftq_decompose(weight: torch.Tensor, r: int, scaling: float, num_iter: int = 1,
                    blocksize: int = 64, double_quant: bool = True):
    """LoftQ (Li et al., 2023): ``weight ~ dequant(packed) + s*B@A``.

    Returns ``(packed, quant_state, A [r, in], B [out, r])``; ``packed``/``quant_state`` are
    lorakit's NF4 encoding (``nf4_quantize``) of the last quantized residual.
    """
    if num_iter < 1:
        raise ValueError(f"LoftQ needs at least one iteration, got {num_iter}")
    w = weight.float()
    target = w
    for step in range(num_iter):
        packed, state = nf4_quantize(target, blocksize, double_quant)
        q = nf4_dequantize(packed, state, torch.float32)
        left, right = low_rank(w - q, r)
        if step + 1 < num_iter:
            target = w - left @ right
    root = scaling ** -0.5
    return packed, state, right * root, left * root


# ---- layer surgery -----------------------------------------------------------------------------
def _float_weight(layer, init_name: str) -> torch.Tensor:
    """The base weight as fp32 ``[out, in]``; refuses layers these inits do not apply to."""
    base = layer.base_layer
    if not hasattr(layer, "fan_in_fan_out"):
        raise ValueError(f"{layer.module_name}: init {init_name!r} applies to linear layers only, "
                         f"not {type(base).__name__}")
    if hasattr(base, "dequantize"):
        raise TypeError(f"{layer.module_name}: init {init_name!r} needs the full-precision weight; "
                        "add the adapter to the unquantized model (LoftQ quantizes the base itself)")
    w = base.weight.detach().float()
    return w.T if layer.fan_in_fan_out else w


def _write_base(layer, weight: torch.Tensor) -> None:
    """Store ``weight`` (fp32 ``[out, in]``) into the base weight, in its own layout and dtype."""
    param = layer.base_layer.weight
    new = weight.T if layer.fan_in_fan_out else weight
    param.data.copy_(new.to(param.dtype))


def _write_factors(layer, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    fa, fb = layer.adapter_factors(name)
    with torch.no_grad():
        fa.copy_(a.to(fa.dtype))
        fb.copy_(b.to(fb.dtype))


def _residualise(layer, name: str, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> None:
    _write_factors(layer, name, a, b)
    _write_base(layer, w - layer.scaling[name] * (b @ a))


def _count(layer, init: str, prefix: str, default: int | None) -> int | None:
    """N of ``<prefix>N`` (``default`` for the bare name); errors name the layer and init."""
    if not init.startswith(prefix):
        return default
    tail = init[len(prefix):]
    if not tail.isdigit():
        raise ValueError(f"{layer.module_name}: init {init!r} must be {prefix}<non-negative integer>")
    return int(tail)


@torch.no_grad()
def _pissa(layer, name: str, config) -> None:
    init = config.init_lora_weights
    niter = _count(layer, init, "pissa_niter_", None)
    w = _float_weight(layer, init)
    a, b = pissa_factors(w, layer.r[name], layer.scaling[name], niter)
    _residualise(layer, name, a, b, w)


@torch.no_grad()
def _olora(layer, name: str, config) -> None:
    w = _float_weight(layer, "olora")
    a, b = olora_factors(w, layer.r[name])
    _residualise(layer, name, a, b, w)


@torch.no_grad()
def _loftq(layer, name: str, config) -> None:
    init = config.init_lora_weights
    num_iter = _count(layer, init, "loftq_iter_", 1)
    w = _float_weight(layer, init)
    if layer.fan_in_fan_out:
        raise ValueError(f"{layer.module_name}: LoftQ needs an nn.Linear base (the 4-bit base is "
                         "an nn.Linear replacement)")
    packed, state, a, b = loftq_decompose(w, layer.r[name], layer.scaling[name], num_iter)
    _write_factors(layer, name, a, b)
    layer.base_layer = _quantized_base(layer.base_layer, packed, state)


def _quantized_base(linear: nn.Linear, packed: torch.Tensor, state) -> Linear4bit:
    """A ``Linear4bit`` holding ``packed`` (lorakit.quant's defaults), computing in the
    original weight's dtype."""
    dtype = linear.weight.dtype
    quant = Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       compute_dtype=dtype, blocksize=state.blocksize, double_quant=state.nested,
                       device=packed.device)
    quant.weight, quant.quant_state = packed, state
    if linear.bias is not None:
        quant.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return quant


for _fn in (_pissa, _olora, _loftq):
    _fn.rewrites_base = True  # read by LoraLayer.add: rerun when loading
register_init("pissa", _pissa)
register_init("pissa_niter_", _pissa, prefix=True)
register_init("olora", _olora)
register_init("loftq", _loftq)
register_init("loftq_iter_", _loftq, prefix=True)


# ---- back to a plain LoRA adapter ----------------------------------------------------------------
_CONVERTIBLE = ("pissa", "olora")


def save_converted_adapter(model: nn.Module, directory: str | Path, initial, name: str = "default") -> Path:
    """Save adapter ``name`` (initialised with PiSSA/OLoRA, then trained) as a plain LoRA adapter
    for the original, untouched base (PEFT's ``path_initial_model_for_weight_conversion`` rule).

    With ``A0, B0`` the factors right after init and ``A, B`` the trained ones, the trained
    model is ``W_res + s*B@A = W + s*B@A - s*B0@A0``, and

        s*B@A - s*B0@A0 = s * [B | -B0] @ [A ; A0]

    so the saved adapter has rank ``2r`` and ``lora_alpha`` doubled (times sqrt(2) with rsLoRA)
    to keep ``s``; ``rank_pattern``/``alpha_pattern`` are adjusted alike and
    ``init_lora_weights`` becomes ``True``. ``initial``: a directory written by ``save_adapter``
    right after init, or a dict of PEFT key -> tensor (e.g. a clone of ``adapter_state_dict``).
    """
    config = adapter_configs(model).get(name)
    if config is None:
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(adapter_configs(model))}")
    init = str(config.init_lora_weights)
    if not init.startswith(_CONVERTIBLE):
        raise ValueError(f"adapter {name!r} has init_lora_weights={config.init_lora_weights!r}; "
                         f"only {_CONVERTIBLE} adapters are converted (the others leave W unchanged "
                         "or, for LoftQ, replace it by a quantized one)")
    if config.use_dora:
        raise ValueError(f"adapter {name!r} uses DoRA, whose magnitude depends on the base: it "
                         "cannot be converted to an adapter for the original base")
    start, source = _initial_tensors(initial)
    tensors = {}
    for key, param in adapter_state_dict(model, name).items():
        now = param.detach().cpu().float()
        suffix = peft.parse_key(key).suffix
        if suffix in ("lora_A.weight", "lora_B.weight") and key not in start:
            raise ValueError(f"{source}: missing initial tensor {key}")
        if suffix == "lora_A.weight":
            now = torch.cat([now, start[key].float()], dim=0)
        elif suffix == "lora_B.weight":
            now = torch.cat([now, -start[key].float()], dim=1)
        tensors[key] = now.to(param.dtype).contiguous()
    config = _doubled_config(config, model)
    return peft.write_adapter(directory, tensors, config.to_peft_dict(), config.rank_for)


def _initial_tensors(initial) -> tuple[dict, str]:
    if isinstance(initial, dict):
        return {k: v.detach().cpu() for k, v in initial.items()}, "initial adapter state"
    tensors, path = peft.read_weights(initial)
    return tensors, str(path)


def _doubled_config(config, model):
    factor = 2 ** 0.5 if config.use_rslora else 2.0
    return dataclasses.replace(
        config, r=2 * config.r, lora_alpha=config.lora_alpha * factor, init_lora_weights=True,
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: v * factor for k, v in config.alpha_pattern.items()},
        base_model_name_or_path=config.base_model_name_or_path
        or getattr(getattr(model, "config", None), "_name_or_path", None),
    )
