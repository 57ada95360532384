# The public CMIM code's recipe (CRD-style), as far as it goes without a second network: a linear
# embedding with L2 normalisation of both sides (the 'embed' critic), CRD's normalisation
# constant, a momentum memory of 4096 negatives (momentum 0.5, nce_t 0.1) drawn from other
# classes only, on one pair: the latent and binary activations of the last binary conv. With a
# float teacher (model.teacher=dict(arch=..., checkpoint=...) and model.cmim_source='teacher')
# the pair is the teacher's and the BNN's pooled last feature, as in the public code.
# beta = 1: the single pair weighs 1, so lambda means the public code's lambda. num_data (the
# training set size, the memory's rows) is set by cmim_crd_cifar.py / cmim_crd_imagenet.py.
crd_cmim = dict(
    type="CMIMLoss",
    critic="embed",
    tau=0.1,
    beta=1.0,
    n_nce=4096,
    embed_dim=128,
    bank="momentum",
    momentum=0.5,
    z_norm=True,
    negatives="class",
)
