"""Token-depth maps (`edgeattack.sparsity.depth`): exact against every mechanism's own token counts
(physical and masked dropping, with a token cap), dense ViTs, grids, summaries, and deeper maps
under DeSparsify."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edgeattack.attacks.whitebox import DeSparsify
from edgeattack.data import load_digits_dataset
from edgeattack.errors import ConfigError, DataError
from edgeattack.metrics.tokens import tur
from edgeattack.sparsity.depth import depth_grid, keep_token_masks, token_depth, token_depth_summary
from edgeattack.sparsity.dynamicvit import kept_token_counts
from edgeattack.zoo.factory import create_model

N_IMAGES = 40
DEPTH = 6
PATCHES = 64
MECHANISMS = ("ats_tiny_digits", "avit_tiny_digits", "adavit_tiny_digits")
CAP = (65, 65, 30, 20, 12, 8)  # none before ATS's first stage (block 2), tight later


@pytest.fixture(scope="module")
def images(test_set) -> np.ndarray:
    return test_set.images[:N_IMAGES]


@pytest.fixture(scope="module")
def noise(images) -> np.ndarray:
    return np.random.default_rng(0).random(images.shape, dtype=np.float32)


def _counts(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.forward_counts(torch.from_numpy(images))[1].numpy()


def _check_exact(model, images: np.ndarray) -> None:
    """Per block the masks sum to the counts; the depths plus the class token's blocks sum to the total."""
    counts = _counts(model, images)
    masks = keep_token_masks(model, images, batch_size=16)
    depths = token_depth(model, images, batch_size=16)
    assert masks.shape == (len(images), DEPTH, PATCHES + 1) and masks.dtype == bool
    assert depths.shape == (len(images), PATCHES) and depths.dtype == np.int64
    np.testing.assert_array_equal(masks.sum(axis=2), counts)
    np.testing.assert_array_equal(depths, masks[:, :, 1:].sum(axis=1))
    np.testing.assert_array_equal(depths.sum(axis=1) + masks[:, :, 0].sum(axis=1), counts.sum(axis=1))
    assert depths.min() >= 0 and depths.max() <= DEPTH
    if model.net.mechanism == "adavit":  # a skipped block processes no token, not even the class token
        np.testing.assert_array_equal(masks[:, :, 0], counts > 0)
    elif model.net.mechanism == "avit":  # the class token halts too (NVlabs' mechanism): it runs a prefix of the blocks
        cls = masks[:, :, 0]
        assert cls[:, 0].all() and (cls[:, 1:] <= cls[:, :-1]).all()
    else:  # the class token is in every block
        assert masks[:, :, 0].all()
        np.testing.assert_array_equal(depths.sum(axis=1) + DEPTH, counts.sum(axis=1))


# -- exactness -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MECHANISMS)
@pytest.mark.parametrize(
    "options", [{}, {"drop_mode": "masked"}, {"token_cap": CAP}], ids=["physical", "masked", "cap"]
)
def test_depth_matches_the_models_counts(name, options, images) -> None:
    model = create_model(name, **options)
    _check_exact(model, images)
    if "token_cap" in options:
        assert (_counts(model, images) <= np.array(CAP)).all()


@pytest.mark.parametrize("name", MECHANISMS)
def test_masked_and_physical_dropping_give_the_same_map(name, images) -> None:
    physical = token_depth(create_model(name), images)
    masked = token_depth(create_model(name, drop_mode="masked"), images)
    np.testing.assert_array_equal(physical, masked)


def test_dynamicvit_depth_matches_its_schedule(images) -> None:
    model = create_model("dynamicvit_tiny_digits_r07")
    masks = keep_token_masks(model, images)
    with torch.no_grad():
        counts = kept_token_counts(model, torch.from_numpy(images)).numpy()
    np.testing.assert_array_equal(masks.sum(axis=2), counts)
    assert masks[:, :, 0].all() and masks[:, :2].all()  # nothing pruned before block 2
    depths = token_depth(model, images)
    np.testing.assert_array_equal(depths.sum(axis=1) + DEPTH, counts.sum(axis=1))
    assert set(np.unique(depths)) <= {2, 3, 4, 6}  # dropped at a pruning location or kept to the end


