"""'Super-resolve active layer': the backend SR as a QgsTask, the result added to the map.

The worker thread (``QgsTask.run``) touches no QGIS object: the layer's source
path, the model path and the options are copied into plain Python values on the
main thread before the task starts.  ``finished()`` runs on the main thread (and
only once the event loop runs) and is the only place that creates the layer and
adds it to the project.  Cancel stops within a tile; the backend then leaves no
output file (it writes to a temporary name and renames on success), and no layer
is added.
"""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject, QgsRasterLayer, QgsTask

from . import environment
from .feedback import LOG_TAG
from .settings import Settings

_RUNNING: set = set()   # Python-side references: a QgsTask subclass collected while queued would crash QGIS


def _message(iface, text: str, level=Qgis.MessageLevel.Info, duration: int = 8) -> None:
    QgsMessageLog.logMessage(text, LOG_TAG, level)
    if iface is not None:
        iface.messageBar().pushMessage("LCMSR", text, level, duration)


class SuperResolveTask(QgsTask):
    """Runs ``lcmsr.raster.pipeline.superresolve`` on plain values; adds the output layer when done."""

    def __init__(self, src: str, dst: str, model_path: str, options: dict, layer_name: str, iface=None):
        super().__init__(f"LCMSR: super-resolve {layer_name}", QgsTask.Flag.CanCancel)
        self.src, self.dst, self.model_path = str(src), str(dst), str(model_path)
        self.options = dict(options)
        self.layer_name = str(layer_name)
        self.iface = iface
        self.result = None          # the backend's SRResult
        self.error = ""             # one sentence when the run failed
        self.was_cancelled = False
        self.messages: list = []    # (level, text) logged by the backend during the run
        self.layer = None           # the layer added to the project (main thread)

    def run(self) -> bool:  # worker thread
        progress = None
        try:
            from lcmsr.device import resolve_device
            from lcmsr.progress import Cancelled
            from lcmsr.raster.pipeline import SROptions, superresolve

            from .feedback import task_progress
            from .model_cache import model_cache

            progress = task_progress(self)
            choice = resolve_device(self.options.get("device", "auto"))
            if choice.fallback:
                progress.warn(f"Device 'auto' fell back to the CPU — {choice.reason}")
            model = model_cache().get(self.model_path, str(choice.device))
            self.result = superresolve(self.src, self.dst, model, SROptions(**self.options), progress)
            return True
        except Exception as exc:
            if type(exc).__name__ == "Cancelled" or self.isCanceled():
                self.was_cancelled = True
            else:
                self.error = str(exc) or type(exc).__name__
            return False
        finally:
            if progress is not None:
                self.messages = list(progress.messages)

    def finished(self, result: bool) -> None:  # main thread
        _RUNNING.discard(self)
        if result:
            layer = QgsRasterLayer(self.dst, self.layer_name)
            if not layer.isValid():
                _message(self.iface, f"{self.dst} was written but cannot be loaded as a layer", Qgis.MessageLevel.Critical)
                return
            QgsProject.instance().addMapLayer(layer)
            self.layer = layer
            seconds = getattr(self.result, "seconds", None)
            took = f" in {seconds:.1f} s on {self.result.device}" if seconds is not None else ""
            _message(self.iface, f"'{self.layer_name}' written to {self.dst}{took}", Qgis.MessageLevel.Success)
        elif self.was_cancelled or self.isCanceled():
            _message(self.iface, f"Super-resolution of '{self.layer_name}' cancelled; nothing was written",
                     Qgis.MessageLevel.Info)
        else:
            _message(self.iface, f"Super-resolution of '{self.layer_name}' failed: {self.error}", Qgis.MessageLevel.Critical, 0)


def _ask_output_path(iface, layer, scale: int) -> str:
    from qgis.PyQt.QtWidgets import QFileDialog

    folder = os.path.dirname(layer.source()) if os.path.isfile(layer.source()) else os.path.expanduser("~")
    suggestion = os.path.join(folder, f"{_safe(layer.name())}_x{scale}_lcmsr.tif")
    path, _ = QFileDialog.getSaveFileName(iface.mainWindow() if iface else None, "Save super-resolved raster",
                                          suggestion, "GeoTIFF (*.tif *.tiff)")
    if path and not path.lower().endswith((".tif", ".tiff")):
        path += ".tif"
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "raster"


def start_superresolve_active_layer(iface, output_path: str | None = None, model_path: str | None = None,
                                    layer=None):
    """Super-resolve the active raster layer in the background; returns the started task, or None.

    ``output_path`` and ``model_path`` skip the file dialog and the settings' default
    model (tests, scripts); ``layer`` replaces the active layer.
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
    if not ok:
        _message(iface, status, Qgis.MessageLevel.Critical, 0)
        return None
    settings = Settings()
    model_path = model_path or settings.model_for_run()
    try:
        from lcmsr.weights import read_info

        if not model_path:
            # No default model: the bundled or registered model whose domain fits this layer.
            from lcmsr.progress import Progress
            from lcmsr.raster.pipeline import SROptions, choose_model_for

            model_path = choose_model_for(layer.source(), SROptions(models=settings.models), Progress())
        scale = read_info(model_path).scale
    except Exception as exc:  # ModelFileError: its sentence names the file and the problem
        _message(iface, str(exc), Qgis.MessageLevel.Critical, 0)
        return None
    dst = output_path or _ask_output_path(iface, layer, scale)
    if not dst:
        return None
    if os.path.abspath(dst) == os.path.abspath(layer.source()):
        _message(iface, f"The output {dst} would overwrite the input layer's file; choose another name",
                 Qgis.MessageLevel.Warning)
        return None
    from lcmsr.choices import PRECISIONS

    precision = str(settings.precision)
    options = dict(tile=int(settings.tile), overlap=int(settings.overlap), batch=int(settings.batch),
                   device=str(settings.device or "auto"), precision=precision if precision in PRECISIONS
                   else PRECISIONS[0])
    task = SuperResolveTask(layer.source(), dst, model_path, options, f"{layer.name()} x{scale} LCMSR", iface)
    _RUNNING.add(task)
    QgsApplication.taskManager().addTask(task)
    return task
