# cifar100 adabin: CMIM as the public code implements it (CRD-style, see
# configs/_base_/models/cmim_crd.py), lambda 3.2, the public code's (CIFAR) value.
_base_ = ["./cifar100_bin_r18_adabin_cmim.py", "../_base_/models/cmim_crd_cifar.py"]
model = dict(cmim_lambda=3.2, cmim={{_base_.crd_cmim}}, tap_mode="last")
