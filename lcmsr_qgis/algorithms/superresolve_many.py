"""`lcmsr:superresolve_many` — many rasters into a folder, resumable, here or on a Dask cluster (`lcmsr batch`)."""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from lcmsr.choices import EXECUTOR_LABELS, EXECUTORS

from .. import qgis_enums
from ..settings import Settings
from .base import LcmsrAlgorithm, device_request
from .superresolve import RunParameters, add_run_parameters, resolve_model_path, run_options


def mosaic_layer_name(path: str, count: int) -> str:
    return f"{os.path.splitext(os.path.basename(path))[0]} ({count} rasters, LCMSR)"


class SuperResolveManyAlgorithm(RunParameters, LcmsrAlgorithm):
    LAYERS = "LAYERS"
    FILES = "FILES"
    FOLDER = "FOLDER"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    EXECUTOR = "EXECUTOR"
    WORKERS = "WORKERS"
    ADDRESS = "ADDRESS"
    UNIT_SIZE = "UNIT_SIZE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    MOSAIC = "MOSAIC"
    LOG = "LOG"
    DONE = "DONE"
    FAILED = "FAILED"

    def name(self):
        return "superresolve_many"

    def displayName(self):  # noqa: N802
        return "Super-resolve many rasters"

    def shortHelpString(self):  # noqa: N802
        return (
            "Super-resolves every input raster into the <b>Output folder</b>: one output per raster "
            "(&lt;name&gt;_sr.tif), a VRT <b>mosaic</b> with overviews of the outputs that share a CRS (loaded as "
            "one layer), and a job log (lcmsr-batch.jsonl). The same as <tt>lcmsr batch</tt> on the command "
            "line.<br><br>"
            "<b>Inputs</b>: raster layers (read through GDAL), raster files, and/or a folder searched recursively "
            "for rasters. Each input's model is the <b>Model</b> if given, else the default model of the settings "
            "if set, else the bundled or registered model whose domain fits it.<br>"
            "<b>Resumable</b>: run it again with the same output folder after a cancel, a crash or a lost worker: "
            "finished outputs and parts whose files still match their logged SHA-256 are kept, only the rest "
            "runs. A bad input (missing, unreadable, outside every model's domain) is reported in one line and "
            "the others complete.<br>"
            "<b>Executor</b>: Local runs here (with <b>Workers</b> &gt; 1: that many processes of one thread "
            "each). Dask runs the units on a Dask cluster: give its scheduler's <b>Cluster address</b> "
            "(tcp://host:8786; see the README for a multi-node or Slurm recipe), or leave it empty for a local "
            "cluster of <b>Workers</b> processes (one per GPU on a CUDA machine).<br>"
            "<b>Unit size</b> (advanced): splits each raster into parts of about this many LR pixels a side "
            "(rounded up to 256), run as separate tasks and blended at the seams as one run would (within one "
            "grey level); 0 = one task per raster.<br>"
            "The other options are those of <i>Super-resolve raster</i>; outputs are Cloud Optimized GeoTIFFs "
            "unless unticked.")

    def initAlgorithm(self, config=None):  # noqa: N802
        settings = Settings()
        self.addParameter(QgsProcessingParameterMultipleLayers(self.LAYERS, "Input raster layers",
                                                               qgis_enums.SOURCE_RASTER, optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(self.FILES, "Input raster files",
                                                               qgis_enums.SOURCE_FILE, optional=True))
        self.addParameter(QgsProcessingParameterFile(self.FOLDER, "Input folder (searched recursively)",
                                                     qgis_enums.FILE_BEHAVIOR_FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model (.safetensors; empty: chosen for each input by its domain)",
            qgis_enums.FILE_BEHAVIOR_FILE, extension="safetensors", optional=True))
        self.add_device_parameter(self.DEVICE)
        self.addParameter(QgsProcessingParameterEnum(self.EXECUTOR, "Executor",
                                                     options=[EXECUTOR_LABELS[e] for e in EXECUTORS], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.WORKERS, "Workers (local processes or local Dask workers)",
                                                       qgis_enums.NUMBER_INTEGER, defaultValue=1,
                                                       minValue=1, maxValue=1024))
        self.addParameter(QgsProcessingParameterString(self.ADDRESS, "Cluster address (Dask scheduler, e.g. "
                                                       "tcp://10.0.0.5:8786; empty: a local cluster)",
                                                       defaultValue="", optional=True))
        unit = QgsProcessingParameterNumber(self.UNIT_SIZE, "Unit size (LR pixels; 0: one task per raster)",
                                            qgis_enums.NUMBER_INTEGER, defaultValue=0, minValue=0)
        unit.setFlags(unit.flags() | qgis_enums.PARAMETER_ADVANCED)
        self.addParameter(unit)
        add_run_parameters(self, settings)
        self.parameterDefinition(self.COG).setDefaultValue(True)   # a batch's outputs are COGs, as `lcmsr batch`'s
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.MOSAIC, "Mosaic of the outputs"))
        self.addOutput(QgsProcessingOutputFile(self.LOG, "Job log"))
        self.addOutput(QgsProcessingOutputNumber(self.DONE, "Rasters done"))
        self.addOutput(QgsProcessingOutputNumber(self.FAILED, "Rasters failed"))

    def inputs(self, parameters, context) -> list[str]:
        paths = [self.gdal_source(layer, self.LAYERS)
                 for layer in self.parameterAsLayerList(parameters, self.LAYERS, context)]
        paths += [p for p in self.parameterAsFileList(parameters, self.FILES, context) if p]
        folder = (self.parameterAsFile(parameters, self.FOLDER, context) or "").strip()
        if folder:
            paths.append(folder)
        if not paths:
            raise QgsProcessingException(f"no inputs: give {self.LAYERS}, {self.FILES} or {self.FOLDER}")
        return paths

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        feedback = feedback if feedback is not None else QgsProcessingFeedback()
        inputs = self.inputs(parameters, context)
        model_path = resolve_model_path(self.parameterAsFile(parameters, self.MODEL, context)) or None
        out_dir = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        executor = EXECUTORS[self.parameterAsEnum(parameters, self.EXECUTOR, context)]
        address = (self.parameterAsString(parameters, self.ADDRESS, context) or "").strip() or None
        if address and executor != "dask":
            raise QgsProcessingException(f"{self.ADDRESS} is a Dask scheduler's address: choose the Dask executor")
        options = run_options(self, parameters, context,
                              device=device_request(self.parameterAsEnum(parameters, self.DEVICE, context)))
        result = self.run_job("superresolve_many", feedback, inputs=inputs, out_dir=out_dir, model=model_path or "",
                              sr=options, executor=executor,
                              workers=self.parameterAsInt(parameters, self.WORKERS, context), address=address or "",
                              unit_size=self.parameterAsInt(parameters, self.UNIT_SIZE, context))
        items = result["items"]
        failed = [item for item in items if item["status"] == "failed"]
        for item in failed:
            feedback.reportError(f"{item['origin']}: {item['error']}", False)
        done = sum(item["status"] in ("done", "skipped") for item in items)
        feedback.pushInfo(f"{done} raster(s) done ({sum(item['status'] == 'skipped' for item in items)} before), "
                          f"{len(failed)} failed; job log {result['log']}")
        mosaics = result["mosaics"]
        for mosaic in mosaics:
            # Each mosaic (one per CRS) loads as one layer; the outputs themselves stay files in the folder.
            context.addLayerToLoadOnCompletion(mosaic["path"], QgsProcessingContext.LayerDetails(
                mosaic_layer_name(mosaic["path"], mosaic["members"]), context.project(), self.MOSAIC))
        return {self.OUTPUT_FOLDER: out_dir, self.MOSAIC: mosaics[0]["path"] if mosaics else None,
                self.LOG: result["log"], self.DONE: done, self.FAILED: len(failed)}
