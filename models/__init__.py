"""Backbones and the classifier head (backbones), the EfficientNet-Lite port (efficientnet_lite)
with its torch-free weights reader (torch_legacy), decoding and caching pixels (data), a split's
images ready for a model (split_images), training (training), prediction tables (predict, by the
schema in tables/predictions.py), and a quiet TensorFlow import (quiet). Used only by the train
and infer stages; TensorFlow is imported by backbones, efficientnet_lite and training, and lazily
elsewhere."""
