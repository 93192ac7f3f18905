"""Experiment configs: validation with clear errors, the shipped configs, and plan expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeattack.errors import ConfigError
from edgeattack.experiments.config import WHITEBOX_METHODS
from edgeattack.experiments.loading import load_config, resolve_config_path, shipped_configs, validate_config
from edgeattack.experiments.plan import build_plan, eps_label

MINIMAL = {
    "name": "tiny",
    "data": {"limit": 16},
    "models": ["vit_tiny_digits"],
    "engines": [{"name": "fp32"}],
}


def _config(**changes: object) -> dict:
    doc = {**MINIMAL, **changes}
    return yaml.safe_load(yaml.safe_dump(doc))


def _error(doc: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(doc, source="exp.yaml")
    return str(info.value)


def test_minimal_config_gets_defaults() -> None:
    config = validate_config(_config())
    assert config.data.dataset == "digits" and config.data.eval_split == "test"
    assert config.engines[0].target == "onnx" and config.engines[0].precision == "fp32"
    assert config.executor.kind == "local" and config.transfer == "all"
    assert len(config.sha256()) == 64


def test_fractions_are_numbers() -> None:
    config = validate_config(_config(whitebox=[{"name": "pgd", "method": "pgd", "eps": ["8/255", 0.01]}]))
    assert config.whitebox[0].eps == pytest.approx([8 / 255, 0.01])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"engines": [{"name": "fp32", "precison": "fp16"}]}, "engines[0].precison: unknown key (did you mean: precision"),
        ({"engines": [{"name": "x", "precision": "int4"}]}, "engines[0].precision: got \"int4\""),
        ({"whitebox": [{"name": "a", "method": "pgdd", "eps": [0.1]}]}, "whitebox[0].method: got \"pgdd\""),
        ({"whitebox": [{"name": "a", "method": "pgd", "eps": ["8/2x"]}]}, "whitebox[0].eps[0]: got \"8/2x\": expected a number or a fraction"),
        ({"whitebox": [{"name": "a", "method": "pgd", "eps": [-1]}]}, "every eps must be > 0"),
        ({"models": ["vit_tiny_digitz"]}, "vit_tiny_digitz"),
        ({"models": []}, "models: got []"),
        ({"data": {"limit": 0}}, "data.limit: got 0"),
        ({"data": {"dataset": " "}}, "data.dataset: got \" \": expected 'digits' or the path"),
        ({"models": ["deit_tiny_patch16_224"]}, "deit_tiny_patch16_224 has no shipped weights: give it checkpoint"),
        ({"models": [{"name": "deit_tiny_patch16_224", "pretrained": True, "random_weights": True}]}, "pretrained and random_weights both"),
        ({"models": [{"name": "vit_tiny_digits", "checkpoint": "w.pth", "random_weights": True}]}, "checkpoint and random_weights both"),
        ({"device": "gpu"}, "device: got \"gpu\""),
        ({"executor": {"gpus_per_torch_cell": -1}}, "executor.gpus_per_torch_cell: got -1"),
        ({"blackbox": [{"spec": "squar"}]}, "blackbox[0].spec"),
        ({"blackbox": [{"spec": "spatial", "budget": 0}]}, "blackbox[0].budget: got 0"),
        ({"executor": {"kind": "slurm"}}, "executor.kind: got \"slurm\""),
        ({"engines": [{"name": "t", "target": "torch", "precision": "int8"}]}, "torch engine is the fp32 reference"),
        ({"engines": [{"name": "s", "sparse": True}]}, "sparse (2:4 kernels) needs target: tensorrt"),
        ({"engines": [{"name": "a"}, {"name": "a"}]}, "engine names repeat"),
        ({"engines": [{"name": "bad name!"}]}, "engines[0].name"),
        ({"whitebox": [{"name": "p", "method": "pgd", "eps": [0.1], "sources": ["twin:nope"]}]}, "names no engine"),
        ({"whitebox": [{"name": "p", "method": "pgd", "eps": [0.1], "sources": ["twin:fp32"]}]}, "only a static int8 ONNX engine"),
        ({"whitebox": [{"name": "p", "method": "pgd", "eps": [0.1], "models": ["other"]}]}, "model 'other' is not in models"),
        ({"whitebox": [{"name": "p", "method": "pgd"}]}, "eps is required"),
        ({"whitebox": [{"name": "p", "method": "desparsify", "eps": [0.1], "params": {"variant": "patch"}}]}, "the patch variant has no eps"),
        ({"nmae": "x"}, "nmae: unknown key (did you mean: name"),
    ],
)
def test_invalid_configs_say_which_key_value_and_expectation(changes: dict, expected: str) -> None:
    message = _error(_config(**changes))
    assert message.startswith("exp.yaml is not a valid experiment config")
    assert expected in message


def test_every_problem_is_listed_at_once() -> None:
    message = _error(_config(data={"limit": 0}, executor={"kind": "slurm"}))
    assert "data.limit" in message and "executor.kind" in message


def test_not_a_mapping_and_missing_keys() -> None:
    assert "expected a mapping" in _error(["a", "b"])
    message = _error({"name": "x"})
    assert "models: required key is missing" in message and "engines: required key is missing" in message


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodels: [vit_tiny_digits\nengines: []\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_missing_file_lists_shipped_configs() -> None:
    with pytest.raises(ConfigError, match=r"shipped configs: .*quickstart"):
        resolve_config_path("quickstrat")
    with pytest.raises(ConfigError, match=r"did you mean.*quickstart"):
        resolve_config_path("quickstrat")


def test_overrides_apply_before_validation() -> None:
    config = load_config("quickstart", overrides={"data.limit": 8, "executor.workers": 2})
    assert config.data.limit == 8 and config.executor.workers == 2
    with pytest.raises(ConfigError, match=r"data\.limit"):
        load_config("quickstart", overrides={"data.limit": -3})


def test_shipped_configs_validate_and_expand(tmp_path: Path) -> None:
    assert {"quickstart", "desparsify", "paper-imagenet"} <= set(shipped_configs())
    for name in ("quickstart", "desparsify"):
        plan = build_plan(load_config(name))
        assert len(plan) > 10
    # the ImageNet-scale study needs a folder and checkpoints: give it local ones
    (tmp_path / "imagenet" / "val" / "n01440764").mkdir(parents=True)
    doc = yaml.safe_load(resolve_config_path("paper-imagenet").read_text())
    for model in doc["models"]:
        checkpoint = tmp_path / Path(model["checkpoint"]).name
        checkpoint.write_bytes(b"weights")
        model["checkpoint"] = str(checkpoint)
    doc["data"]["dataset"] = str(tmp_path / "imagenet")
    plan = build_plan(validate_config(doc))
    counts = plan.counts()
    assert counts["export"] == 8 * 6 + 8 * 2  # two TensorRT engines each add their ONNX export
    assert counts["craft"] == 8 * 4 * 2 + 8
    trt = plan.cells["replay/deit_small_patch16_224/jetson-trt-fp16"]
    assert trt.resources == {"CPU": 1.0, "jetson": 1.0}
    assert plan.cells["export/deit_small_patch16_224/trt-int8"].deps == ("export/deit_small_patch16_224/trt-int8.onnx",)


def test_whitebox_methods_match_the_registry() -> None:
    from edgeattack.attacks.whitebox import WHITEBOX_ATTACKS

    assert set(WHITEBOX_METHODS) == set(WHITEBOX_ATTACKS)


def test_plan_dependencies_and_transfer_both_ways() -> None:
    doc = _config(
        models=["vit_tiny_digits", "deit_tiny_digits_distilled", "ats_tiny_digits"],
        engines=[{"name": "torch", "target": "torch"}, {"name": "int8", "precision": "int8"}],
        whitebox=[
            {"name": "pgd", "method": "pgd", "eps": ["4/255", "8/255"], "sources": ["model", "twin:int8"]},
            {"name": "ds", "method": "desparsify", "eps": ["8/255"]},
        ],
        blackbox=[{"spec": "spatial", "engines": ["int8"]}],
    )
    plan = build_plan(validate_config(doc))
    cells = plan.cells
    ids = list(cells)
    for cell in cells.values():  # dependency order
        assert all(ids.index(d) < ids.index(cell.id) for d in cell.deps)
    twin = cells["craft/pgd-8_255@vit_tiny_digits~int8"]
    assert twin.deps == ("export/vit_tiny_digits/int8",)
    assert twin.inputs == {"twin:vit_tiny_digits": "export/vit_tiny_digits/int8:engine"}
    # every PGD artifact (3 models x 2 sources x 2 eps) is replayed on every engine: both directions
    replay = cells["replay/deit_tiny_digits_distilled/torch"]
    assert len(replay.params["artifacts"]) == 12 and "engine" not in replay.inputs
    assert "craft/pgd-4_255@ats_tiny_digits" in replay.params["artifacts"]
    # DeSparsify only on the token-sparse model, evaluated by availability and depth cells, not replayed
    assert [c for c in ids if c.startswith("craft/ds")] == ["craft/ds-8_255@ats_tiny_digits"]
    assert cells["availability/ats_tiny_digits/int8"].params["artifacts"] == ["craft/ds-8_255@ats_tiny_digits"]
    assert "availability/ats_tiny_digits/torch" not in cells and "depth/ats_tiny_digits" in cells
    assert [c for c in ids if c.startswith("blackbox/")] == [
        f"blackbox/{m}/int8/spatial" for m in ("vit_tiny_digits", "deit_tiny_digits_distilled", "ats_tiny_digits")
    ]
    within = build_plan(validate_config(dict(doc, transfer="within-model")))
    assert len(within.cells["replay/deit_tiny_digits_distilled/torch"].params["artifacts"]) == 4


def test_input_hashes_change_only_downstream() -> None:
    doc = _config(whitebox=[{"name": "pgd", "method": "pgd", "eps": ["8/255"]}, {"name": "uap", "method": "uap-sgd", "eps": ["12/255"]}])
    before = build_plan(validate_config(doc))
    assert build_plan(validate_config(doc)).hashes == before.hashes  # deterministic
    changed = dict(doc, whitebox=[{"name": "pgd", "method": "pgd", "eps": ["8/255"], "steps": 3}, doc["whitebox"][1]])
    after = build_plan(validate_config(changed))
    differ = {c for c in before.cells if before.hashes[c] != after.hashes[c]}
    assert differ == {"craft/pgd-8_255@vit_tiny_digits", "replay/vit_tiny_digits/fp32"}
    assert before.dependents("craft/pgd-8_255@vit_tiny_digits") == ["replay/vit_tiny_digits/fp32"]


def test_checkpoint_content_is_hashed_not_its_path(tmp_path: Path) -> None:
    checkpoint = tmp_path / "w.safetensors"
    checkpoint.write_bytes(b"one")
    doc = _config(models=[{"name": "vit_tiny_digits", "checkpoint": str(checkpoint)}])
    first = build_plan(validate_config(doc)).hashes
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    checkpoint.rename(moved)
    doc_moved = _config(models=[{"name": "vit_tiny_digits", "checkpoint": str(moved)}])
    assert build_plan(validate_config(doc_moved)).hashes == first  # moving a checkpoint keeps every cell
    moved.write_bytes(b"two!")
    second = build_plan(validate_config(doc_moved)).hashes
    assert first["export/vit_tiny_digits/fp32"] != second["export/vit_tiny_digits/fp32"]
    same_size = tmp_path / "same.safetensors"
    same_size.write_bytes(b"two?")  # same size, other content: content, not size or name, decides
    third = build_plan(validate_config(_config(models=[{"name": "vit_tiny_digits", "checkpoint": str(same_size)}]))).hashes
    assert third["export/vit_tiny_digits/fp32"] not in {first["export/vit_tiny_digits/fp32"], second["export/vit_tiny_digits/fp32"]}


def test_missing_files_are_listed_together_not_refused_by_validation(tmp_path: Path) -> None:
    doc = _config(
        data={"dataset": str(tmp_path / "imagenet"), "eval_split": "val"},
        models=[{"name": "vit_tiny_digits", "checkpoint": str(tmp_path / "a.pth")}, {"name": "deit_tiny_digits_distilled", "checkpoint": str(tmp_path / "b.pth")}],
    )
    plan = build_plan(validate_config(doc))  # a plan (for --dry-run) without the files
    missing = plan.missing_files()
    assert len(missing) == 3
    assert "image folder" in missing[0] and "a.pth does not exist" in missing[1] and "b.pth does not exist" in missing[2]
    only = plan.restrict(["export/vit_tiny_digits/*"])
    assert len(only.missing_files()) == 2  # only the files the selected cells read


def test_weights_per_model() -> None:
    doc = _config(models=[{"name": "deit_tiny_patch16_224", "random_weights": True}, {"name": "deit_small_patch16_224", "pretrained": True}])
    config = validate_config(doc)
    assert config.models[0].weights() == {"checkpoint": None, "pretrained": None, "random_weights": True}
    assert config.models[1].weights()["pretrained"] is True
    plan = build_plan(config)
    assert plan.cells["export/deit_tiny_patch16_224/fp32"].params["model"]["random_weights"] is True
    assert config.device == "auto" and config.executor.gpus_per_torch_cell is None


def test_select_and_eps_labels() -> None:
    plan = build_plan(validate_config(_config(whitebox=[{"name": "pgd", "method": "pgd", "eps": ["8/255"]}])))
    assert plan.select(["replay/*"]) == ["export/vit_tiny_digits/fp32", "replay/vit_tiny_digits/fp32"]
    assert plan.select(["replay/*", "craft/*"]) == list(plan.cells)
    assert plan.select(["export/*"]) == ["export/vit_tiny_digits/fp32"]
    with pytest.raises(ConfigError, match="no cell matches"):
        plan.select(["nothing/*"])
    assert eps_label(8 / 255) == "8_255" and eps_label(0.5) == "0.5"
    patch = _config(models=["ats_tiny_digits"], whitebox=[{"name": "patch", "method": "desparsify", "params": {"variant": "patch"}}])
    cells = build_plan(validate_config(patch)).cells
    assert cells["craft/patch@ats_tiny_digits"].params["eps"] is None
    assert cells["availability/ats_tiny_digits/fp32"].params["artifacts"] == ["craft/patch@ats_tiny_digits"]


def test_only_plans_the_selection_and_its_true_dependencies() -> None:
    from edgeattack.experiments.plan import NOT_SELECTED

    plan = build_plan(load_config("quickstart"))
    replay = "replay/vit_tiny_digits/fp32"
    only = plan.restrict([replay])
    assert list(only.cells) == ["export/vit_tiny_digits/fp32", replay]  # not the 20 crafts it could replay
    cell = only.cells[replay]
    assert cell.params["artifacts"] == [] and set(cell.params["missing_artifacts"]) == set(plan.cells[replay].optional)
    assert set(cell.params["missing_artifacts"].values()) == {NOT_SELECTED}
    assert only.hashes[replay] != plan.hashes[replay]  # a narrower replay is another result
    twin = "craft/pgd-int8-8_255@vit_tiny_digits~int8"
    assert plan.select([twin]) == ["export/vit_tiny_digits/int8", twin]
    # crafts selected too are replayed; crafts the store holds come along (with what they need)
    both = plan.restrict([replay, "craft/pgd-*@vit_tiny_digits"])
    assert both.cells[replay].params["artifacts"] == [f"craft/pgd-{e}@vit_tiny_digits" for e in ("2_255", "4_255", "8_255")]
    stored = plan.restrict([replay], finished=lambda cell_id: cell_id == twin)
    assert stored.cells[replay].params["artifacts"] == [twin]
    assert list(stored.cells) == ["export/vit_tiny_digits/fp32", "export/vit_tiny_digits/int8", twin, replay]
    assert plan.restrict(list(plan.cells)).hashes == plan.hashes  # everything selected: the same plan
