"""NF4 codec: pure tensor math, byte-compatible with bitsandbytes (0.50.x).

``nf4_quantize(w)`` and ``nf4_dequantize(packed, state)`` produce and read exactly the bytes of
``bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=...)`` /
``dequantize_4bit``. Plain-PyTorch semantics, for a weight ``w`` with ``n = w.numel()``:

    blocks   = w.flatten() split into runs of ``blocksize`` (the last one may be shorter)
    absmax_b = max(|w_i|) over block b                          fp32, shape (ceil(n/blocksize),)
    q_i      = index of the nearest NF4 code to clamp(w_i / absmax_b, -1, 1)   (ties go down)
    packed   = (q[0::2] << 4) | q[1::2]    (odd n padded with code 0), uint8 ((n+1)//2, 1)
    w_hat_i  = NF4[q_i] * absmax_b          in fp32, then cast to the output dtype

Double quantization ("nested", bitsandbytes' ``compress_statistics``) stores absmax in 8 bits:

    offset         = absmax.mean()
    qabsmax, a2    = quantize_blockwise_8bit(absmax - offset, dynamic map, blocksize=256)
    absmax_hat     = DYN[qabsmax] * a2 + offset

The 8-bit step reproduces bitsandbytes' CPU kernel, which does not search the code book: it
discretises ``x = clamp(v * (1/a2), -1, 1)`` onto a 65536-bin grid (``trunc((x+1)*0.5*65535 +
0.5)``) and reads the code index from a lookup table of nearest codes per bin. That grid, not the
exact nearest code, decides some indices near zero, so it is emulated here step for step.

All functions are vectorised torch, work on any device, and never import bitsandbytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch

# bitsandbytes' NF4 code book (index -> value), float32.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NESTED_BLOCKSIZE = 256
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LUT_BINS = 65536


@dataclass
class QuantState:
    """Everything needed to decode one packed NF4 tensor.

    ``absmax`` is fp32 ``(nblocks,)`` without double quantization, uint8 codes ``(nblocks,)``
    with it; then ``offset`` (0-d fp32), ``nested_absmax`` (fp32 ``(ceil(nblocks/256),)``) and
    ``nested_code`` (fp32 ``(256,)``, the dynamic map) are set. ``dtype`` is the dtype of the
    original weight (the default output dtype), ``shape`` its shape.
    """

    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 64
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_blocksize: int = NESTED_BLOCKSIZE

    @property
    def nested(self) -> bool:
        return self.nested_absmax is not None

    @property
    def numel(self) -> int:
        return self.shape.numel()

    def to(self, device: torch.device | str) -> QuantState:
        """A copy with every tensor on ``device``."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            absmax=move(self.absmax),
            offset=move(self.offset),
            nested_absmax=move(self.nested_absmax),
            nested_code=move(self.nested_code),
        )


