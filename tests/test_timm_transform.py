"""edgeattack's preprocessing is timm's eval transform, image for image (Pillow + numpy, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeattack.data import PreprocessConfig, load_image_folder, preprocess_for
from edgeattack.zoo.registry import get_entry, list_models

timm = pytest.importorskip("timm")
timm_data = pytest.importorskip("timm.data")

# width x height: landscape, portrait, square, small ones that upscale, odd sizes (half-pixel crops),
# a very thin one, and one a pixel off the resize size.
SIZES = [(500, 375), (375, 500), (224, 224), (100, 80), (31, 45), (249, 300), (17, 400), (641, 640), (248, 300)]
MODES = ["RGB", "L", "RGBA", "P"]


def _images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate(SIZES):
        # smooth gradients plus noise: resampling differences would show on both
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256, rng.integers(0, 256, (h, w))], -1)
        rgba = Image.fromarray(np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8), "RGBA")
        for mode in MODES:
            image = rgba.convert(mode)
            for fmt in ("png", "jpg"):
                if fmt == "jpg" and mode in ("RGBA", "P"):
                    continue
                path = tmp_path / f"{k}_{mode}.{fmt}"
                image.save(path, quality=90) if fmt == "jpg" else image.save(path)
                paths.append(path)
    return paths


def _timm_reference(data_config: dict, path: Path) -> np.ndarray:
    """timm's eval transform on `path` as timm's loaders open it (RGB), without the normalisation."""
    transform = timm_data.create_transform(**data_config)
    assert type(transform.transforms[-1]).__name__ == "Normalize"
    transform.transforms = transform.transforms[:-1]  # edgeattack's models normalise inside
    with Image.open(path) as image:
        return transform(image.convert("RGB")).numpy()


def _assert_same(config: PreprocessConfig, data_config: dict, paths: list[Path]) -> None:
    for path in paths:
        expected = _timm_reference(data_config, path)
        with Image.open(path) as image:
            ours = config.apply(image)
        assert ours.shape == expected.shape, path.name
        assert ours.dtype == np.float32
        assert np.abs(ours - expected).max() == 0.0, (path.name, float(np.abs(ours - expected).max()))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _images(tmp_path_factory.mktemp("timm-images"))


def test_deit_small_matches_timm_exactly(images: list[Path]):
    model = timm.create_model("deit_small_patch16_224", pretrained=False)
    data_config = timm_data.resolve_data_config({}, model=model)
    assert data_config["crop_pct"] == 0.9 and data_config["crop_mode"] == "center"
    config = preprocess_for(get_entry("deit_small_patch16_224").config)
    assert (config.crop_pct, config.interpolation, config.crop_mode) == (0.9, "bicubic", "center")
    assert config.scale_size == (248, 248)
    _assert_same(config, data_config, images)


@pytest.mark.parametrize(
    "name",
    ["resnet18.tv_in1k", "efficientnet_b0.ra_in1k", "convnext_base.fb_in22k_ft_in1k_384"],
    ids=["0.875-bilinear", "0.875-bicubic", "squash-384"],
)
def test_pretrained_configs_match_timm(name: str, images: list[Path]):
    data_config = timm_data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    config = PreprocessConfig.from_model_config(_as_model_config(data_config))
    _assert_same(config, data_config, images[::2])


@pytest.mark.parametrize(
    ("input_size", "crop_pct", "interpolation", "crop_mode"),
    [
        ((3, 64, 64), 0.875, "bilinear", "squash"),
        ((3, 48, 64), 0.9, "bicubic", "center"),
        ((3, 64, 64), 0.95, "bicubic", "border"),
        ((3, 56, 40), 0.8, "nearest", "border"),
        ((3, 32, 32), 1.0, "lanczos", "center"),
    ],
)
def test_crop_modes_match_timm(images: list[Path], input_size, crop_pct, interpolation, crop_mode):
    data_config = {
        "input_size": input_size, "crop_pct": crop_pct, "interpolation": interpolation, "crop_mode": crop_mode,
        "mean": timm_data.IMAGENET_DEFAULT_MEAN, "std": timm_data.IMAGENET_DEFAULT_STD,
    }
    config = PreprocessConfig.from_model_config(_as_model_config(data_config))
    if crop_mode == "border":  # pads with the mean colour, as timm does
        assert config.pad_fill == tuple(round(255 * v) for v in timm_data.IMAGENET_DEFAULT_MEAN)
    _assert_same(config, data_config, images)


def test_folder_images_are_timm_exact(tmp_path: Path):
    root = tmp_path / "val"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k, (w, h) in enumerate([(90, 60), (60, 90), (40, 41)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "a" / f"{k}.png")
    data_config = {
        "input_size": (3, 32, 32), "crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "center",
        "mean": timm_data.IMAGENET_DEFAULT_MEAN, "std": timm_data.IMAGENET_DEFAULT_STD,
    }
    dataset = load_image_folder(root, preprocess=PreprocessConfig(input_size=(3, 32, 32), crop_pct=0.9))
    expected = np.stack([_timm_reference(data_config, p) for p in sorted((root / "a").iterdir())])
    assert np.abs(np.asarray(dataset.images) - expected).max() == 0.0


def test_zoo_configs_match_their_timm_models():
    """DeiT entries carry timm's pretrained_cfg; the DeiT-based families say which they follow."""
    for size in ("tiny", "small", "base"):
        for name in (f"deit_{size}_patch16_224", f"deit_{size}_distilled_patch16_224"):
            cfg = timm.models.get_pretrained_cfg(name)
            ours = get_entry(name).config
            assert (ours.input_size, ours.crop_pct, ours.interpolation, ours.crop_mode) == (
                tuple(cfg.input_size), cfg.crop_pct, cfg.interpolation, cfg.crop_mode or "center",
            ), name
    deit = timm.models.get_pretrained_cfg("deit_small_patch16_224")
    for entry in list_models("ats_deit_*") + list_models("adavit_deit_*"):  # timm DeiT weights / DeiT default
        assert entry.config.crop_pct == deit.crop_pct
    # DynamicViT, A-ViT and Mini-DeiT evaluate with their repos' DeiT-era Resize(256) + CenterCrop(224), bicubic
    for pattern in ("dynamicvit_deit_*", "avit_deit_*", "mini_deit_*"):
        for entry in list_models(pattern):
            assert (entry.config.crop_pct, entry.config.interpolation) == (0.875, "bicubic"), entry.name
            assert preprocess_for(entry.config).scale_size == (256, 256)


