"""Metrics and report building."""
