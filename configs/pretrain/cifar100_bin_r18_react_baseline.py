# The same recipe without CMIM (lambda = 0).
_base_ = ["./cifar100_bin_r18_react_cmim.py"]
model = dict(cmim_lambda=0.0)
