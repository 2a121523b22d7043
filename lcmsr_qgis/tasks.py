"""'Super-resolve active layer': the toolbox's `lcmsr:superresolve` on the active layer, in the background.

The menu action asks which bands the model gets (:class:`lcmsr_qgis.ui.bands_dialog.BandsDialog`,
preset to the backend's choice by role) and where to write (any format the backend writes, by
extension), turns the layer, the bands and the plugin settings (tile, overlap, batch, device,
precision) into that algorithm's parameters and runs it in a
``QgsProcessingAlgRunnerTask``, as the Processing dialog does: one algorithm, one
progress, cancel and error path for both.  The task emits ``executed`` on the main
thread; only then is the output layer (named by the algorithm) added to the project.
Cancel stops within a tile; the backend then leaves no output file and no layer is added.
"""
from __future__ import annotations

import os

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMessageLog,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
)

from . import environment
from .feedback import LOG_TAG
from .settings import Settings

ALGORITHM_ID = "lcmsr:superresolve"
_RUNNING: set = set()   # runs whose task has not finished: the task needs its context and feedback alive


def _message(iface, text: str, level=Qgis.MessageLevel.Info, duration: int = 8) -> None:
    QgsMessageLog.logMessage(text, LOG_TAG, level)
    if iface is not None:
        iface.messageBar().pushMessage("LCMSR", text, level, duration)


