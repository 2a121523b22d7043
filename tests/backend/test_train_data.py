"""Training patches: determinism, nodata handling, normalisation, GDAL sources, checkpoint files."""
import json

import numpy as np
import pytest
import torch

from lcmsr.normalization import Normalization
from lcmsr.train import checkpoint as ckpt
from _train_helpers import texture
from lcmsr.train.data import (ArraySource, PatchSampler, SourceSet, compute_normalization, dihedral, make_lr,
                              validation_pairs)


def byte_norm(bands=3):
    return Normalization.for_dtype("Byte", bands)


def test_sampler_is_deterministic_and_its_state_resumes():
    sset = SourceSet.open([texture(96, 96), texture(64, 128, seed=1)])
    a = PatchSampler(sset, 4, 32, byte_norm(), seed=7, multiple=16)
    b = PatchSampler(sset, 4, 32, byte_norm(), seed=7, multiple=16)
    hr1, lr1 = a.sample(3)
    state = json.loads(json.dumps(a.state_dict()))  # the state must survive JSON
    hr2, _ = a.sample(3)
    hr1b, _ = b.sample(3)
    assert torch.equal(hr1, hr1b)
    assert hr1.shape == (3, 3, 32, 32) and lr1.shape == (3, 3, 8, 8)
    assert float(hr1.min()) >= -1.0 and float(hr1.max()) <= 1.0
    b.load_state_dict(state)
    assert torch.equal(b.sample(3)[0], hr2)


def test_lr_is_the_quantised_antialiased_bicubic_of_hr():
    hr = torch.from_numpy(texture(32, 32).astype(np.float32))[None]
    lr = make_lr(hr, 4, "Byte")
    assert lr.shape == (1, 3, 8, 8)
    assert torch.equal(lr, lr.round()) and float(lr.min()) >= 0 and float(lr.max()) <= 255
    assert not torch.equal(make_lr(hr, 4, "Float32"), make_lr(hr, 4, "Float32").round())


def test_dihedral_gives_eight_distinct_views():
    a = np.arange(16).reshape(1, 4, 4)
    views = {dihedral(a, k).tobytes() for k in range(8)}
    assert len(views) == 8


def test_mostly_nodata_patches_are_skipped_and_holes_filled():
    img = texture(64, 128).astype(np.float32)
    img[:, :, :64] = -9999.0  # left half nodata
    src = ArraySource(img, name="half", nodata=-9999.0)
    sset = SourceSet.open([src])
    norm = Normalization([0.0] * 3, [255.0] * 3)
    sampler = PatchSampler(sset, 2, 32, norm, seed=0, multiple=16, max_nodata=0.1)
    hr, _ = sampler.sample(16)
    assert float(hr.min()) > -1.5, "a nodata value reached a training patch"

    all_nodata = ArraySource(np.full((3, 64, 64), 0, np.uint8), name="empty.tif", nodata=0)
    sampler = PatchSampler(SourceSet.open([all_nodata]), 2, 32, byte_norm(), seed=0, multiple=16, max_tries=5)
    with pytest.raises(ValueError, match="empty.tif"):
        sampler.sample(1)


def test_normalisation_byte_and_percentiles_for_16_bit():
    rng = np.random.default_rng(0)
    assert compute_normalization(SourceSet.open([texture(64, 64)]), rng) == byte_norm()
    img = rng.integers(1000, 3001, size=(2, 200, 200)).astype(np.uint16)
    img[1] = img[1] * 2
    norm = compute_normalization(SourceSet.open([img]), rng, max_pixels=20000)
    assert norm.lo[0] == pytest.approx(1020, abs=15) and norm.hi[0] == pytest.approx(2980, abs=15)
    assert norm.lo[1] == pytest.approx(2040, abs=30) and norm.hi[1] == pytest.approx(5960, abs=30)


def test_source_errors_name_the_problem():
    with pytest.raises(ValueError, match="mix data types"):
        SourceSet.open([texture(64, 64), texture(64, 64).astype(np.uint16)])
    with pytest.raises(ValueError, match="band 5"):
        SourceSet.open([texture(64, 64)], bands=[1, 5])
    sset = SourceSet.open([texture(64, 64)])
    with pytest.raises(ValueError, match="multiple of 16"):
        PatchSampler(sset, 4, 40, byte_norm(), seed=0, multiple=16)
    with pytest.raises(ValueError, match="smaller than the HR patch"):
        PatchSampler(sset, 4, 128, byte_norm(), seed=0, multiple=16)
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        SourceSet.open(["/nonexistent/nope.tif"])


