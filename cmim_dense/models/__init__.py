"""Models: binary ResNet backbones, the pretraining classifier, the dense multi-task model."""
