"""Encoder adapters: output shape and stride, parity with each library's own forward."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from tapct_eval import extract_features
from tapct_eval._backbone import backbone_forward
from tapct_eval.encoders import (
    BackboneEncoder,
    Encoder,
    EncoderSpec,
    MonaiEncoder,
    Preprocessing,
    TimmSliceEncoder,
    as_encoder,
    create_encoder,
    hu_window,
    parse_encoder_spec,
)

# ----------------------------------------------------------------------------- protocol


def test_preprocessing_windows_and_intensity():
    timm_like = Preprocessing(intensity=hu_window(-1000, 1000), window_size=(None, 64, 64))
    assert timm_like.resolve_window((8, 32, 32), (1, 16, 16)) == (8, 64, 64)
    assert timm_like.pad_value == 0.0  # air clipped to the window's lower end -> 0
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert timm_like.normalize_hu(hu).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    swin_like = Preprocessing(window_multiple=(32, 32, 32))
    assert swin_like.resolve_window((8, 64, 70), (32, 32, 32)) == (32, 64, 96)
    ours = Preprocessing(intensity=(-1008, 822, -86.8086, 322.6347))
    assert ours.pad_value == pytest.approx((-1008 + 86.8086) / 322.6347)
    with pytest.raises(ValueError, match="multiple of the encoder's stride"):
        ours.resolve_window((5, 64, 64), (4, 8, 8))
    with pytest.raises(ValueError, match="channel_mean"):
        Preprocessing(channel_mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("timm:vit_small_patch16_224", EncoderSpec("timm", "vit_small_patch16_224")),
        (
            "timm:resnet18:img_size=64,hu_min=-500",
            EncoderSpec("timm", "resnet18", {"img_size": 64, "hu_min": -500}),
        ),
        (
            "monai:SwinUNETR:feature_size=12",
            EncoderSpec("monai", "SwinUNETR", {"feature_size": 12}),
        ),
        ("my.pkg:build", EncoderSpec("callable", "my.pkg:build")),
        (
            "my.pkg:build:size=3,name=x",
            EncoderSpec("callable", "my.pkg:build", {"size": 3, "name": "x"}),
        ),
        ("tap_nano_3d", None),
        ("someone/tapct-b", None),
        ("runs/a/model", None),
        ("C:\\models\\tapct", None),
    ],
)
def test_parse_encoder_spec(spec, expected):
    assert parse_encoder_spec(spec) == expected


def test_parse_encoder_spec_errors():
    with pytest.raises(ValueError, match="timm:NAME"):
        parse_encoder_spec("timm:")
    with pytest.raises(ValueError, match="key=value"):
        parse_encoder_spec("monai:UNet:oops")


# ----------------------------------------------------------------------------- (a) ours


def test_backbone_encoder_shape_stride_and_parity(tiny_vit):
    encoder = BackboneEncoder(tiny_vit)
    assert isinstance(encoder, Encoder)
    assert encoder.stride == (2, 4, 4) and encoder.embed_dim == 16
    x = torch.randn(2, 1, 4, 8, 12)
    with torch.no_grad():
        out = encoder.encode(x)
        patch, cls = backbone_forward(tiny_vit, x)
    torch.testing.assert_close(out.cls_token, cls)
    assert out.patch_features.shape == (2, 16, 2, 2, 3)
    assert out.cls_token.shape == (2, 16)
    torch.testing.assert_close(out.patch_features, patch)
    assert as_encoder(encoder) is encoder
    assert isinstance(as_encoder(tiny_vit), BackboneEncoder)
    with pytest.raises(TypeError, match="neither an encoder"):
        as_encoder("tap_nano_3d")


# ----------------------------------------------------------------------------- (b) timm


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def test_timm_slices_equal_timm_forward_features(timm):
    """Each slice's features are timm's own forward_features on that slice, normalised."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32).eval()
    encoder = TimmSliceEncoder(model, slice_batch=2)
    assert encoder.stride == (1, 16, 16) and encoder.embed_dim == 384
    assert encoder.preprocessing.in_plane_size == (32, 32)
    x = torch.rand(2, 1, 3, 32, 32)  # windows in [0, 1]
    with torch.no_grad():
        out = encoder.encode(x)
        one = x[1, :, 2][None].expand(1, 3, 32, 32)  # batch 1, slice 2, as 3 channels
        mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
        tokens = model.forward_features((one - mean) / std)  # (1, 1 + 4, 384)
    assert out.patch_features.shape == (2, 384, 3, 2, 2)
    expected = rearrange(tokens[:, 1:], "n (h w) e -> n e h w", h=2, w=2)[0]
    torch.testing.assert_close(out.patch_features[1, :, 2], expected, atol=1e-5, rtol=1e-5)
    # the window's cls token is the mean of its slices' cls tokens
    assert out.cls_token.shape == (2, 384)


