"""The output-path rule (lcmsr.paths), temporary names that fit the file system (lcmsr.atomic), the CLI's
start-up sweep and stopping signals, and the messages for a self-referencing VRT and host memory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lcmsr import atomic
from lcmsr.paths import OutputPathError, check_checkpoint_folder, check_outputs, raster_outputs, training_paths


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


# ---------------------------------------------------------------- the rule

def test_an_output_that_is_an_input_under_any_name_is_refused(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    os.link(model, tmp_path / "hard.safetensors")
    os.symlink(model, tmp_path / "link.tif")
    (tmp_path / "sub").mkdir()
    for spelling in (model, tmp_path / "hard.safetensors", tmp_path / "link.tif", tmp_path / "sub" / ".." / model.name):
        with pytest.raises(OutputPathError, match="the model file") as err:
            check_outputs([("OUT", spelling)], [("IN", tmp_path / "in.tif"), ("the model file", model)])
        assert str(spelling) in str(err.value) and "\n" not in str(err.value)
    # A file not yet written can still be the input through a symlinked folder.
    os.symlink(tmp_path, tmp_path / "alias")
    with pytest.raises(OutputPathError):
        check_outputs([("OUT", tmp_path / "alias" / "new.tif")], [("IN", tmp_path / "new.tif")])
    assert model.read_bytes() == b"weights"


def test_distinct_files_pass_and_two_outputs_may_not_be_one(tmp_path):
    (tmp_path / "in.tif").write_bytes(b"x")
    check_outputs([("--json", tmp_path / "r.json"), ("--html", tmp_path / "r.html")],
                  [("--hr", tmp_path / "in.tif"), ("--model", None)])
    with pytest.raises(OutputPathError, match="one would overwrite the other"):
        check_outputs([("--json", tmp_path / "r"), ("--html", tmp_path / "r")], [])


def test_a_raster_output_may_not_replace_an_input_as_its_side_car(tmp_path):
    # Writing a.tif removes a stale a.tif.ovr: an input named so would be lost.
    with pytest.raises(OutputPathError, match="side-car"):
        check_outputs(raster_outputs("OUT", tmp_path / "a.tif"), [("IN", tmp_path / "a.tif.ovr")])


def test_a_checkpoint_folder_may_not_hold_the_stage1_checkpoint_it_would_prune(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    with pytest.raises(OutputPathError, match="would delete it"):
        check_checkpoint_folder(ck, [("--stage1", ck / "step-00000500.json")])
    with pytest.raises(OutputPathError):
        check_checkpoint_folder(ck, [("--stage1", ck)])
    check_checkpoint_folder(ck, [("training source 1", ck / "scene.tif")])   # not a checkpoint: never deleted


def test_training_paths_name_stage1_pair_and_the_default_folder():
    opts = SimpleNamespace(out="final", sources=["a.tif", object()], val_sources=[], stage1=None, base_model=None,
                           checkpoint_dir=None)
    outputs, inputs, folder = training_paths(opts, "autoencoder")
    assert [p for _, p in outputs] == ["final.safetensors", "final.json"]
    assert [p for _, p in inputs] == ["a.tif"] and folder == os.path.join("checkpoints", "autoencoder")


def test_training_refuses_its_model_as_output_before_anything_runs(tmp_path):
    pytest.importorskip("torch")
    from lcmsr.train import TrainOptions
    from lcmsr.train.stage3 import train_decoder

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not even loaded")
    with pytest.raises(OutputPathError):
        train_decoder(TrainOptions(sources=[str(tmp_path / "a.tif")], base_model=str(model), out=str(model)))
    assert model.read_bytes() == b"not even loaded"


# ---------------------------------------------------------------- temporary names

def test_temp_names_of_a_255_byte_output_fit_and_are_swept(tmp_path):
    for name in ("a" * 251 + ".tif", "é" * 125 + ".tif", "short.tif"):
        assert len(os.fsencode(name)) <= 255
        tmp = atomic.temp_path(tmp_path / name)
        base = os.path.basename(tmp)
        assert len(os.fsencode(base + ".aux.xml")) <= 255, base
        open(tmp, "wb").close()   # the file system takes it
        base.encode("utf-8")      # no half character
        if name == "short.tif":
            assert base.startswith(".short.tif.partial-")
        os.remove(tmp)
    a, b = (os.path.basename(atomic.temp_path(tmp_path / ("x" * 250 + s))) for s in (".tif", ".img"))
    assert a.split(".partial-")[0] != b.split(".partial-")[0]   # two long names stay apart
    dead = _dead_pid()
    stale = tmp_path / atomic.temp_path(tmp_path / ("z" * 251 + ".tif")).replace(f"-{os.getpid()}-", f"-{dead}-")
    stale.write_bytes(b"partial")
    assert atomic.sweep_stale(tmp_path) == [stale.name]


def test_temp_folder_is_swept_once_its_process_is_gone(tmp_path):
    mine = atomic.temp_folder(tmp_path, "lcmsr-eval")
    theirs = tmp_path / os.path.basename(mine).replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    theirs.mkdir()
    (theirs / "sr.tif").write_bytes(b"x")
    assert atomic.sweep_stale(tmp_path) == [theirs.name]
    assert os.path.isdir(mine)


# ---------------------------------------------------------------- the CLI

def test_cli_refuses_an_output_that_is_the_model_and_changes_nothing(tmp_path, capsys):
    from lcmsr.cli import main

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    (tmp_path / "in.tif").write_bytes(b"raster")
    for argv in (["sr", str(tmp_path / "in.tif"), str(model), "--model", str(model)],
                 ["eval", "--sr", str(tmp_path / "in.tif"), "--hr", str(tmp_path / "in.tif"),
                  "--html", str(tmp_path / "in.tif")],
                 ["set-domain", str(model), str(model), "--preset", "aerial-rgb"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lcmsr: error:") and len(err.splitlines()) == 1, err
        assert "would destroy that input" in err, err   # the rule, not a later failure on the odd files
    assert model.read_bytes() == b"weights" and (tmp_path / "in.tif").read_bytes() == b"raster"


def test_cli_sweeps_a_killed_runs_temps_whatever_the_output_name(tmp_path, capsys):
    pytest.importorskip("osgeo.gdal")
    from test_raster_standin import textured, write_raster

    from lcmsr.cli import main

    src = write_raster(tmp_path / "in.tif", textured(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    left = [out / f".sr.tif.partial-{atomic.HOST_TAG}-{dead}-0a1b2c3d", out / f".sr.tif.partial-{atomic.HOST_TAG}-"
            f"{dead}-0a1b2c3d.aux.xml", out / f".lcmsr-blend.partial-{atomic.HOST_TAG}-{dead}-99999999"]
    live = out / f".x.tif.partial-{atomic.HOST_TAG}-{os.getppid()}-12345678"
    for p in left[:2] + [live]:
        p.write_bytes(b"partial")
    left[2].mkdir()
    # Even a command that fails before writing anything sweeps the folders it would write into.
    assert main(["degrade", str(tmp_path / "missing.tif"), str(out / "lr.tif"), "--quiet"]) == 2
    assert os.listdir(out) == [live.name]
    for p in left[:2]:
        p.write_bytes(b"partial")
    assert main(["degrade", str(src), str(out / "lr.tif"), "--scale", "2", "--quiet"]) == 0
    assert sorted(os.listdir(out)) == sorted(["lr.tif", live.name])


def test_a_stopping_signal_unwinds_and_the_handlers_return(tmp_path):
    from lcmsr.cli import Stopped, _stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    tmp = None
    with pytest.raises(Stopped) as err:
        with _stop_on_signals():
            with atomic.AtomicPath(tmp_path / "out.bin") as tmp:
                open(tmp, "wb").close()
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):   # the handler runs between bytecodes
                    pass
    assert err.value.signum == signal.SIGTERM and not os.path.exists(tmp) and not os.listdir(tmp_path)
    assert signal.getsignal(signal.SIGTERM) == before


# ---------------------------------------------------------------- messages

def test_a_self_referencing_vrt_is_named_not_a_pool_size_hint(tmp_path):
    pytest.importorskip("osgeo.gdal")
    from lcmsr.raster import io

    def vrt(name, source):
        (tmp_path / name).write_text(
            '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
            f'<SourceFilename relativeToVRT="1">{source}</SourceFilename><SourceBand>1</SourceBand>'
            '</SimpleSource></VRTRasterBand></VRTDataset>')
        return tmp_path / name

    with pytest.raises(io.RasterError, match=r"VRT .*self\.vrt refers to itself"):
        io.open_raster(vrt("self.vrt", "self.vrt"))
    vrt("b.vrt", "a.vrt")
    with pytest.raises(io.RasterError, match=r"refers to itself through a\.vrt -> b\.vrt -> a\.vrt"):
        io.open_raster(vrt("a.vrt", "b.vrt"))
    from test_raster_standin import textured, write_raster

    write_raster(tmp_path / "data.tif", textured(8, 8, bands=1))
    assert io.open_raster(vrt("ok.vrt", "data.tif")).RasterCount == 1


def test_host_memory_exhaustion_names_the_input_and_the_way_out(tmp_path):
    pytest.importorskip("osgeo.gdal")
    from test_raster_standin import StandInModel, textured, write_raster

    from lcmsr.raster.pipeline import SROptions, superresolve

    class Starved(StandInModel):
        def sr(self, lr, **kw):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 123456789012 bytes. Error code 12")

    src = write_raster(tmp_path / "in.tif", textured(40, 40))
    with pytest.raises(MemoryError) as err:
        superresolve(src, tmp_path / "sr.tif", Starved(scale=2), SROptions(tile=32, overlap=4, device="cpu"))
    text = str(err.value)
    assert str(src) in text and "--tile" in text and "--batch" in text and "Allocator" not in text
    assert os.listdir(tmp_path) == ["in.tif"]
