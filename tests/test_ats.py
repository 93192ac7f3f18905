"""ATS (adaptive token sampling) and the token-sparse contract: counts, batch independence, physical
== masked dropping, token caps, the differentiable usage, ONNX export with `token_counts`, parity.
The official sampler's agreement with adaptivetokensampling/ATS is in test_official_ats.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edgeattack.errors import ConfigError
from edgeattack.metrics.tokens import gflops_from_counts, gflops_from_metadata, tur
from edgeattack.sparsity.ats import ATS, ats_stages_for
from edgeattack.sparsity.ats_sampling import (
    expected_distinct,
    nearest_cdf_keep,
    quantile_keep,
    sample_points,
    score_order,
)
from edgeattack.sparsity.base import (
    TokenSparseNet,
    apply_token_cap,
    check_token_cap,
    compact_tokens,
    compaction_order,
    masked_block,
    token_arch_of,
)
from edgeattack.zoo.factory import create_model
from edgeattack.zoo.registry import list_models

N_IMAGES = 32


@pytest.fixture(scope="module")
def ats():
    return create_model("ats_tiny_digits")


@pytest.fixture(scope="module")
def images(test_set):
    return torch.from_numpy(test_set.images[:N_IMAGES])


@pytest.fixture(scope="module")
def results(ats, images):
    with torch.no_grad():
        return ats.forward_counts(images)


def _rank(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


# -- zoo and contract ------------------------------------------------------------------------------
def test_zoo_names_and_shipped_weights(ats, model):
    names = {entry.name for entry in list_models(family="ats")}
    assert names == {"ats_tiny_digits", "ats_deit_tiny_patch16_224", "ats_deit_small_patch16_224"}
    assert ats.token_sparse and not model.token_sparse
    assert isinstance(ats.net, TokenSparseNet) and isinstance(ats.net, ATS)
    net = ats.net
    assert (net.mechanism, net.depth, net.num_tokens, net.drop_mode, net.token_cap) == ("ats", 6, 65, "physical", None)
    assert net.stages == (2, 3, 4, 5) and ats_stages_for(12) == tuple(range(3, 12))
    assert net.sampler == "official" and net.max_tokens == (64, 64, 64, 64)  # K = the patch tokens, at every stage
    # parameter-free: exactly vit_tiny_digits' weights, under the same names
    ours, theirs = ats.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_non_sparse_model_refuses_counts(model, images):
    with pytest.raises(ConfigError, match="not token-sparse"):
        model.forward_counts(images[:2])
    with pytest.raises(ConfigError, match="not token-sparse"):
        model.usage(images[:2])


def test_counts_vary_with_the_input_and_stay_in_range(ats, images, results, model):
    logits, counts = results
    assert logits.shape == (N_IMAGES, 10) and counts.dtype == torch.int64 and counts.shape == (N_IMAGES, 6)
    assert (counts[:, :2] == 65).all()  # no sampler before block 2
    assert (counts >= 1).all() and (counts <= 65).all()
    assert (counts[:, 1:] <= counts[:, :-1]).all()  # dropped tokens never come back
    assert len(set(counts[:, -1].tolist())) > 3  # the kept count depends on the image
    assert 0.3 < tur(counts.numpy(), 65).mean < 1.0
    with torch.no_grad():
        agree = (ats(images).argmax(1) == model(images).argmax(1)).float().mean()
    assert agree >= 0.9


def test_batch_result_equals_per_image_result(ats, images, results):
    logits, counts = results
    with torch.no_grad():
        single = [ats.forward_counts(images[i : i + 1]) for i in range(0, N_IMAGES, 3)]
        shuffled = ats.forward_counts(images.flip(0))
    assert torch.allclose(torch.cat([s[0] for s in single]), logits[::3], atol=1e-4)
    assert torch.equal(torch.cat([s[1] for s in single]), counts[::3])
    assert torch.allclose(shuffled[0].flip(0), logits, atol=1e-4) and torch.equal(shuffled[1].flip(0), counts)


@pytest.mark.parametrize("sampler", ["official", "quantile"])
def test_physical_and_masked_dropping_agree(images, results, sampler):
    physical = create_model("ats_tiny_digits", sampler=sampler)
    masked = create_model("ats_tiny_digits", drop_mode="masked", sampler=sampler)
    with torch.no_grad():
        reference = physical.forward_counts(images) if sampler != "official" else results
        logits, counts = masked.forward_counts(images)
        usage_logits, _ = masked.usage(images)
    assert torch.allclose(logits, reference[0], atol=1e-4) and torch.equal(counts, reference[1])
    assert torch.allclose(usage_logits, reference[0], atol=1e-4)
    with pytest.raises(ConfigError, match="drop_mode"):
        create_model("ats_tiny_digits", drop_mode="lazy")
    with pytest.raises(ConfigError, match="sampler"):
        create_model("ats_tiny_digits", sampler="uniform")


def test_token_cap_bounds_the_counts(images, results):
    cap = (65, 65, 30, 20, 10, 10)
    capped = create_model("ats_tiny_digits", token_cap=cap)
    assert capped.net.token_cap == cap
    with torch.no_grad():
        _, counts = capped.forward_counts(images)
    assert (counts <= torch.tensor(cap)).all()
    assert torch.equal(counts[:, 2], results[1][:, 2].clamp(max=30))  # same input to block 2, capped
    assert torch.equal(counts[:, :2], results[1][:, :2])
    with pytest.raises(ConfigError, match="cannot be honoured"):
        create_model("ats_tiny_digits", token_cap=(40, 65, 65, 65, 65, 65))
    with pytest.raises(ConfigError, match="one value per block"):
        check_token_cap((10, 10), 6, 65)
    assert check_token_cap(100, 3, 65) == (65, 65, 65)


# -- the shared helpers ----------------------------------------------------------------------------
def test_compaction_keeps_kept_tokens_first_in_order():
    keep = torch.tensor([[True, False, True, False, True], [True, True, False, False, False]])
    x = torch.arange(10, dtype=torch.float32).view(2, 5, 1)
    compact, key_mask = compact_tokens(x, keep)
    assert compact.shape == (2, 3, 1)
    assert compact[0, :, 0].tolist() == [0.0, 2.0, 4.0] and compact[1, :2, 0].tolist() == [5.0, 6.0]
    assert key_mask.tolist() == [[True, True, True], [True, True, False]]
    order, _ = compaction_order(keep)
    assert order[1, 2].item() in (2, 3, 4)  # padding comes from the dropped tokens


def test_apply_token_cap_keeps_the_highest_scores():
    keep = torch.tensor([[True, True, False, True, True]])
    scores = torch.tensor([[0.1, 0.5, 0.9, 0.5, 0.3]])
    assert apply_token_cap(keep, scores, 2).tolist() == [[False, True, False, True, False]]
    assert apply_token_cap(keep, scores, 1).tolist() == [[False, True, False, False, False]]  # tie: lower index
    assert torch.equal(apply_token_cap(keep, scores, None), keep)
    assert torch.equal(apply_token_cap(keep, scores, 10), keep)


def test_masked_block_ignores_padding(model):
    block = model.net.blocks[0]
    torch.manual_seed(0)
    x = torch.randn(1, 7, 96)
    padded = torch.cat([x, torch.randn(1, 3, 96) * 100], dim=1)
    key_mask = torch.tensor([[True] * 7 + [False] * 3])
    with torch.no_grad():
        out = masked_block(block, padded, key_mask)[:, :7]
        ref = block(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_official_nearest_cdf_sampler():
    valid = torch.ones(1, 8, dtype=torch.bool)
    uniform = torch.full((1, 8), 1 / 8)
    # normalised CDF 0, 1/7, ..., 1; 8 points from 1/7 to 1: every token but the lowest is nearest to one
    assert nearest_cdf_keep(uniform, valid, sample_points(8)).tolist() == [[False] + [True] * 7]
    peaked = torch.tensor([[0.0] * 7 + [1.0]])
    assert nearest_cdf_keep(peaked, valid, sample_points(8)).tolist() == [[False] * 7 + [True]]
    skewed = torch.tensor([[0.01, 0.02, 0.02, 0.05, 0.1, 0.1, 0.2, 0.5]])  # ascending, as the sampler takes them
    kept = nearest_cdf_keep(skewed, valid, sample_points(8))
    assert kept[0, -1] and not kept[0, 0] and 1 < int(kept.sum()) < 7  # duplicates collapse
    assert nearest_cdf_keep(skewed, valid, sample_points(2)).sum() <= 2
    padded = torch.cat([torch.zeros(1, 3), uniform], dim=1)  # padding first, as score_order puts it
    keep = nearest_cdf_keep(padded, torch.tensor([[False] * 3 + [True] * 8]), sample_points(8))
    assert keep.tolist() == [[False] * 4 + [True] * 7]
    with pytest.raises(ConfigError, match="at least 2"):
        sample_points(1)


def test_score_order_puts_padding_first_and_breaks_ties_by_position():
    scores = torch.tensor([[0.3, 0.1, 0.0, 0.3, 0.3]])
    rank, order = score_order(scores, torch.tensor([[True, True, False, True, True]]))
    assert rank.tolist() == [[2, 1, 0, 3, 4]] and order.tolist() == [[2, 1, 0, 3, 4]]


def test_quantile_sampler():
    uniform = torch.full((1, 8), 1 / 8)
    samples = torch.tensor([[8]])
    assert quantile_keep(uniform, samples).all()  # every interval holds one quantile
    peaked = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert quantile_keep(peaked, samples).tolist() == [[False, False, True] + [False] * 5]
    skewed = torch.tensor([[0.6, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]])
    kept = quantile_keep(skewed, samples)
    assert kept[0, 0] and not kept[0, 6:].any() and 1 < int(kept.sum()) < 6  # duplicates collapse
    assert quantile_keep(skewed, torch.tensor([[2]])).sum() <= 2
    valid = torch.ones(1, 8, dtype=torch.bool)
    assert expected_distinct(uniform, samples, valid) > expected_distinct(skewed, samples, valid)
    assert expected_distinct(skewed, samples, valid) > expected_distinct(peaked, samples, valid)


# -- the DeSparsify surrogate ----------------------------------------------------------------------
def test_usage_is_differentiable_and_tracks_counts(ats, images, results):
    x = images[:8].clone().requires_grad_(True)
    logits, usage = ats.usage(x)
    assert logits.shape == (8, 10)
    assert usage.shape == (8, 6) and (usage >= 0).all() and (usage <= 1).all()
    assert torch.allclose(usage[:, :2], torch.ones(8, 2))
    usage[:, 2:].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        _, usage_all = ats.usage(images)
    u, c = usage_all.mean(1).numpy(), results[1].float().mean(1).numpy()
    assert np.corrcoef(_rank(u), _rank(c))[0, 1] > 0.7  # Spearman


# -- metrics from counts ---------------------------------------------------------------------------
def test_gflops_from_counts_matches_flops_of(ats, model, results):
    from edgeattack.zoo.profile import flops_of

    arch = token_arch_of(ats)
    full = np.full((1, 6), 65)
    assert gflops_from_counts(full, arch).mean == pytest.approx(flops_of(model).gflops, rel=1e-12)
    sparse = gflops_from_counts(results[1].numpy(), arch, sampled_in_attention=True)
    assert (sparse.per_image < flops_of(model).gflops).all()


# -- ONNX ------------------------------------------------------------------------------------------
def test_onnx_export_with_token_counts(ats, images, results, test_set, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edgeattack.engines import open_engine
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.export.parity import check_parity

    path = tmp_path / "ats.onnx"
    metadata = export_onnx(ats, path)
    assert metadata.output_names == ("logits", "token_counts") and metadata.extra_outputs == ("token_counts",)
    info = metadata.token_sparsity
    assert (info["mechanism"], info["depth"], info["num_tokens"], info["stages"]) == ("ats", 6, 65, [2, 3, 4, 5])
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"ScatterElements", "GatherElements", "Range", "ReduceMax", "CumSum"} <= ops  # data-dependent widths
    outputs = {o.name: o for o in graph.output}
    assert outputs["token_counts"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert outputs["token_counts"].type.tensor_type.shape.dim[0].dim_param == "batch"

    with open_engine(path) as engine:
        assert engine.extra_outputs == ("token_counts",)
        out = engine.run(images.numpy())
        single = engine.run(images[:1].numpy())
    assert np.abs(out["logits"] - results[0].numpy()).max() < 1e-4
    assert out["token_counts"].dtype == np.int64 and np.array_equal(out["token_counts"], results[1].numpy())
    assert np.array_equal(single["token_counts"], results[1][:1].numpy())
    gflops = gflops_from_metadata(out["token_counts"], metadata)
    assert gflops.mean == pytest.approx(
        gflops_from_counts(results[1].numpy(), token_arch_of(ats), sampled_in_attention=True).mean
    )

    report = check_parity(ats, path, test_set, num_images=N_IMAGES, batch_size=16)
    assert report.top1_agreement == 1.0 and report.token_count_agreement == 1.0
    assert report.token_count_block_agreement == 1.0 and report.max_abs_token_count_diff == 0
    assert "token counts agree" in report.summary()


def test_compress_method_wraps_a_teacher(model, test_set):
    from edgeattack.compress.methods import compress

    small = test_set.take(24)
    student, report = compress("ats", model, small, small, seed=3)
    assert student.model_name == "ats_tiny_digits" and student.config.family == "ats" and student.token_sparse
    assert report["trained"] is False and report["method"] == "ats" and report["n_images"] == 24
    assert 0 < report["tur"] < 1 and report["gflops"] < report["dense_gflops"]
    assert 0 <= report["acc"] <= 1 and 0 <= report["teacher_acc"] <= 1
    assert student.net is not model.net and student.net.blocks is not model.net.blocks  # teacher untouched
    with pytest.raises(ConfigError, match="unknown ats parameter"):
        compress("ats", model, small, small, rho=0.7)