def test_npy_sources_train_without_gdal_and_are_never_unpickled(tmp_path):
    from lcmsr.train.data import open_source

    img = texture(64, 80)
    np.save(tmp_path / "tile.npy", img)
    src = open_source(str(tmp_path / "tile.npy"))
    assert not src.array.flags.owndata  # a view of the memory map, not a copy in RAM
    assert src.data_type == "Byte" and (src.height, src.width) == (64, 80)
    np.testing.assert_array_equal(src.read(3, 5, 16, 8, [1, 2, 3])[0], img[:, 5:13, 3:19])
    hr, lr = PatchSampler(SourceSet.open([str(tmp_path / "tile.npy")]), 4, 32, byte_norm(), seed=0,
                          multiple=16).sample(2)
    assert hr.shape == (2, 3, 32, 32) and lr.shape == (2, 3, 8, 8)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy: not a plain numeric .npy"):
        open_source(str(tmp_path / "objects.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy"):
        open_source(str(tmp_path / "junk.npy"))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        open_source(str(tmp_path / "missing.npy"))


def test_gdal_source_band_selection_alpha_and_mask(tmp_path):
    gdal = pytest.importorskip("osgeo.gdal")
    path = str(tmp_path / "rgba.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 96, 64, 4, gdal.GDT_Byte)
    rgb = texture(64, 96)
    alpha = np.full((64, 96), 255, np.uint8)
    alpha[:, :48] = 0  # left half transparent
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(rgb[i])
    ds.GetRasterBand(4).WriteArray(alpha)
    ds.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    sset = SourceSet.open([path])
    assert sset.bands == [1, 2, 3] and sset.data_type == "Byte"  # alpha is not a band to learn
    data, valid = sset.sources[0].read(40, 0, 16, 8, [2])
    assert data.shape == (1, 8, 16) and np.array_equal(data[0], rgb[1, :8, 40:56])
    assert valid.shape == (1, 8, 16) and not valid[0, :, :8].any() and valid[0, :, 8:].all()
    sampler = PatchSampler(sset, 2, 32, byte_norm(), seed=3, multiple=16, augment=False)
    hr, _ = sampler.sample(8)
    assert hr.shape == (8, 3, 32, 32)
    pairs = validation_pairs(SourceSet.open([path], bands=[3]), 2, 32, byte_norm(1), multiple=16)
    assert all(hr.shape == (1, 1, 32, 32) and lr.shape == (1, 1, 16, 16) for hr, lr in pairs)


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = ckpt.flatten_optimizer("opt", opt)
    tensors.update(ckpt.module_tensors("net", net))
    path = ckpt.save_checkpoint(tmp_path, 3, tensors, {"optimizer": meta})
    loaded = ckpt.load_checkpoint(tmp_path)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    ckpt.load_module("net", net2, loaded.tensors)
    ckpt.restore_optimizer("opt", opt2, loaded.tensors, loaded.state["optimizer"])
    assert loaded.step == 3 and loaded.path == path
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.5, 0.9)
    x = torch.randn(4, 3)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight)


def test_an_incomplete_newer_checkpoint_falls_back_to_the_previous(tmp_path):
    t = {"w": torch.arange(4.0)}
    ckpt.save_checkpoint(tmp_path, 10, t, {"a": 1})
    ckpt.save_checkpoint(tmp_path, 20, {"w": torch.arange(4.0) * 2}, {"a": 2})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000020.json"]  # keep=1
    # A run killed while writing step 30: the tensor file is truncated after its JSON was
    # (hypothetically) written — the size check catches it.
    ckpt.save_checkpoint(tmp_path, 30, {"w": torch.arange(4.0) * 3}, {"a": 3}, keep=2)
    st = tmp_path / "step-00000030.safetensors"
    st.write_bytes(st.read_bytes()[:-4])
    ck = ckpt.load_checkpoint(tmp_path)
    assert ck.step == 20 and torch.equal(ck.tensors["w"], torch.arange(4.0) * 2)
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(tmp_path / "step-00000030.json")
