"""Where a model name points, decided before anything is loaded, and fast.

``resolve(name)`` returns what ``from_pretrained`` should open, checking in this order:

1. an embedded model name (``lorakit.models.EMBEDDED``) -> its converted local directory;
2. an existing local directory (it must hold a ``config.json``);
3. a name that looks like a path (``./x``, ``../x``, ``~/x``, ``/x``) and does not exist -> error;
4. a Hub id found in the local Hub cache -> that snapshot directory (no network);
   a bare name (no ``org/``) close to an embedded name -> error (a typo of it);
5. a Hub id not cached: with ``HF_HUB_OFFLINE=1`` an immediate error; otherwise one Hub
   lookup with a short timeout (no retries), so a typo or an unreachable Hub is answered in
   seconds instead of ``from_pretrained``'s minute of retries.

Every "not found" error lists the closest embedded names (``difflib``) and what to do.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

__all__ = ["ModelNotFound", "resolve"]

HUB_TIMEOUT_S = 5.0


class ModelNotFound(FileNotFoundError):
    """A model name that is no embedded model, no local directory and no reachable Hub id."""


def _suggestions(name: str) -> str:
    from lorakit.models import EMBEDDED, EMBEDDED_HUB_IDS

    candidates = {n: n for n in EMBEDDED}
    candidates.update({hub.lower(): n for n, hub in EMBEDDED_HUB_IDS.items()})
    close = difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.5)
    names = list(dict.fromkeys(candidates[c] for c in close))
    head = f"did you mean {', '.join(repr(n) for n in names)}? " if names else ""
    return (f"{head}embedded models: {', '.join(sorted(EMBEDDED))} (`lorakit models`); "
            "or give a local model directory or a Hub id")


def _close_embedded(name: str) -> bool:
    """A bare name (no ``org/``) this close to an embedded name is a typo of it."""
    from lorakit.models import EMBEDDED

    return bool(difflib.get_close_matches(name.lower(), list(EMBEDDED), n=1, cutoff=0.8))


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1


def _cached_snapshot(repo: str) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        return None
    return path if (Path(path) / "config.json").exists() else None


def _probe_hub(repo: str) -> None:
    """One Hub lookup (no retries): raises ``ModelNotFound`` unless ``repo`` exists there."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, HFValidationError):
        raise ModelNotFound(f"model {repo!r}: no such model on the Hugging Face Hub; "
                            f"{_suggestions(repo)}") from None
    except Exception as err:  # connection refused, DNS, timeout: the Hub cannot be reached
        raise ModelNotFound(f"model {repo!r}: not in the local Hub cache and the Hub cannot be "
                            f"reached ({type(err).__name__}: {err}); {_suggestions(repo)}") from None


def resolve(name: str) -> str:
    """The local directory (or reachable Hub id) ``name`` means; see the module docstring."""
    from huggingface_hub import constants

    from lorakit.models import EMBEDDED, embedded_model_dir
    from lorakit.paths import check_model_dir

    if name in EMBEDDED:
        return str(embedded_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():  # a local path wins over a Hub id (as in transformers)
        try:
            return str(check_model_dir(path))
        except ValueError as err:  # one message for an empty / non-model directory everywhere
            raise ModelNotFound(f"{err} (save one with model.save_pretrained)") from None
    if _looks_like_path(name):
        raise ModelNotFound(f"model path not found: {name}; {_suggestions(Path(name).name)}")
    cached = _cached_snapshot(name)
    if cached:
        return cached
    if "/" not in name and _close_embedded(name):
        raise ModelNotFound(f"unknown model {name!r}; {_suggestions(name)}")
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFound(f"model {name!r}: not an embedded model, a local directory or in the "
                            f"local Hub cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is "
                            f"set; {_suggestions(name)}")
    _probe_hub(name)
    return name
