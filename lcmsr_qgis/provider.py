"""The Processing provider `lcmsr`: the toolbox, batch mode, the modeler and qgis_process."""
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

PROVIDER_ID = "lcmsr"


def plugin_icon() -> QIcon:
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "icon.svg"), os.path.join(here, os.pardir, "resources", "icon.svg")):
        if os.path.exists(candidate):
            return QIcon(candidate)
    return QIcon()


class LcmsrProvider(QgsProcessingProvider):
    def id(self):
        return PROVIDER_ID

    def name(self):
        return "LCMSR super-resolution"

    def longName(self):  # noqa: N802
        return "LCMSR single-step diffusion super-resolution"

    def icon(self):
        return plugin_icon()

    def loadAlgorithms(self):  # noqa: N802
        # Algorithm modules import the backend lazily, so listing them never needs torch.
        from .algorithms import all_algorithms

        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        """The file chooser of every raster output offers what the backend writes: the extensions of the
        GDAL drivers that write files (lcmsr.raster.io.output_formats), GeoTIFF first."""
        try:
            from lcmsr.raster.io import output_formats
        except ImportError:  # no GDAL bindings: QGIS's own list
            return super().supportedOutputRasterLayerExtensions()
        return sorted(output_formats(), key=lambda ext: (ext not in ("tif", "tiff"), ext))
