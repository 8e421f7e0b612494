"""bitsandbytes' state-dict layout for a 4-bit weight, both directions (pure, no modules).

A ``bnb.nn.Linear4bit`` writes, under ``<prefix>weight``:

    weight                                    packed uint8 ((n+1)//2, 1)
    weight.absmax                             fp32 (nblocks,), or uint8 codes when nested
    weight.quant_map                          fp32 (16,), the NF4 code book
    weight.nested_absmax                      nested only: fp32 (ceil(nblocks/256),)
    weight.nested_quant_map                   nested only: fp32 (256,), the dynamic map
    weight.quant_state.bitsandbytes__nf4      uint8 tensor holding UTF-8 JSON: quant_type,
                                              blocksize, dtype, shape and, nested only,
                                              nested_blocksize, nested_dtype, nested_offset
"""

from __future__ import annotations

import json

import torch

from lorakit.errors import NotFoundError
from lorakit.quant.nf4 import BLOCKSIZES, FLOAT_DTYPES, QuantState, nf4_code

JSON_KEY = "quant_state.bitsandbytes__nf4"
TENSOR_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
NESTED_JSON_FIELDS = ("nested_blocksize", "nested_dtype", "nested_offset")


def quant_state_to_dict(state: QuantState) -> dict[str, torch.Tensor]:
    """The ``weight.*`` entries (keys without the ``weight.`` prefix) for ``state``."""
    meta = {
        "quant_type": "nf4",
        "blocksize": state.blocksize,
        "dtype": str(state.dtype).removeprefix("torch."),
        "shape": list(state.shape),
    }
    out = {"absmax": state.absmax, "quant_map": nf4_code(state.absmax.device)}
    if state.nested:
        out["nested_absmax"] = state.nested_absmax
        out["nested_quant_map"] = state.nested_code
        meta.update(
            nested_blocksize=state.nested_blocksize,
            nested_dtype="float32",
            nested_offset=state.offset.item(),
        )
    out[JSON_KEY] = torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)
    return out


def _dtype(name: str, key: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{key}: dtype {name!r} is not one of {FLOAT_DTYPES}")
    return dtype


def _tensor(entries: dict[str, torch.Tensor], name: str, prefix: str) -> torch.Tensor:
    if name not in entries:
        raise NotFoundError(f"missing quant-state key {prefix + name!r}")
    return entries[name]


def _expect(ok: bool, key: str, what: str, got: object) -> None:
    if not ok:
        raise ValueError(f"inconsistent quant-state key {key!r}: expected {what}, got {got}")


def _check_tensor(
    entries: dict[str, torch.Tensor], name: str, prefix: str, shape: tuple, dtype: torch.dtype
) -> torch.Tensor:
    t = _tensor(entries, name, prefix)
    _expect(
        t.shape == shape and t.dtype == dtype,
        prefix + name,
        f"{dtype} of shape {shape}",
        f"{t.dtype} of shape {tuple(t.shape)}",
    )
    return t


def _read_json(entries: dict[str, torch.Tensor], prefix: str) -> dict:
    key = prefix + JSON_KEY
    raw = _tensor(entries, JSON_KEY, prefix)
    try:
        meta = json.loads(bytes(raw.to(torch.uint8).cpu().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{key!r} is not UTF-8 JSON: {err}") from err
    nested = "nested_offset" in meta
    required = ["quant_type", "blocksize", "dtype", "shape"]
    if nested:
        required += NESTED_JSON_FIELDS
    for field in required:
        if field not in meta:
            raise NotFoundError(f"{key!r} lacks the field {field!r}")
    _expect(meta["quant_type"] == "nf4", key, "quant_type 'nf4'", meta["quant_type"])
    _expect(meta["blocksize"] in BLOCKSIZES, key, f"blocksize in {BLOCKSIZES}", meta["blocksize"])
    if nested:
        nested_dtype = meta["nested_dtype"]
        _expect(nested_dtype == "float32", key, "nested_dtype 'float32'", nested_dtype)
    return meta


def quant_state_from_dict(entries: dict[str, torch.Tensor], prefix: str = "weight.") -> QuantState:
    """Parse and validate the ``weight.*`` entries (keys without ``prefix``) into a QuantState.

    Raises ``KeyError`` for a missing key and ``ValueError`` for an inconsistent or unknown
    one; both name the full key (``prefix`` + name).
    """
    unknown = sorted(set(entries) - {*TENSOR_KEYS, JSON_KEY})
    if unknown:
        raise ValueError(
            f"unknown quant-state key {prefix + unknown[0]!r}; known: {[*TENSOR_KEYS, JSON_KEY]}"
        )
    meta = _read_json(entries, prefix)
    quant_map = _tensor(entries, "quant_map", prefix)
    _expect(
        quant_map.shape == (16,) and torch.equal(quant_map.float().cpu(), nf4_code()),
        prefix + "quant_map",
        "the 16 NF4 code values",
        quant_map,
    )
    shape, blocksize = torch.Size(meta["shape"]), meta["blocksize"]
    nblocks = -(-shape.numel() // blocksize)
    dtype = _dtype(meta["dtype"], prefix + JSON_KEY)
    if "nested_offset" not in meta:
        for name in ("nested_absmax", "nested_quant_map"):
            _expect(name not in entries, prefix + name, "no tensor (no nested_offset)", "one")
        absmax = _check_tensor(entries, "absmax", prefix, (nblocks,), torch.float32)
        return QuantState(absmax=absmax, shape=shape, dtype=dtype, blocksize=blocksize)

    nested_blocksize = meta["nested_blocksize"]
    absmax = _check_tensor(entries, "absmax", prefix, (nblocks,), torch.uint8)
    nested_shape = (-(-nblocks // nested_blocksize),)
    offset = torch.tensor(float(meta["nested_offset"]), dtype=torch.float32, device=absmax.device)
    return QuantState(
        absmax=absmax,
        shape=shape,
        dtype=dtype,
        blocksize=blocksize,
        offset=offset,
        nested_absmax=_check_tensor(entries, "nested_absmax", prefix, nested_shape, torch.float32),
        nested_code=_check_tensor(entries, "nested_quant_map", prefix, (256,), torch.float32),
        nested_blocksize=nested_blocksize,
    )
