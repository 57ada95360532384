"""Inference for users: segmentation and depth of their own images, in PyTorch or OpenVINO."""
