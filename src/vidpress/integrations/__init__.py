"""Integrations with evaluation frameworks (lmms-eval)."""
