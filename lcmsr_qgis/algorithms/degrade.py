"""`lcmsr:degrade` — the LR raster of an HR raster, made as in training (LR/HR pairs for evaluation)."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer

from .base import TRAINING_GROUP, LcmsrAlgorithm


class DegradeAlgorithm(LcmsrAlgorithm):
    INPUT = "INPUT"
    SCALE = "SCALE"
    OUTPUT = "OUTPUT"

    def name(self):
        return "degrade"

    def displayName(self):  # noqa: N802
        return "Degrade raster (make LR from HR)"

    GROUP, GROUP_ID = TRAINING_GROUP

    def shortHelpString(self):  # noqa: N802
        return (
            "Makes the low-resolution version of a high-resolution raster with the antialiased bicubic "
            "downsampling the models are trained with, so that super-resolving it can be compared with the "
            "original.<br><br>"
            "<b>Scale</b>: 2, 3, 4 or 8; the output has 1/scale of the pixels in each direction and a pixel "
            "size scale times larger (CRS and origin kept). Data type and nodata are those of the input; its format "
            "follows the output's extension as for Super-resolve (formats that write files named after the output "
            "and GeoPackages with other layers are refused; nodata values that differ per band need .img).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "High-resolution raster"))
        self.add_scale_parameter(self.SCALE)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Low-resolution raster"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        src = self.gdal_source(layer, self.INPUT)
        scale = self.scale_value(parameters, self.SCALE, context)
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        self.run_job("degrade", feedback, src=src, dst=dst, scale=scale)
        if context.willLoadLayerOnCompletion(dst):
            details = context.layerToLoadOnCompletionDetails(dst)
            details.name = f"{layer.name()} /{scale}"
            details.forceName = True
        return {self.OUTPUT: dst}
