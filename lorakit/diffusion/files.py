"""Image-generator LoRA files: save, load (format detected from the keys) and convert.

    save_lora_weights(path, {"unet": unet, "text_encoder": te}, format="diffusers" | "kohya")
    load_lora_weights(path, {"unet": unet, "text_encoder": te}, name="style")
    convert_lora_file(src, dst, to="kohya", components={"unet": unet})

The key conventions live in ``lorakit.formats.diffusers`` and ``lorakit.formats.kohya``; both
go through the format-neutral ``LoraSet`` (``lorakit.diffusion.loraset``), so a conversion
copies tensors and alphas unchanged.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lorakit.diffusion.loraset import LoraSet, apply_lora_set, lora_set_from_models
from lorakit.formats import diffusers as diffusers_format
from lorakit.formats import kohya as kohya_format
from lorakit.formats.files import read_header

FORMATS = ("diffusers", "kohya")


def detect_format(path: str | Path) -> str:
    """``"diffusers"`` or ``"kohya"`` from the tensor names of a LoRA file (or directory)."""
    file = diffusers_format.weights_file(path) if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"LoRA file not found: {file}")
    keys, _ = read_header(file)
    if kohya_format.is_kohya_keys(keys):
        return "kohya"
    if diffusers_format.is_diffusers_keys(keys):
        return "diffusers"
    raise ValueError(f"{file}: neither a diffusers (lora_A/lora_B) nor a kohya (lora_down/lora_up) "
                     f"LoRA file; first keys: {keys[:3]}")


def read_lora_set(path: str | Path, components: dict[str, nn.Module]) -> LoraSet:
    """The LoraSet in a file of either format (kohya names resolved against ``components``)."""
    if detect_format(path) == "kohya":
        return kohya_format.read_kohya(path, components)
    return diffusers_format.read_diffusers(path)


def write_lora_set(path: str | Path, lora_set: LoraSet, format: str = "diffusers") -> Path:
    if format not in FORMATS:
        raise ValueError(f"unknown LoRA file format {format!r}; formats: {list(FORMATS)}")
    if format == "kohya":
        return kohya_format.write_kohya(path, lora_set)
    return diffusers_format.write_diffusers(path, lora_set)


def save_lora_weights(path: str | Path, components: dict[str, nn.Module], name: str = "default",
                      format: str = "diffusers") -> Path:
    """Write adapter ``name`` of every component that has it (``{"unet": unet, ...}``) as one
    diffusers (``pipe.load_lora_weights`` reads it) or kohya/A1111 file; returns the file."""
    return write_lora_set(path, lora_set_from_models(components, name), format)


def load_lora_weights(path: str | Path, components: dict[str, nn.Module], name: str = "default",
                      is_trainable: bool = False) -> None:
    """Add the LoRA in ``path`` (diffusers or kohya, detected) to the components as adapter
    ``name``; a key that fits no module raises naming it, and no component changes."""
    apply_lora_set(components, read_lora_set(path, components), name,
                   source=path, is_trainable=is_trainable)


def convert_lora_file(src: str | Path, dst: str | Path, to: str,
                      components: dict[str, nn.Module] | None = None) -> Path:
    """Rewrite ``src`` in format ``to``: tensors, dtypes and alphas unchanged. Reading a kohya
    file needs the ``components`` whose module names its keys spell."""
    if detect_format(src) == "kohya" and not components:
        raise ValueError(f"{src}: a kohya file's names need the model to resolve them; "
                         "pass components={'unet': unet, ...}")
    return write_lora_set(dst, read_lora_set(src, components or {}), to)


__all__ = ["FORMATS", "convert_lora_file", "detect_format", "load_lora_weights", "read_lora_set",
           "save_lora_weights", "write_lora_set"]