def test_dense_vit_reaches_every_block(model, images) -> None:
    depths = token_depth(model, images)
    assert depths.shape == (N_IMAGES, PATCHES) and (depths == DEPTH).all()
    summary = token_depth_summary(model, images)
    assert summary["tur"] == 1.0 and summary["mean_depth"] == DEPTH


def test_not_a_vit_is_refused(images) -> None:
    with pytest.raises(ConfigError, match="neither token-sparse"):
        token_depth(torch.nn.Linear(3, 3), images)
    with pytest.raises(DataError, match="N, C, H, W"):
        token_depth(create_model("ats_tiny_digits"), images[0])
    with pytest.raises(ConfigError, match="batch_size"):
        token_depth(create_model("ats_tiny_digits"), images, batch_size=0)


# -- batches, modes, bare networks -----------------------------------------------------------------
def test_batches_mode_and_bare_network(images) -> None:
    model = create_model("avit_tiny_digits")
    reference = token_depth(model, images, batch_size=64)
    np.testing.assert_array_equal(token_depth(model, images, batch_size=7), reference)
    model.train()
    np.testing.assert_array_equal(token_depth(model, images), reference)
    assert model.training and model.net.training
    model.eval()
    normalised = ((torch.from_numpy(images) - model.mean) / model.std).numpy()
    np.testing.assert_array_equal(token_depth(model.net, normalised), reference)
    assert token_depth(model, images[:0]).shape == (0, PATCHES)


# -- grids and summaries ---------------------------------------------------------------------------
def test_depth_grid() -> None:
    depths = np.arange(2 * 16).reshape(2, 16) % 7
    grid = depth_grid(depths)
    assert grid.shape == (4, 4) and grid.dtype == np.float64
    np.testing.assert_allclose(grid.ravel(), depths.mean(axis=0))
    assert depth_grid(depths, (2, 8)).shape == (2, 8)
    with pytest.raises(ConfigError, match="square"):
        depth_grid(np.zeros((2, 12)))
    assert depth_grid(np.zeros((2, 12)), (3, 4)).shape == (3, 4)
    with pytest.raises(ConfigError, match="does not hold"):
        depth_grid(depths, (3, 5))
    with pytest.raises(ConfigError, match="at least one image"):
        depth_grid(np.zeros((0, 16)))
    with pytest.raises(ConfigError, match="images, patches"):
        depth_grid(np.zeros(16))


def test_summary_agrees_with_the_token_metrics(images) -> None:
    model = create_model("ats_tiny_digits")
    summary = token_depth_summary(model, images, batch_size=16)
    assert set(summary) == {"depth", "images", "grid", "mean_depth", "tur"}
    assert (summary["depth"], summary["images"]) == (DEPTH, N_IMAGES)
    depths = token_depth(model, images)
    np.testing.assert_allclose(np.array(summary["grid"]), depth_grid(depths))
    assert len(summary["grid"]) == 8 and all(isinstance(v, float) for row in summary["grid"] for v in row)
    assert summary["mean_depth"] == pytest.approx(depths.mean())
    assert summary["tur"] == pytest.approx(tur(_counts(model, images), model.net.num_tokens).mean)


# -- clean, noise, attack --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ats_tiny_digits", "avit_tiny_digits"])
def test_maps_depend_on_the_input(name, images, noise) -> None:
    model = create_model(name)
    clean, noisy = token_depth(model, images), token_depth(model, noise)
    assert (clean < DEPTH).any() and not (clean == DEPTH).all()
    assert not np.array_equal(depth_grid(clean), depth_grid(noisy))


@pytest.mark.parametrize("name", ["ats_tiny_digits", "avit_tiny_digits"])
def test_desparsify_deepens_the_map(name) -> None:
    model = create_model(name)
    data = load_digits_dataset("test").take(8)
    adv = DeSparsify(steps=8)(model, data).to_artifact(data).apply(data.images, indices=data.indices)
    clean, attacked = token_depth(model, data.images), token_depth(model, adv)
    assert attacked.mean() > clean.mean() + 0.5, (clean.mean(), attacked.mean())
    assert (depth_grid(attacked) >= depth_grid(clean)).mean() >= 0.75
