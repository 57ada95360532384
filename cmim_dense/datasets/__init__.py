"""Datasets: NYUD-v2 (real and synthetic, official format) and classification sets."""
