"""Integrations with training frameworks: ``biaslint.integrations.lightning.BiaslintCallback``
and ``biaslint.integrations.transformers.BiaslintCallback`` (Hugging Face's ``Trainer``); what
they share is in ``biaslint.integrations.common``.

Each integration is its own module and imports its framework only when imported itself.
"""
