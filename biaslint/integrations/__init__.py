"""Integrations with training frameworks: ``biaslint.integrations.lightning.BiaslintCallback``.

Each integration is its own module and imports its framework only when imported itself.
"""
