# ImageNet in ImageFolder layout: data/imagenet/{train,val}/<wnid>/*.JPEG (no download).
dataset_type = "ImageFolderClassification"
data_root = "data/imagenet"
train_dataloader = dict(
    batch_size=64,  # per GPU; 4 GPUs give the paper's 256
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type=dataset_type, data_root=data_root, split="train", img_size=224),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type=dataset_type, data_root=data_root, split="val", img_size=224),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
