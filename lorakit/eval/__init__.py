"""Evaluation: metrics (``metrics``), loss/perplexity and generation-based scoring of a model
with or without an adapter, and the ``lorakit eval`` command."""
