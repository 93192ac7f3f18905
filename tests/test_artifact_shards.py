"""Schema-2 artifacts: grid encoding, the streaming writer, the lazy reader, bad files, and merging shards."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeattack.artifact_merge import merge_artifacts
from edgeattack.artifact_shards import ShardedDeltas, decode_levels, encode_rows
from edgeattack.artifacts import ArtifactMeta, ArtifactWriter, PerturbationArtifact
from edgeattack.distributed import Shard
from edgeattack.errors import ArtifactError

SIZE = (3, 4, 4)


def meta(kind: str = "per_image", **changes) -> ArtifactMeta:
    fields = {"kind": kind, "method": "pgd", "norm": "linf", "eps": 4 / 255, "input_size": SIZE, "dataset": "d", "split": "s"}
    fields.update(seed=0, **changes)
    return ArtifactMeta(**fields, params={"steps": 5})


def grid_deltas(n: int, seed: int = 0) -> np.ndarray:
    """What a quantized attack on uint8-decoded images gives: (adv - clean) of two float32 grid images."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(4, 252, (n, *SIZE))
    adv = clean + rng.integers(-4, 5, (n, *SIZE))
    return (adv.astype(np.float32) / np.float32(255)) - (clean.astype(np.float32) / np.float32(255))


def mixed_deltas(n: int, seed: int = 0) -> np.ndarray:
    """Grid rows, with every third row off the grid (a black-box attack's raw deltas)."""
    delta = grid_deltas(n, seed)
    delta[::3] = np.random.default_rng(seed + 1).uniform(-4 / 255, 4 / 255, (len(delta[::3]), *SIZE))
    return delta


def write(path: Path, delta: np.ndarray, indices: np.ndarray, *, shard_size: int = 4, the_meta=None, **params) -> Path:
    with ArtifactWriter(path, the_meta or meta(), shard_size=shard_size) as writer:
        for begin in range(0, len(delta), 3):  # batches that do not line up with the shards
            writer.add(delta[begin : begin + 3], indices[begin : begin + 3])
        return writer.close(params=params or None)


def members(path: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: info for info in archive.infolist()}


def test_grid_rows_are_stored_as_levels_and_decode_to_the_exact_level():
    delta = grid_deltas(5)
    stored = encode_rows(delta)
    assert stored.dtype == np.int8
    k = np.rint(delta.astype(np.float64) * 255)
    assert np.array_equal(stored, k)
    decoded = decode_levels(stored, 1 / 255)
    assert np.array_equal(decoded, (k / 255).astype(np.float32)) and np.abs(decoded - delta).max() <= 6e-8
    big = grid_deltas(2)
    big[1, 0, 0, 0] = np.float32(-200) / np.float32(255)
    assert encode_rows(big).dtype == np.int16 and encode_rows(big)[1, 0, 0, 0] == -200
    raw = np.random.default_rng(0).uniform(-0.1, 0.1, (3, *SIZE)).astype(np.float32)
    assert np.array_equal(encode_rows(raw), raw)
    mixed = mixed_deltas(4)
    out = encode_rows(mixed)
    assert out.dtype == np.float32 and np.array_equal(out[0], mixed[0]) and np.array_equal(out[1], decode_levels(np.rint(mixed[1] * 255), 1 / 255))


def test_writer_streams_shards_and_round_trips(tmp_path: Path):
    delta, indices = mixed_deltas(14), np.arange(100, 114)
    with ArtifactWriter(tmp_path / "a", meta(), shard_size=4) as writer:
        batch = delta[:3].copy()
        writer.add(batch, indices[:3])
        batch[:] = 7.0  # the caller reuses its buffer: what was added must not change
        writer.add(delta[3:3], indices[3:3])
        writer.add(delta[3:], indices[3:])
        assert writer.rows == 14
        path = writer.close(params={"success_rate": 0.5})
    assert path == tmp_path / "a.npz"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    infos = members(path)
    assert sorted(n for n in infos if n.startswith("delta_")) == [f"delta_0000{i}.npy" for i in range(4)]
    assert all(infos[n].compress_type == zipfile.ZIP_DEFLATED for n in infos)
    loaded = PerturbationArtifact.load(path)
    storage = loaded.meta.storage
    assert loaded.meta.schema_version == 2 and [s["rows"] for s in storage["shards"]] == [4, 4, 4, 2]
    assert storage["scale"] == 1 / 255 and storage["shard_size"] == 4
    assert loaded.meta.params == {"steps": 5, "success_rate": 0.5}
    assert np.array_equal(loaded.delta[:], _canonical(delta)) and np.abs(loaded.delta[:] - delta).max() <= 6e-8
    assert np.array_equal(loaded.indices, indices)
    grid_only = write(tmp_path / "g.npz", grid_deltas(8), np.arange(8))
    grid_storage = PerturbationArtifact.load(grid_only).meta.storage
    assert grid_storage["dtype"] == "int8" and {s["dtype"] for s in grid_storage["shards"]} == {"int8"}


