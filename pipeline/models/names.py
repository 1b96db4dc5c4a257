"""Backbone names, kept free of heavy imports so that params validation stays fast."""

# Backbones built in their WSOL form (METHOD.md 1.3); every other name is a timm model.
WSOL_ARCHS = ("vgg16", "resnet50", "inception")
ALIASES = {"inception_v3": "inception"}
