"""QGIS side of the robustness suite: one JSON request per stdin line, one ``@@RESULT {...}`` line back.

Runs headless (QT_QPA_PLATFORM=offscreen) with the lcmsr provider registered and
Processing initialised, so requests go through the same code as a QGIS user's:
``processing.run("lcmsr:superresolve")``, the batch dialog's run-then-load loop and
the settings dialog's add-model path.  Only plain values leave a request: a QGIS
layer alive at exitQgis would crash the process on exit.
"""
import json
import os
import sys
import threading
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "backend")]

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsMapLayer,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
)

CPU = 2  # index of "cpu" in lcmsr_qgis.algorithms.base.DEVICE_VALUES
TILE, OVERLAP = 32, 4


class Feedback(QgsProcessingFeedback):
    """Records what a QGIS user would see (errors, warnings) and cancels on request."""

    def __init__(self, cancel_at=None):
        super().__init__()
        self.errors, self.cancel_at, self.armed = [], cancel_at, False

    def reportError(self, error, fatalError=False):  # noqa: N802
        self.errors.append(str(error))
        super().reportError(error, fatalError)

    def setProgress(self, progress):  # noqa: N802
        super().setProgress(progress)
        if self.armed and self.cancel_at is not None and progress >= self.cancel_at:
            self.cancel()


def params(src, dst, model, tile=TILE):
    return {"INPUT": src, "MODEL": model, "DEVICE": CPU, "TILE": tile, "OVERLAP": OVERLAP, "BATCH": 8,
            "STEPS": 1, "SEED": 0, "PRECISION": 0, "OUTPUT_TYPE": 0, "OUTPUT": dst}


def op_sr(req):
    import processing

    fb = Feedback()
    out = {"status": "ok", "message": ""}
    try:
        results = processing.run("lcmsr:superresolve", params(req["src"], req["dst"], req["model"], req.get("tile", TILE)), feedback=fb)
        value = results.get("OUTPUT")
        out["output"] = value.source() if isinstance(value, QgsMapLayer) else str(value)
        del results, value
    except QgsProcessingException as exc:
        out.update(status="error", message=str(exc))
    except BaseException:  # reaching here means a raw Python error would reach the user
        out.update(status="exception", message=traceback.format_exc())
    out["errors"] = fb.errors
    out["layers"] = len(QgsProject.instance().mapLayers())
    QgsProject.instance().removeAllMapLayers()
    return out


_dialog = None


def op_add_model(req):
    global _dialog
    from lcmsr.weights import ModelFileError, load_model

    from lcmsr_qgis.ui.settings_dialog import SettingsDialog

    if _dialog is None:
        shown = []
        _dialog = SettingsDialog(None, message_box=lambda title, text: shown.append(text))
        _dialog.shown = shown
    dlg = _dialog
    dlg.shown.clear()
    dlg.last_error = ""
    try:
        load_model(req["path"])
        loader = ""
    except ModelFileError as exc:
        loader = str(exc)
    except BaseException as exc:
        loader = f"{type(exc).__name__}: {exc}"
    try:
        accepted = bool(dlg.add_model(req["path"]))
    except BaseException:
        return {"status": "exception", "message": traceback.format_exc()}
    if accepted:
        dlg.remove_model(os.path.abspath(req["path"]))
    return {"status": "ok", "accepted": accepted, "shown": dlg.shown[-1] if dlg.shown else "", "loader": loader}


def op_batch(req):
    """The batch dialog's loop (BatchAlgorithmDialog.runAlgorithm, QGIS 3.22): run each row, load its
    result, stop at a cancel — with the cancel fired inside row ``cancel_row``."""
    from processing.gui.Postprocessing import handleAlgorithmResults
    from processing.tools import dataobjects

    alg = QgsApplication.processingRegistry().createAlgorithmById("lcmsr:superresolve")
    project = QgsProject.instance()
    fb = Feedback(cancel_at=req.get("progress"))
    completed, cancelled, cancel_message, expected = [], None, "", 0
    timer = None
    for row, dst in enumerate(req["dsts"]):
        if fb.isCanceled():
            break
        if row == req["cancel_row"]:
            fb.armed = True
            if "delay" in req:
                timer = threading.Timer(req["delay"], fb.cancel)
                timer.start()
        p = params(req["src"], QgsProcessingOutputLayerDefinition(dst, project), req["model"])
        context = dataobjects.createContext(fb)
        n_errors = len(fb.errors)
        results, ok = alg.run(p, context, fb)
        if ok:
            completed.append(row)
            loads = not fb.isCanceled()   # handleAlgorithmResults loads nothing once cancelled
            handleAlgorithmResults(alg, context, fb, False, p)
            expected += int(loads)
        else:
            cancelled = row
            cancel_message = " ".join(fb.errors[n_errors:])
            break
        del results, context
    if timer is not None:
        timer.cancel()
    layers = len(project.mapLayers())
    project.removeAllMapLayers()
    raw = [e for e in fb.errors if "Traceback" in e]
    if raw:
        return {"status": "exception", "message": raw[0]}
    return {"status": "ok", "completed": completed, "cancelled": cancelled, "cancel_message": cancel_message,
            "layers": layers, "layers_expected": expected}


def main():
    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import torch

    torch.set_num_threads(1)
    from lcmsr_qgis.provider import LcmsrProvider

    provider = LcmsrProvider()  # kept referenced: a collected Python provider loses its algorithms
    QgsApplication.processingRegistry().addProvider(provider)
    ops = {"sr": op_sr, "add_model": op_add_model, "batch": op_batch}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            reply = ops[req["op"]](req)
        except BaseException:
            reply = {"status": "exception", "message": traceback.format_exc()}
        sys.stdout.write("@@RESULT " + json.dumps(reply) + "\n")
        sys.stdout.flush()
    global _dialog
    if _dialog is not None:
        _dialog.deleteLater()
        _dialog = None
    QgsProject.instance().removeAllMapLayers()
    app.exitQgis()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: Qt objects destroyed after exitQgis crash on exit


if __name__ == "__main__":
    main()