def _as_model_config(data_config: dict) -> object:
    from edgeattack.zoo.config import ModelConfig

    return ModelConfig(
        input_size=tuple(data_config["input_size"]),
        num_classes=1000,
        mean=tuple(data_config["mean"]),
        crop_pct=data_config["crop_pct"],
        interpolation=data_config["interpolation"],
        crop_mode=data_config.get("crop_mode") or "center",
    )


def test_preprocess_for_engine_metadata_uses_the_zoo_config():
    from edgeattack.export.metadata import EngineMetadata

    def metadata(source: str, size: int = 224) -> EngineMetadata:
        return EngineMetadata(
            input_name="images", input_shape=("batch", 3, size, size), output_names=("logits",), bounds=(0.0, 1.0),
            mean=(), std=(), labels=(), precision="fp32", source_model=source, source_sha256="",
        )

    assert preprocess_for(metadata("deit_small_patch16_224")).crop_pct == 0.9
    assert preprocess_for(metadata("dynamicvit_deit_small_patch16_224_r07")).crop_pct == 0.875
    fallback = preprocess_for(metadata("someone-elses-model", 96))
    assert fallback.input_size == (3, 96, 96) and fallback.crop_pct == 0.875
    mismatched = preprocess_for(metadata("deit_small_patch16_224", 96))  # sizes disagree: not the zoo's config
    assert mismatched.input_size == (3, 96, 96)
