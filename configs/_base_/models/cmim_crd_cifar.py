# The public code's CMIM recipe with a memory of the 50,000 CIFAR training images.
_base_ = ["./cmim_crd.py"]
crd_cmim = dict(num_data=50000)
