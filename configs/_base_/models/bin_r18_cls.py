# Binary ResNet-18 classifier with the paper's CMIM loss (lambda = 0: the plain baseline).
# CMIM as in Sec. 3.2 of the paper: the parameter-free flip critic of Eq. 12 on the latent
# activation a_F (the tensor each binarizer takes the sign of) and a_B = sign(a_F) (Eq. 11) of the
# last binary conv of every stage (K = 4), read at 4x4 = 16 sampled positions per channel, and
# the layer weights of Eq. 14 as printed (the deepest layer weighs beta). Negatives: the other
# images of the batch. z_norm: the normalisation constant of the critic Eq. 10 builds on (CRD),
# measured once on the first batch, which keeps L_NCE O(1) so that lambda reads on the scale of
# the paper's Table 3. The paper's ImageNet memory bank: model.cmim.n_nce=16384 (raw a_F rows:
# 16384 x (64 + 128 + 256 + 512) x 16 floats, about 1 GiB).
model = dict(
    type="BinaryImageClassifier",
    data_preprocessor=dict(type="BaseDataPreprocessor"),
    backbone=dict(type="BinaryResNet", depth=18, binarizer="irnet", block="basic", stem="imagenet"),
    num_classes=1000,
    cmim_lambda=0.0,
    cmim=dict(type="CMIMLoss", critic="flip", tau=0.1, beta=2.0, n_nce=0, z_norm=True),
    cmim_source="taps",
    tap_mode="stage",
    tap_reduce="sample",
    tap_size=4,
)
