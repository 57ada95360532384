# The public code's CMIM recipe with a memory of the 1,281,167 ImageNet training images.
_base_ = ["./cmim_crd.py"]
crd_cmim = dict(num_data=1281167)
