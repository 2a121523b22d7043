"""`lcmsr:superresolve` with its optional UNCERTAINTY output: written beside the SR raster, loaded as a named
layer with a single-band pseudocolour ramp, and the SR raster unchanged by asking for it."""
import os
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProject, QgsSingleBandPseudoColorRenderer

REPO = Path(__file__).resolve().parents[2]
SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"


def fast(parameters):
    return dict({"TILE": 64, "OVERLAP": 8, "BATCH": 4, "DEVICE": 2}, **parameters)


def test_uncertainty_output_is_loaded_styled_and_leaves_the_sr_raster_unchanged(provider, tiny_model, tmp_path,
                                                                               qgis_new_project):
    import processing
    from osgeo import gdal

    out, unc, plain = tmp_path / "sr.tif", tmp_path / "unc.tif", tmp_path / "plain.tif"
    result = processing.runAndLoadResults("lcmsr:superresolve", fast({
        "INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OUTPUT": str(out), "UNCERTAINTY": str(unc), "SAMPLES": 3,
        "LR_CONSISTENCY": 2}))
    assert os.path.samefile(result["UNCERTAINTY"], unc)
    (layer,) = QgsProject.instance().mapLayersByName("neon_lr x4 LCMSR uncertainty")
    assert os.path.samefile(layer.source(), unc) and layer.isValid() and layer.bandCount() == 1
    renderer = layer.renderer()
    band = renderer.inputBand() if hasattr(renderer, "inputBand") else renderer.band()   # band(): deprecated in 3.38
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer) and band == 1
    assert renderer.classificationMin() == 0.0 and renderer.classificationMax() > 0
    assert len(renderer.shader().rasterShaderFunction().colorRampItemList()) >= 2
    sr_layer, = QgsProject.instance().mapLayersByName("neon_lr x4 LCMSR")
    assert sr_layer.extent() == layer.extent() and sr_layer.width() == layer.width()
    del layer, sr_layer, renderer
    QgsProject.instance().removeAllMapLayers()
    processing.run("lcmsr:superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OUTPUT": str(plain),
                                                "LR_CONSISTENCY": 2}))
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), gdal.Open(str(plain)).ReadAsArray())


def test_uncertainty_with_the_faithful_sampler_is_refused_in_one_line(provider, tiny_model, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException, match="faithful sampler draws no noise"):
        processing.run("lcmsr:superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "SAMPLER": 1,
                                                    "OUTPUT": str(tmp_path / "x.tif"),
                                                    "UNCERTAINTY": str(tmp_path / "u.tif")}))
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "u.tif").exists()
