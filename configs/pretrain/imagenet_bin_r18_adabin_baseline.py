# The same recipe without CMIM (lambda = 0).
_base_ = ["./imagenet_bin_r18_adabin_cmim.py"]
model = dict(cmim_lambda=0.0)
