# CIFAR-100 from the python pickle batches in data/cifar100 (no download).
_base_ = ["./cifar10.py"]
data_root = "data/cifar100"
train_dataloader = dict(dataset=dict(data_root=data_root, num_classes=100))
val_dataloader = dict(dataset=dict(data_root=data_root, num_classes=100))
test_dataloader = val_dataloader