def _canonical(delta: np.ndarray) -> np.ndarray:
    """What a file holds for `delta`: each row encoded on its own (grid rows become their levels)."""
    rows = [encode_rows(row[None]) for row in delta]
    return np.concatenate([decode_levels(r, 1 / 255) if r.dtype.kind == "i" else r for r in rows])


def test_writer_refuses_bad_rows_and_leaves_nothing_when_interrupted(tmp_path: Path):
    target = tmp_path / "a.npz"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), ArtifactWriter(target, meta(), shard_size=2) as writer:
        writer.add(grid_deltas(5), np.arange(5))
        raise RuntimeError("crash mid-run")
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
    writer = ArtifactWriter(tmp_path / "b.npz", meta())
    with pytest.raises(ArtifactError, match="added twice"):
        writer.add(grid_deltas(2), np.array([3, 3]))
    writer.add(grid_deltas(1), np.array([4]))
    with pytest.raises(ArtifactError, match=r"added twice.*\[4\]"):
        writer.add(grid_deltas(1), np.array([4]))
    bad = grid_deltas(2)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ArtifactError, match="NaN"):
        writer.add(bad, np.array([5, 6]))
    with pytest.raises(ArtifactError, match=r"\[n, 3, 4, 4\]"):
        writer.add(np.zeros((1, 3, 4, 5), np.float32), np.array([7]))
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
    universal = ArtifactWriter(tmp_path / "u.npz", meta("universal"))
    with pytest.raises(ArtifactError, match="per-image rows"):
        universal.add(grid_deltas(1), np.array([0]))
    universal.abort()


