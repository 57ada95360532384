"""Offline NYUD-v2 tooling: the official .mat reader/writer, the converter to an mmseg tree, and
the synthetic scene generator. Nothing here is registered or used at training time."""
