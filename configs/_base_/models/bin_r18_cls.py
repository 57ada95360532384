# Binary ResNet-18 classifier with the CMIM loss (lambda = 0: the plain baseline).
model = dict(
    type="BinaryImageClassifier",
    data_preprocessor=dict(type="BaseDataPreprocessor"),
    backbone=dict(type="BinaryResNet", depth=18, binarizer="irnet", block="basic", stem="imagenet"),
    num_classes=1000,
    cmim_lambda=0.0,
    # z_norm: CRD's constant normalisation (the public CMIM code), which keeps the Eq. 13 sum
    # over 16384 negatives O(1); without it the loss is ~1e4 and swamps the CE term.
    cmim=dict(
        type="CMIMLoss", critic="embed", tau=0.1, beta=2.0, n_nce=16384, embed_dim=128, z_norm=True
    ),
    tap_mode="stage",
    tap_pool=4,
)
