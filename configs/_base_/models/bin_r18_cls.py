# Binary ResNet-18 classifier with the paper's CMIM loss (lambda = 0: the plain baseline).
# CMIM as in Sec. 3.2 of the paper: the parameter-free flip critic of Eq. 12 on the latent
# activation a_F (the tensor each binarizer takes the sign of) and a_B = sign(a_F) (Eq. 11) of the
# last binary conv of every stage (K = 4), read at 4 x 4 = 16 sampled positions per channel;
# Eq. 10 with M = N + 1 and Eq. 13 summing the N = batch - 1 other images as negatives; the layer
# weights of Eq. 14 as printed (the deepest layer weighs beta). The paper's ImageNet memory bank:
# model.cmim.n_nce=16384 (raw a_F rows: 16384 x (64 + 128 + 256 + 512) x 16 floats, ~1 GiB).
# lambda: the literal loss is about N log 2 per layer at the start (the critic is unnormalised),
# so it is far smaller than the lambda of the paper's Table 3, which belongs to the public
# CRD-style code (configs *_cmim_crd.py). The *_cmim.py configs use 2.5e-5: the demo sweep's
# best lambda (1e-4 at batch 64) scaled by 64 / 256 for batch 256, since the loss grows with N;
# not validated at full scale here (see the README).
model = dict(
    type="BinaryImageClassifier",
    data_preprocessor=dict(type="BaseDataPreprocessor"),
    backbone=dict(type="BinaryResNet", depth=18, binarizer="irnet", block="basic", stem="imagenet"),
    num_classes=1000,
    cmim_lambda=0.0,
    cmim=dict(type="CMIMLoss", critic="flip", tau=0.1, beta=2.0, n_nce=0),
    cmim_source="taps",
    tap_mode="stage",
    tap_reduce="sample",
    tap_size=4,
)
