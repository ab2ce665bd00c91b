"""Backbones and the classifier head (backbones), the EfficientNet-Lite port (efficientnet_lite)
with its torch-free weights reader (torch_legacy), data pipelines (data), training (training) and
prediction (predict). The only TensorFlow-heavy code besides the train and infer stages."""
