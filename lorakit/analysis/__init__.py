"""The LoRA paper's section-7 analysis: what an adapter learned, from its files alone.

Pure tensor functions (``spectra``, ``subspace``, ``amplification``) plus a reader for PEFT
adapter directories (``factors``) and the ``lorakit inspect`` command (``cli``).
"""

from lorakit.analysis.amplification import Amplification, amplification, random_projection_norm
from lorakit.analysis.factors import AdapterLayer, read_adapter
from lorakit.analysis.report import compare_layers, describe_layer, inspect_layers
from lorakit.analysis.spectra import (energy_rank, entropy_effective_rank, factored_svd,
                                      numerical_rank, singular_basis)
from lorakit.analysis.subspace import random_similarity, similarity_grid, subspace_similarity

__all__ = [
    "AdapterLayer",
    "Amplification",
    "amplification",
    "compare_layers",
    "describe_layer",
    "energy_rank",
    "entropy_effective_rank",
    "factored_svd",
    "inspect_layers",
    "numerical_rank",
    "random_projection_norm",
    "random_similarity",
    "read_adapter",
    "similarity_grid",
    "singular_basis",
    "subspace_similarity",
]