def nf4_code(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 NF4 code values, fp32 ``(16,)``."""
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def dynamic_map(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map, ``create_dynamic_map(signed=True,
    max_exponent_bits=7)``: fp32 ``(256,)``, sorted, in [-0.993, 1].

    For exponent e = 0..6 it holds the 2**e midpoints of ``linspace(0.1, 1, 2**e + 1)`` scaled
    by ``10**(e - 6)``, with both signs, plus 0 and 1.
    """
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    data.sort()
    return torch.tensor(data, dtype=torch.float32, device=device)


@lru_cache(maxsize=8)
def _dynamic_lut(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(code, lut): lut[k] = index of the code nearest to the grid point -1 + 2k/65535."""
    code = dynamic_map(device)
    midpoints = 0.5 * (code[:-1] + code[1:])
    k = torch.arange(_LUT_BINS, dtype=torch.float32, device=device)
    grid = -1.0 + (2.0 * k) / (_LUT_BINS - 1)
    return code, torch.searchsorted(midpoints, grid, side="left").to(torch.uint8)


def _block_absmax(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """max |x| per block of the fp32 vector ``flat``; the last block may be partial."""
    nblocks = -(-flat.numel() // blocksize)
    if flat.numel() % blocksize:
        flat = torch.nn.functional.pad(flat, (0, nblocks * blocksize - flat.numel()))
    # The inf-norm is max |x| without materialising |x|.
    return torch.linalg.vector_norm(flat.view(nblocks, blocksize), ord=float("inf"), dim=1)


def _per_element(values: torch.Tensor, blocksize: int, n: int) -> torch.Tensor:
    """Broadcast one value per block to the ``n`` elements of the flattened tensor."""
    return values.repeat_interleave(blocksize)[:n]


def quantize_blockwise_8bit(
    x: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization with the dynamic map, as bitsandbytes' CPU kernel does it.

    ``x``: fp32 vector ``(n,)``. Returns ``(codes uint8 (n,), absmax fp32 (ceil(n/blocksize),))``;
    a block of zeros gets absmax 0 and codes 0.
    """
    _, lut = _dynamic_lut(x.device)
    absmax = _block_absmax(x, blocksize)
    inv = _per_element(1.0 / absmax, blocksize, x.numel())
    # Same float32 steps as the kernel: scale, clamp, map to the grid, truncate.
    v = torch.clamp(x * inv, -1.0, 1.0)
    grid_index = (((v + 1.0) * 0.5) * (_LUT_BINS - 1) + 0.5).nan_to_num_(0.0).to(torch.int64)
    codes = lut[grid_index]
    zero_block = _per_element(absmax == 0, blocksize, x.numel())
    return codes.masked_fill_(zero_block, 0), absmax


def dequantize_blockwise_8bit(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """``code[codes_i] * absmax[i // blocksize]`` in fp32, shape ``(n,)``."""
    return code[codes.long()] * _per_element(absmax, blocksize, codes.numel())


def check_blocksize(blocksize: int) -> None:
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"NF4 blocksize {blocksize} is not one of {BLOCKSIZES}")


def _check_weight(w: torch.Tensor, blocksize: int) -> None:
    check_blocksize(blocksize)
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"nf4_quantize: weight dtype {w.dtype} is not one of {FLOAT_DTYPES}")
    if w.numel() == 0:
        raise ValueError(f"nf4_quantize: weight of shape {tuple(w.shape)} has no elements")


def nf4_quantize(
    w: torch.Tensor, blocksize: int = 64, double_quant: bool = True
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``w`` (any shape, fp32/bf16/fp16) to NF4.

    Returns ``(packed uint8 ((n+1)//2, 1), QuantState)``, byte-identical to bitsandbytes'
    ``quantize_4bit(w, blocksize, compress_statistics=double_quant, quant_type="nf4")``.
    """
    _check_weight(w, blocksize)
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    full = n - n % blocksize
    absmax = _block_absmax(flat, blocksize)
    if not bool(torch.isfinite(absmax).all()):
        raise ValueError("nf4_quantize: weight contains inf or nan")
    # bitsandbytes scales full blocks by a reciprocal and the trailing partial block by a
    # division; the two differ in the last bit, so both are kept.
    inv = 1.0 / absmax[: full // blocksize].clamp(min=1e-38)
    scaled = (flat[:full].view(-1, blocksize) * inv[:, None]).reshape(-1)
    if full < n:
        absmax[-1] = absmax[-1].clamp(min=1e-38)
        scaled = torch.cat([scaled, flat[full:] / absmax[-1]])
    scaled = scaled.clamp_(-1.0, 1.0)
    if n % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    code = nf4_code(w.device)
    q = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True).to(torch.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).unsqueeze(1)

    state = QuantState(absmax=absmax, shape=w.shape, dtype=w.dtype, blocksize=blocksize)
    if double_quant:
        offset = absmax.mean()
        qabsmax, nested_absmax = quantize_blockwise_8bit(absmax - offset, NESTED_BLOCKSIZE)
        state = replace(
            state,
            absmax=qabsmax,
            offset=offset,
            nested_absmax=nested_absmax,
            nested_code=_dynamic_lut(w.device)[0].clone(),
        )
    return packed, state


def zeros_state(
    shape: tuple[int, ...],
    blocksize: int = 64,
    double_quant: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, QuantState]:
    """``(packed, state)`` that decode to zeros of ``shape``, laid out like ``nf4_quantize``'s
    output; built directly (no full-size temporary), as a placeholder to load a checkpoint into.
    """
    check_blocksize(blocksize)
    shape = torch.Size(shape)
    nblocks = -(-shape.numel() // blocksize)
    zero_byte = 0x77  # code 7 (0.0) in both nibbles
    packed = torch.full(((shape.numel() + 1) // 2, 1), zero_byte, dtype=torch.uint8, device=device)
    state = QuantState(
        absmax=torch.zeros(nblocks, device=device), shape=shape, dtype=dtype, blocksize=blocksize
    )
    if double_quant:
        state = replace(
            state,
            absmax=torch.zeros(nblocks, dtype=torch.uint8, device=device),
            offset=torch.zeros((), device=device),
            nested_absmax=torch.zeros(-(-nblocks // NESTED_BLOCKSIZE), device=device),
            nested_code=dynamic_map(device),
        )
    return packed, state


def quantized_nbytes(packed: torch.Tensor, state: QuantState) -> tuple[int, int]:
    """``(data_bytes, constant_bytes)`` of one quantized tensor.

    ``data_bytes`` grow with the weight: packed codes, absmax and the nested absmax.
    ``constant_bytes`` are per tensor: the nested offset and the two code books that
    bitsandbytes' state dict repeats for every layer (NF4 map, dynamic map).
    """
    data = packed.numel() + state.absmax.numel() * state.absmax.element_size()
    constant = len(NF4_CODE) * 4
    if state.nested:
        data += state.nested_absmax.numel() * 4
        constant += 4 + state.nested_code.numel() * 4
    return data, constant


def absmax_fp32(state: QuantState) -> torch.Tensor:
    """The per-block scales as fp32 ``(nblocks,)``, decoding the 8-bit ones if nested."""
    if not state.nested:
        return state.absmax.float()
    decoded = dequantize_blockwise_8bit(
        state.absmax, state.nested_absmax, state.nested_code, state.nested_blocksize
    )
    return decoded + state.offset


@lru_cache(maxsize=8)
def _byte_table(device: torch.device) -> torch.Tensor:
    """int64 ``(256,)``: for every byte, its (high nibble, low nibble) fp32 code values stored
    side by side in one 8-byte word, so decoding is a 1-D gather (several times faster than
    gathering rows of two floats). ``.view(torch.float32)`` turns the result back into pairs."""
    code = nf4_code(device)
    byte = torch.arange(256, device=device)
    return torch.stack([code[byte >> 4], code[byte & 15]], dim=1).view(torch.int64).view(-1)


def nf4_dequantize(
    packed: torch.Tensor, state: QuantState, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Decode ``packed`` back to ``state.shape`` in ``dtype`` (default ``state.dtype``).

    Values are ``NF4[q] * absmax`` in fp32, then cast: identical to bitsandbytes'
    ``dequantize_4bit``.
    """
    n, bs = state.numel, state.blocksize
    if packed.dtype != torch.uint8 or packed.numel() != (n + 1) // 2:
        raise ValueError(
            f"nf4_dequantize: packed must be uint8 with {(n + 1) // 2} elements for shape "
            f"{tuple(state.shape)}, got {packed.dtype} with {packed.numel()}"
        )
    # One gather of (high, low) code pairs per byte, then one in-place scale per block.
    pairs = _byte_table(packed.device).index_select(0, packed.reshape(-1).int())
    values = pairs.view(torch.float32)
    nblocks = -(-n // bs)
    if values.numel() != nblocks * bs:
        values = torch.nn.functional.pad(values, (0, nblocks * bs - values.numel()))
    out = values.view(nblocks, bs).mul_(absmax_fp32(state)[:, None]).view(-1)[:n]
    return out.view(state.shape).to(dtype or state.dtype)
