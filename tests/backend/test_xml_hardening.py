"""The XML the backend reads from files (a user's VRT) goes through a parser that refuses DTDs: no entity can
expand or reach outside the document, and the plugin repository's scanner (Bandit B314) has nothing to say."""
import time

import pytest

from lcmsr.raster import io

VRT = ('<VRTDataset rasterXSize="4" rasterYSize="4"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
       '<SourceFilename relativeToVRT="1">{}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
       '</VRTRasterBand></VRTDataset>')


def test_elements_text_and_attributes_in_document_order():
    found = io.xml_elements('<A><Option name="x" type="int">one</Option><B><Option name="y"/></B></A>', "Option")
    assert found == [({"name": "x", "type": "int"}, "one"), ({"name": "y"}, "")]
    with pytest.raises(ValueError, match="not well-formed XML"):
        io.xml_elements("<A><B></A>", "B")


def test_a_document_type_declaration_is_refused_before_any_entity_expands():
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                        for i in range(1, 10))
              + ']><VRTDataset><SourceFilename>&lol9;</SourceFilename></VRTDataset>')
    started = time.monotonic()
    with pytest.raises(ValueError, match="document type"):
        io.xml_elements(laughs, "SourceFilename")
    assert time.monotonic() - started < 1.0
    external = ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
                '<VRTDataset><SourceFilename>&x;</SourceFilename></VRTDataset>')
    with pytest.raises(ValueError, match="document type"):
        io.xml_elements(external, "SourceFilename")


def test_vrt_loops_are_still_found(tmp_path):
    (tmp_path / "a.vrt").write_text(VRT.format("b.vrt"))
    (tmp_path / "b.vrt").write_text(VRT.format("a.vrt"))
    loop = io.vrt_loop(str(tmp_path / "a.vrt"))
    assert loop and [p.rsplit("/", 1)[1] for p in loop] == ["a.vrt", "b.vrt", "a.vrt"]
    (tmp_path / "b.vrt").write_text(VRT.format("in.tif"))
    assert io.vrt_loop(str(tmp_path / "a.vrt")) is None


def test_creation_options_are_still_read():
    assert {"COMPRESS", "TILED", "PREDICTOR"} <= io._creation_option_names("GTiff")
