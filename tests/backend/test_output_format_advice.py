"""A format refused for its band count or type proposes only formats that hold the output, in one line."""
import pytest
from osgeo import gdal

from lcmsr.raster import io


@pytest.mark.parametrize("name, bands, data_type, refused", [
    ("out.gpkg", 4, gdal.GDT_UInt16, ".gpkg"),   # GeoPackage keeps non-Byte data in one band only
    ("out.png", 5, gdal.GDT_UInt16, ".png"),     # PNG: at most 4 bands (GDAL's reason spans two lines)
])
def test_a_refused_format_is_not_proposed_again(name, bands, data_type, refused):
    with pytest.raises(io.RasterError) as err:
        io.output_format(name, data_type, bands=bands)
    message = str(err.value)
    advice = message.rsplit("): ", 1)[1]
    assert "\n" not in message
    assert refused not in advice.replace(",", " ").split() and ".tif" in advice
    # ... and what it proposes does hold the output.
    for ext in ("tif", "img"):
        assert io.output_format(f"out.{ext}", data_type, bands=bands).driver in ("GTiff", "HFA")