def test_timm_cnn_feature_map_stride(timm):
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    encoder = TimmSliceEncoder(model, input_size=(64, 64))
    assert encoder.stride == (1, 32, 32) and encoder.embed_dim == 512
    with torch.no_grad():
        out = encoder.encode(torch.rand(1, 1, 2, 64, 64))
    assert out.patch_features.shape == (1, 512, 2, 2, 2) and out.cls_token is None


def test_timm_spec_through_feature_extraction(timm):
    encoder = create_encoder("timm:vit_small_patch16_224:img_size=32")
    assert isinstance(encoder, TimmSliceEncoder) and not encoder.training
    volume = torch.rand(1, 5, 32, 32)
    roi = encoder.preprocessing.resolve_window((4, 16, 16), encoder.stride)
    assert roi == (4, 32, 32)
    feats = extract_features(encoder, volume, roi, overlap=0.25)
    assert feats.patch_features.shape == (384, 5, 2, 2)
    assert feats.patch_size == (1, 16, 16)
    with pytest.raises(ValueError, match="no model"):
        create_encoder("timm:no_such_model_xyz")


# ----------------------------------------------------------------------------- (c) MONAI


def test_swinunetr_encoder_is_swinvit_features_padded_with_air():
    torch.manual_seed(0)
    encoder = create_encoder("monai:SwinUNETR:feature_size=12,level=2")
    assert isinstance(encoder, MonaiEncoder)
    assert encoder.stride == (8, 8, 8) and encoder.embed_dim == 48
    assert encoder.preprocessing.pad_multiple == (32, 32, 32)
    x = torch.rand(1, 1, 8, 16, 24)
    with torch.no_grad():
        out = encoder.encode(x)
        padded = F.pad(x, [0, 8, 0, 16, 0, 24], value=0.0)  # air is 0 in [0, 1]
        own = encoder.network.swinViT(padded, True)[2]
    assert out.patch_features.shape == (1, 48, 1, 2, 3) and out.cls_token is None
    torch.testing.assert_close(out.patch_features, own[:, :, :1, :2, :3])


@pytest.mark.parametrize(
    ("name", "stride", "dim"), [("SwinUNETR", 32, 384), ("SegResNet", 8, 64), ("UNet", 16, 256)]
)
def test_monai_encoder_shapes_and_strides(name, stride, dim):
    encoder = create_encoder(f"monai:{name}")
    assert encoder.stride == (stride,) * 3 and encoder.embed_dim == dim
    window = (stride, 2 * stride, stride)
    with torch.no_grad():
        out = encoder.encode(torch.rand(1, 1, *window))
    assert out.patch_features.shape == (1, dim, 1, 2, 1)
    assert encoder.preprocessing.resolve_window((1, 1, 1), encoder.stride) == (stride,) * 3


def test_unknown_monai_encoder_lists_the_known_ones():
    with pytest.raises(ValueError, match="SwinUNETR, SegResNet, UNet"):
        create_encoder("monai:VNet")


# ----------------------------------------------------------------------------- (d) callable


def test_module_function_spec(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    patch_size = (1, 2, 2)\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.embed_dim = width\n"
        "        self.proj = nn.Conv3d(1, width, (1, 2, 2), (1, 2, 2))\n"
        "    def forward_features(self, x):\n"
        "        t = self.proj(x).flatten(2).transpose(1, 2)\n"
        "        return {'x_norm_patchtokens': t}\n"
        "def build(width=4):\n"
        "    return Net(width)\n"
        "def not_an_encoder():\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        encoder = create_encoder("my_encoders:build:width=6")
        assert isinstance(encoder, BackboneEncoder) and not encoder.training
        assert encoder.stride == (1, 2, 2) and encoder.embed_dim == 6
        with torch.no_grad():
            assert encoder.encode(torch.rand(1, 1, 2, 4, 4)).patch_features.shape == (
                1,
                6,
                2,
                2,
                2,
            )
        with pytest.raises(TypeError, match="neither an encoder"):
            create_encoder("my_encoders:not_an_encoder")
        with pytest.raises(ValueError, match="no callable"):
            create_encoder("my_encoders:missing")
        with pytest.raises(ValueError, match="cannot import"):
            create_encoder("no_such_module_xyz:build")
    finally:
        sys.modules.pop("my_encoders", None)
