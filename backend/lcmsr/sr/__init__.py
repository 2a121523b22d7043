"""Super-resolution of rasters, scenes and catalogues, in three layers.

* :mod:`lcmsr.sr.tile_model` — the tile model: LR arrays -> HR arrays (normalisation, noise, the model
  call, back-projection, the uncertainty spread).  torch only: no GDAL, no files.
* :mod:`lcmsr.raster.pipeline` — the streaming engine over one raster (or one region of it): the run plan
  decided once, reader and writer threads, the blend, the memory plan.  GDAL lives there.
* :mod:`lcmsr.sr.units` — the unit of work of a batch: a JSON-serialisable spec (source, region + halo,
  bands, model file + hash, options, seed) -> a part file; a scene plan that splits a raster into units and
  assembles their parts.  Executors (:mod:`lcmsr.sr.executors`) run units anywhere.
"""
