"""Losses: CMIM and distillation."""