def count_decodes(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = ShardedDeltas._decode

    def spy(self, info):
        seen.append(info.member)
        return original(self, info)

    monkeypatch.setattr(ShardedDeltas, "_decode", spy)
    return seen


def test_lazy_reader_reads_only_the_shards_it_needs(tmp_path: Path, monkeypatch):
    delta, indices = mixed_deltas(14), np.arange(14) * 10
    path = write(tmp_path / "a.npz", delta, indices)
    expected = _canonical(delta)
    decoded = count_decodes(monkeypatch)
    art = PerturbationArtifact.load(path)
    assert art.lazy and decoded == [] and art.delta.shape == (14, *SIZE) and len(art.delta) == 14
    assert np.array_equal(art.delta[5], expected[5]) and decoded == ["delta_00001.npy"]
    assert np.array_equal(art.delta[-1], expected[13]) and np.array_equal(art.delta[np.array([13, 0, 5])], expected[[13, 0, 5]])
    assert np.array_equal(art.delta[2:11:3], expected[2:11:3]) and art.delta[2:11:3].dtype == np.float32
    assert np.array_equal(art.delta[expected[:, 0, 0, 0] > 0], expected[expected[:, 0, 0, 0] > 0])
    assert len(art.delta._cache) <= 2
    with pytest.raises(IndexError):
        art.delta[14]
    images = np.full((3, *SIZE), 0.5, np.float32)
    out = art.apply(images, indices=np.array([130, 0, 50]))
    assert np.array_equal(out, np.clip(images + expected[[13, 0, 5]], 0, 1))
    assert art.covers(np.array([10, 11])).tolist() == [True, False] and art.positions_for(np.array([130])).tolist() == [13]
    decoded.clear()
    assert art.max_norm() == pytest.approx(np.abs(expected).max()) and not art.over_budget()
    assert sorted(decoded) == [f"delta_0000{i}.npy" for i in range(4)]
    art.check_budget(label="a")
    art.validate()
    assert sorted(decoded) == [f"delta_0000{i}.npy" for i in range(4)]  # computed once, cached
    assert np.array_equal(np.asarray(art.delta), expected)


def test_universal_and_class_universal_are_v2_and_load_into_memory(tmp_path: Path):
    rng = np.random.default_rng(0)
    uni = PerturbationArtifact(np.round(rng.uniform(-4, 4, (1, *SIZE))) / 255, meta("universal"))
    loaded = PerturbationArtifact.load(uni.save(tmp_path / "u"))
    assert loaded.meta.schema_version == 2 and not loaded.lazy and isinstance(loaded.delta, np.ndarray)
    assert np.allclose(loaded.delta, uni.delta, atol=1e-7) and loaded.meta.storage["dtype"] == "int8"
    cls = PerturbationArtifact(rng.uniform(-0.1, 0.1, (5, *SIZE)), meta("class_universal"))
    again = PerturbationArtifact.load(cls.save(tmp_path / "c", shard_size=2))
    assert np.array_equal(again.delta, cls.delta) and len(again.meta.storage["shards"]) == 3
    mask = np.zeros((1, 4, 4), np.float32)
    patch = PerturbationArtifact(np.zeros((1, *SIZE)), meta("universal"), mask=mask, patch=np.ones(SIZE, np.float32))
    assert np.array_equal(PerturbationArtifact.load(patch.save(tmp_path / "p")).mask, mask)


def rewrite(path: Path, out: Path, *, drop: str | None = None, meta_edit=None) -> Path:
    """A copy of the artifact zip without member `drop` and with its meta edited."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if info.filename == drop:
                continue
            data = source.read(info.filename)
            if info.filename == "meta.npy" and meta_edit is not None:
                doc = json.loads(str(np.load(path, allow_pickle=False)["meta"][()]))
                meta_edit(doc)
                with target.open("meta.npy", "w") as handle:
                    np.lib.format.write_array(handle, np.asarray(json.dumps(doc)))
                continue
            target.writestr(info, data)
    return out


def test_bad_files_raise_artifact_errors_naming_the_file(tmp_path: Path):
    path = write(tmp_path / "a.npz", grid_deltas(10), np.arange(10))
    data = bytearray(path.read_bytes())
    info = members(path)["delta_00001.npy"]
    middle = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data[middle] ^= 0xFF
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"corrupt\.npz.*delta_00001"):
        art = PerturbationArtifact.load(corrupt)
        art.delta[5]
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"truncated\.npz.*corrupt"):
        PerturbationArtifact.load(truncated)
    dropped = rewrite(path, tmp_path / "dropped.npz", drop="delta_00002.npy")
    with pytest.raises(ArtifactError, match=r"dropped\.npz.*meta lists 3 delta shards but the file holds 2"):
        PerturbationArtifact.load(dropped)
    fewer = rewrite(path, tmp_path / "fewer.npz", meta_edit=lambda d: d["storage"]["shards"].pop())
    with pytest.raises(ArtifactError, match=r"fewer\.npz.*meta lists 2"):
        PerturbationArtifact.load(fewer)
    unscaled = rewrite(path, tmp_path / "unscaled.npz", meta_edit=lambda d: d["storage"].pop("scale"))
    with pytest.raises(ArtifactError, match=r"unscaled\.npz.*int8 levels but the storage meta has no scale"):
        PerturbationArtifact.load(unscaled)


def test_schema_1_files_still_load(tmp_path: Path):
    doc = json.loads(meta().to_json())
    doc["schema_version"] = 1
    doc.pop("storage", None)
    delta = np.random.default_rng(0).uniform(-0.01, 0.01, (3, *SIZE)).astype(np.float32)
    np.savez_compressed(tmp_path / "v1.npz", delta=delta, indices=np.array([4, 5, 6]), meta=np.asarray(json.dumps(doc)))
    art = PerturbationArtifact.load(tmp_path / "v1.npz")
    assert art.meta.schema_version == 1 and not art.lazy and np.array_equal(art.delta, delta)
    assert np.array_equal(art.apply(np.zeros((1, *SIZE), np.float32), indices=np.array([5])), np.clip(delta[1:2], 0, 1))
    upgraded = PerturbationArtifact.load(art.save(tmp_path / "v2.npz"))
    assert upgraded.meta.schema_version == 2 and np.array_equal(upgraded.delta[:], delta)


def test_merge_of_shards_equals_writing_everything_at_once(tmp_path: Path):
    delta = mixed_deltas(23)
    indices = np.sort(np.random.default_rng(3).choice(1000, 23, replace=False))
    target = list(range(23))
    whole = PerturbationArtifact.load(write(tmp_path / "whole.npz", delta, indices, target=target))
    parts = []
    for shard in (Shard(0, 2), Shard(1, 2)):
        pos = shard.positions(len(indices))
        the_meta = meta()
        the_meta = ArtifactMeta(**{**the_meta.__dict__, "params": {"steps": 5, "shard": shard.text, "device": f"cuda:{shard.index}"}})
        parts.append(
            write(tmp_path / f"part{shard.index}.npz", delta[pos], indices[pos], the_meta=the_meta,
                  success_rate=0.1 * (shard.index + 1), target=[target[p] for p in pos])
        )
    merged = PerturbationArtifact.load(merge_artifacts(parts[::-1], tmp_path / "merged"))
    assert merged.lazy and np.array_equal(merged.indices, whole.indices)
    assert np.array_equal(merged.delta[:].view(np.uint32), whole.delta[:].view(np.uint32))
    params = merged.meta.params
    assert params["images"] == 23 and not {"shard", "success_rate", "device"} & set(params)
    assert params["target"] == target and params["steps"] == 5
    assert [(s["file"], s["shard"], s["images"], s["params"]["success_rate"]) for s in params["shards"]] == [
        ("part1.npz", "1/2", 11, 0.2), ("part0.npz", "0/2", 12, 0.1)
    ]


def test_merge_refuses_what_is_not_one_run(tmp_path: Path):
    a = write(tmp_path / "a.npz", grid_deltas(4), np.arange(4))
    b = write(tmp_path / "b.npz", grid_deltas(4), np.arange(4, 8))
    with pytest.raises(ArtifactError, match="at least two"):
        merge_artifacts([a], tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"nope\.npz does not exist"):
        merge_artifacts([a, tmp_path / "nope.npz"], tmp_path / "m")
    eps = write(tmp_path / "eps.npz", grid_deltas(4), np.arange(4, 8), the_meta=meta(eps=8 / 255))
    with pytest.raises(ArtifactError, match="differ in eps"):
        merge_artifacts([a, eps], tmp_path / "m")
    steps = ArtifactMeta(**{**meta().__dict__, "params": {"steps": 10}})
    with pytest.raises(ArtifactError, match=r"differ in params\.steps: 5 vs 10"):
        merge_artifacts([a, write(tmp_path / "s.npz", grid_deltas(4), np.arange(4, 8), the_meta=steps)], tmp_path / "m")
    overlap = write(tmp_path / "o.npz", grid_deltas(4), np.arange(3, 7))
    with pytest.raises(ArtifactError, match=r"a\.npz and o\.npz overlap: both hold dataset index 3 \(4 indices"):
        merge_artifacts([a, b, overlap], tmp_path / "m")
    uni = PerturbationArtifact(np.zeros((1, *SIZE)), meta("universal")).save(tmp_path / "u.npz")
    with pytest.raises(ArtifactError, match=r"u\.npz is a universal artifact"):
        merge_artifacts([a, uni], tmp_path / "m")
    assert not (tmp_path / "m.npz").exists()


def test_merge_artifacts_command(tmp_path: Path):
    from edgeattack.cli.app import app

    a = write(tmp_path / "a.npz", grid_deltas(4), np.arange(4))
    b = write(tmp_path / "b.npz", grid_deltas(4, seed=1), np.arange(4, 8))
    log = ["--log-file", str(tmp_path / "log.txt")]
    result = CliRunner().invoke(app, [*log, "merge-artifacts", str(tmp_path / "m.npz"), str(b), str(a)])
    assert result.exit_code == 0, result.output
    assert "merged 2 artifacts (8 images)" in result.output
    assert PerturbationArtifact.load(tmp_path / "m.npz").indices.tolist() == list(range(8))
    bad = CliRunner().invoke(app, [*log, "merge-artifacts", str(tmp_path / "m2.npz"), str(a), str(a)])
    assert bad.exit_code == 2 and "overlap" in bad.output and "Traceback" not in bad.output