class _LoggingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm said (it runs in the task's thread) and copies it to the message log."""

    def __init__(self):
        super().__init__()
        self.messages: list = []   # (level, text)
        self.error = ""            # the algorithm's error sentence, if it failed

    def _keep(self, level_name: str, text: str, level) -> None:
        self.messages.append((level_name, text))
        QgsMessageLog.logMessage(text, LOG_TAG, level)

    def pushInfo(self, info):  # noqa: N802
        self._keep("info", info, Qgis.MessageLevel.Info)
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        self._keep("warning", warning, Qgis.MessageLevel.Warning)
        super().pushWarning(warning)

    def reportError(self, error, fatalError=False):  # noqa: N802
        self.error = self.error or str(error)
        super().reportError(error, fatalError)


class SuperResolveRun:
    """One menu run: the runner ``task``, the context and feedback it uses, and what came of it."""

    def __init__(self, algorithm, parameters: dict, input_name: str, dst: str, iface=None):
        self.iface, self.input_name, self.dst = iface, input_name, dst
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = _LoggingFeedback()
        # Owned by the task manager once added, which deletes it after it has finished.
        self.task = QgsProcessingAlgRunnerTask(algorithm, parameters, self.context, self.feedback)
        self.task.executed.connect(self._executed)
        self.results: dict | None = None   # the algorithm's results, once it succeeded
        self.layer = None                  # the output layer added to the project
        self.was_cancelled = False
        self.done = False                  # executed() ran

    @property
    def error(self) -> str:
        return self.feedback.error

    @property
    def messages(self) -> list:
        return self.feedback.messages

    def _executed(self, ok: bool, results: dict) -> None:  # main thread
        _RUNNING.discard(self)
        self.done = True
        if ok:
            self.results = results
            self.layer = _load_outputs(self.context)
            if self.layer is None:
                _message(self.iface, f"{self.dst} was written but cannot be loaded as a layer",
                         Qgis.MessageLevel.Critical)
            else:
                _message(self.iface, f"'{self.layer.name()}' written to {self.dst}", Qgis.MessageLevel.Success)
        elif self.feedback.isCanceled():
            self.was_cancelled = True
            _message(self.iface, f"Super-resolution of '{self.input_name}' cancelled; nothing was written")
        else:
            _message(self.iface, f"Super-resolution of '{self.input_name}' failed: {self.error}",
                     Qgis.MessageLevel.Critical, 0)


def _load_outputs(context: QgsProcessingContext):
    """Add the layers the algorithm asked to load, under the names it gave them; the last one, or None.

    The outputs are rasters: said so, QGIS does not first try the file as a vector (OGR would log
    'Cannot open' for every run)."""
    added = None
    for source, details in context.layersToLoadOnCompletion().items():
        layer = QgsProcessingUtils.mapLayerFromString(source, context,
                                                      typeHint=QgsProcessingUtils.LayerHint.Raster)
        if layer is None or not layer.isValid():
            return None
        details.setOutputLayerName(layer)
        details.project.addMapLayer(context.temporaryLayerStore().takeMapLayer(layer))
        added = layer
    return added


def _ask_output_path(iface, layer, scale: int) -> str:
    from qgis.PyQt.QtWidgets import QFileDialog

    folder = os.path.dirname(layer.source()) if os.path.isfile(layer.source()) else os.path.expanduser("~")
    suggestion = os.path.join(folder, f"{_safe(layer.name())}_x{scale}_lcmsr.tif")
    path, _ = QFileDialog.getSaveFileName(iface.mainWindow() if iface else None, "Save super-resolved raster",
                                          suggestion, output_file_filter())
    if path and not os.path.splitext(path)[1]:
        path += ".tif"   # the extension names the format; none given means GeoTIFF
    return path


def output_file_filter() -> str:
    """File-dialog filters for the formats the backend writes (by extension), GeoTIFF first."""
    from lcmsr.raster.io import gdal, output_formats

    by_driver: dict = {}
    for ext, driver in output_formats().items():
        by_driver.setdefault(driver, []).append(f"*.{ext}")
    names = {d: gdal.GetDriverByName(d).LongName for d in by_driver}
    order = sorted(by_driver, key=lambda d: (d != "GTiff", names[d].lower()))
    return ";;".join(f"{names[d]} ({' '.join(by_driver[d])})" for d in order)


def _ask_bands(iface, layer, model: dict) -> list | None:
    """The bands the user chose for the model ([] = automatic, by role), or None if cancelled.  ``model``:
    what the describe_model job said of it (bands, domain)."""
    from types import SimpleNamespace

    from lcmsr.domain import Domain
    from lcmsr.raster.facts import input_facts

    from .algorithms.superresolve import QGIS_TERMS
    from .ui.bands_dialog import BandsDialog

    domain = Domain.from_dict(model["domain"]) if model.get("domain") else Domain()
    info = SimpleNamespace(bands=model["bands"], domain=domain)
    dialog = BandsDialog(layer.name(), input_facts(layer.source()), info, QGIS_TERMS,
                         iface.mainWindow() if iface else None)
    return dialog.bands() if dialog.exec() else None


def describe_model(source: str, model_path: str, bands, models) -> dict:
    """The describe_model job (lcmsr.jobs) where the settings run jobs: the model for ``source`` (the given
    one, else chosen by its domain) with its scale, bands and domain.  QgsProcessingException on failure."""
    from qgis.core import QgsProcessingFeedback

    from lcmsr.jobs import Job, options_to_dict

    from .algorithms.superresolve import QGIS_TERMS
    from .worker import runner

    job = Job("describe_model", {"src": source, "model": model_path or "", "bands": bands or None,
                                 "models": list(models), "terms": options_to_dict(QGIS_TERMS)})
    return runner().run(job, QgsProcessingFeedback())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "raster"


def start_superresolve_active_layer(iface, output_path: str | None = None, model_path: str | None = None,
                                    layer=None, bands: list | None = None) -> SuperResolveRun | None:
    """Super-resolve the active raster layer in the background; returns the started run, or None.

    ``output_path``, ``model_path`` and ``bands`` skip the file dialog, the settings' default
    model and the bands dialog (tests, scripts: ``bands`` None or [] = chosen by role, as the
    algorithm's empty Bands); ``layer`` replaces the active layer.
    """
    layer = layer if layer is not None else (iface.activeLayer() if iface is not None else None)
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        _message(iface, "Select a raster layer in the Layers panel first", Qgis.MessageLevel.Warning)
        return None
    if layer.providerType() != "gdal":
        _message(iface, f"Layer '{layer.name()}' comes from the '{layer.providerType()}' provider; LCMSR reads "
                        "files through GDAL — export it to a GeoTIFF first", Qgis.MessageLevel.Warning)
        return None
    ok, status = environment.backend_status()
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    if not ok or algorithm is None:
        _message(iface, status if not ok else f"The Processing algorithm {ALGORITHM_ID} is not registered",
                 Qgis.MessageLevel.Critical, 0)
        return None
    settings = Settings()
    model_path = model_path or settings.model_for_run()
    interactive = output_path is None
    try:  # the model is known before the file dialog, which suggests a name with its scale
        try:
            model = describe_model(layer.source(), model_path, bands, settings.models)
        except Exception as exc:   # DomainError: no model fits; bands are chosen once a model is known
            if model_path:
                raise
            raise ValueError(f"{exc}\nSet a default model in 'Settings and models…' to choose its bands here, "
                             "or run 'Super-resolve raster' from the Processing Toolbox") from None
        model_path, scale = model["model"], model["scale"]
        if bands is None and interactive:
            bands = _ask_bands(iface, layer, model)
            if bands is None:
                return None
    except Exception as exc:  # ModelFileError, DomainError: their sentence names the file and the problem
        _message(iface, str(exc), Qgis.MessageLevel.Critical, 0)
        return None
    dst = output_path or _ask_output_path(iface, layer, scale)
    if not dst:
        return None
    if os.path.abspath(dst) == os.path.abspath(layer.source()):
        _message(iface, f"The output {dst} would overwrite the input layer's file; choose another name",
                 Qgis.MessageLevel.Warning)
        return None
    from lcmsr.choices import PRECISIONS, SR_DEFAULTS

    from .algorithms.base import device_default_index

    parameters = {
        "INPUT": layer.id(), "MODEL": model_path, "BANDS": list(bands or []),
        "TILE": int(settings.tile), "OVERLAP": int(settings.overlap), "BATCH": int(settings.batch),
        "MEMORY_BUDGET": float(settings.memory_budget),
        "DEVICE": device_default_index(),
        "PRECISION": PRECISIONS.index(settings.precision if settings.precision in PRECISIONS
                                      else SR_DEFAULTS["precision"]),
        # Loaded into the project when done, as the toolbox's "Open output file after running".
        "OUTPUT": QgsProcessingOutputLayerDefinition(dst, QgsProject.instance()),
    }
    run = SuperResolveRun(algorithm, parameters, layer.name(), dst, iface)
    _RUNNING.add(run)
    QgsApplication.taskManager().addTask(run.task)
    return run
