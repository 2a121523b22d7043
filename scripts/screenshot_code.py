"""Runs inside the QGIS desktop (`qgis --code scripts/screenshot_code.py`, started by scripts/screenshot.sh).

Opens the sample raster, the "Super-resolve raster" algorithm dialog (non-modal, as a user gets it from the
Processing toolbox), optionally runs it through the dialog's own Run path and photographs the map with the
result, opens the plugin's settings dialog, then quits QGIS.  Every step is checked; what happened goes to
`<work>/screenshot.log` and a machine-readable `<work>/status.json` that screenshot.sh reads.

`qgis --code` exec()s this file in QGIS's `__main__` namespace, so there is no `__file__` and everything it
needs comes from environment variables set by screenshot.sh:
  LCMSR_SHOT_WORK    folder for the log, the status file and the raw full-screen grabs
  LCMSR_SHOT_OUT     folder for the README images (superresolve_dialog.png, qgis_result.png, qgis_uncertainty.png,
                     settings_dialog.png)
  LCMSR_SHOT_INPUT   the raster to open (the sample neon_lr.tif)
  LCMSR_SHOT_MODEL   model for the run; empty: the dialog's MODEL stays empty (the plugin's default/bundled model)
  LCMSR_SHOT_RUN     "1" to run the algorithm and photograph the result, "0" to skip
  LCMSR_SHOT_TIMEOUT seconds before the watchdog quits QGIS whatever state it is in
"""
import json
import os
import time
import traceback


def _lcmsr_screenshot_main():
    # Imported here, not at the top: the names would otherwise land in QGIS's shared __main__ namespace.
    from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QRect, QTimer
    from qgis.PyQt.QtWidgets import QApplication
    import qgis.utils

    work = os.environ["LCMSR_SHOT_WORK"]
    out = os.environ["LCMSR_SHOT_OUT"]
    input_path = os.environ["LCMSR_SHOT_INPUT"]
    model = os.environ.get("LCMSR_SHOT_MODEL", "")
    want_run = os.environ.get("LCMSR_SHOT_RUN", "1") == "1"
    timeout_s = float(os.environ.get("LCMSR_SHOT_TIMEOUT", "600"))
    os.makedirs(work, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    iface = qgis.utils.iface
    started = time.time()
    log_file = open(os.path.join(work, "screenshot.log"), "a", encoding="utf-8")
    status = {"ok": False, "steps": {}, "images": {}, "messages": [], "errors": []}
    state = {}   # live Qt objects: kept referenced so Python does not collect dialogs and timers mid-run

    def log(text):
        line = f"[{time.time() - started:7.1f}s] {text}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    def on_message(message, tag, level):
        # Every message-log line is kept: the report must say whether anything mentioning lcmsr went wrong.
        entry = {"tag": tag, "level": int(level), "message": message}
        status["messages"].append(entry)
        log(f"QGIS log [{tag}] level {int(level)}: {message}")

    QgsApplication.messageLog().messageReceived.connect(on_message)
    state["on_message"] = on_message

    def fail(step, exc_text):
        status["steps"][step] = "failed"
        status["errors"].append(f"{step}: {exc_text}")
        log(f"FAILED {step}: {exc_text}")

    def write_status():
        with open(os.path.join(work, "status.json"), "w", encoding="utf-8") as fh:
            json.dump(status, fh, indent=1)

    def settle(ms=300):
        # Widgets paint only when the event loop runs; a grab right after show() would catch a blank window.
        end = time.time() + ms / 1000.0
        while time.time() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def grab(name, rect=None, folder=None):
        """The X screen as the user sees it (the whole root window), cropped to rect when given."""
        screen = QApplication.primaryScreen()
        pixmap = screen.grabWindow(0)
        if rect is not None:
            pixmap = pixmap.copy(rect.intersected(QRect(0, 0, pixmap.width(), pixmap.height())))
        path = os.path.join(folder or out, name)
        if pixmap.isNull() or not pixmap.save(path, "PNG"):
            raise RuntimeError(f"could not grab or save the screen to {path}")
        status["images"][name] = path
        log(f"saved {path} ({pixmap.width()}x{pixmap.height()})")
        return path

    def step(name, func, then=None, delay_ms=0):
        def run():
            try:
                log(f"step {name}")
                func()
                status["steps"].setdefault(name, "ok")
            except Exception:
                fail(name, traceback.format_exc())
            if then is not None:
                QTimer.singleShot(delay_ms, then)
        return run

    # --- steps ---------------------------------------------------------------------------------------------------
    def setup():
        window = iface.mainWindow()
        # Xvfb has no window manager: nothing maximises the main window unless asked with explicit geometry.
        window.setGeometry(0, 0, 1280, 800)
        window.show()
        active = list(qgis.utils.active_plugins)
        log(f"active plugins: {active}")
        if "lcmsr_qgis" not in active:
            raise RuntimeError("plugin lcmsr_qgis is not active (not installed in the profile or failed to load)")
        import lcmsr_qgis
        from lcmsr_qgis import environment

        log(f"plugin loaded from {os.path.dirname(lcmsr_qgis.__file__)}")
        ok, message = environment.backend_status()
        log(f"backend_status: {ok} {message}")
        status["backend_ok"] = ok
        if ok:
            import lcmsr
            import torch

            status["lcmsr_file"] = lcmsr.__file__
            status["torch_file"] = torch.__file__
            log(f"lcmsr from {lcmsr.__file__}; torch {torch.__version__} from {torch.__file__}")
        provider = QgsApplication.processingRegistry().providerById("lcmsr")
        if provider is None:
            raise RuntimeError("Processing provider 'lcmsr' is not registered")
        algorithm_ids = sorted(a.id() for a in provider.algorithms())
        status["algorithms"] = algorithm_ids
        log(f"provider '{provider.name()}' algorithms: {algorithm_ids}")
        if "lcmsr:superresolve" not in algorithm_ids:
            raise RuntimeError("algorithm lcmsr:superresolve is missing from the provider")
        layer = QgsRasterLayer(input_path, "neon_lr")
        if not layer.isValid():
            raise RuntimeError(f"QGIS cannot open the sample raster {input_path}")
        QgsProject.instance().addMapLayer(layer)
        iface.mapCanvas().setExtent(layer.extent())
        iface.mapCanvas().refresh()
        state["layer"] = layer

    def open_dialog():
        import processing

        layer = state["layer"]
        # OUTPUT stays "[Save to temporary file]", as a user first sees it; the result is loaded as a layer anyway.
        parameters = {"INPUT": layer.id()}
        if model:
            parameters["MODEL"] = model
        if want_run:   # the optional second output, loaded with its colour ramp (qgis_uncertainty.png)
            parameters["UNCERTAINTY"] = os.path.join(work, "uncertainty.tif")
        dialog = processing.createAlgorithmDialog("lcmsr:superresolve", parameters)
        if dialog is None:
            raise RuntimeError("processing.createAlgorithmDialog('lcmsr:superresolve') returned None")
        dialog.resize(900, 640)
        dialog.move(190, 80)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        state["dialog"] = dialog

    def shoot_dialog():
        dialog = state["dialog"]
        settle()
        if not dialog.isVisible():
            raise RuntimeError("the Super-resolve raster dialog is not visible")
        log(f"dialog title: {dialog.windowTitle()!r}, geometry {dialog.frameGeometry().getRect()}")
        grab("screen_dialog_full.png", folder=work)
        grab("superresolve_dialog.png", dialog.frameGeometry())

    def run_algorithm():
        if not want_run:
            status["steps"]["run"] = "skipped"
            log("run skipped (LCMSR_SHOT_RUN=0)")
            return
        if not status.get("backend_ok"):
            raise RuntimeError("backend not importable in QGIS's Python: cannot run the algorithm")
        dialog = state["dialog"]
        state["run_started"] = time.time()
        state["finished"] = None

        def finished(successful, results):
            state["finished"] = (successful, dict(results))

        dialog.algorithmFinished.connect(finished)
        state["finished_slot"] = finished
        # The dialog's own Run path: parameter widgets -> checkParameterValues -> task -> results loaded as layers.
        dialog.runAlgorithm()

    def wait_for_run():
        if status["steps"].get("run") in ("skipped", "failed"):
            QTimer.singleShot(0, after_run)
            return
        if state.get("finished") is None:
            if time.time() - state["run_started"] > timeout_s * 0.6:
                fail("run", "the algorithm did not finish in time")
                QTimer.singleShot(0, after_run)
            else:
                QTimer.singleShot(500, wait_for_run)
            return
        successful, results = state["finished"]
        log(f"algorithm finished: successful={successful} results={results} "
            f"in {time.time() - state['run_started']:.1f}s")
        if not successful:
            fail("run", f"algorithm reported failure; results {results}")
        else:
            status["result"] = results.get("OUTPUT")
        QTimer.singleShot(0, after_run)

    def after_run():
        QTimer.singleShot(1000, step("shoot_result", shoot_result, delay_ms=500,
                                     then=step("settings_prepare", open_settings)))

    def shoot_result():
        if status["steps"].get("run") != "ok" or not status.get("result"):
            log("no result layer to photograph")
            status["steps"]["shoot_result"] = "skipped"
            return
        dialog = state["dialog"]
        if dialog.isVisible():
            grab("screen_dialog_log.png", dialog.frameGeometry(), folder=work)
            dialog.close()
        result_layers = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().endswith("LCMSR")]
        log(f"layers now: {[lyr.name() for lyr in QgsProject.instance().mapLayers().values()]}")
        if not result_layers:
            raise RuntimeError("the algorithm finished but no '... LCMSR' result layer was added to the map")
        result = result_layers[0]
        log(f"result layer {result.name()!r}: {result.width()}x{result.height()} from {result.source()}")
        tree = QgsProject.instance().layerTreeRoot()
        uncertainty = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().endswith("uncertainty")]
        for lyr in uncertainty:   # the result picture shows the SR raster; the uncertainty gets its own
            tree.findLayer(lyr.id()).setItemVisibilityChecked(False)
        status["result_size"] = [result.width(), result.height()]
        canvas = iface.mapCanvas()
        canvas.setExtent(result.extent())
        canvas.refresh()
        canvas.waitWhileRendering()
        settle(1500)
        window = iface.mainWindow()
        grab("qgis_result.png", window.frameGeometry())
        if uncertainty:
            log(f"uncertainty layer {uncertainty[0].name()!r}: renderer {uncertainty[0].renderer().type()}")
            status["uncertainty_renderer"] = uncertainty[0].renderer().type()
            tree.findLayer(uncertainty[0].id()).setItemVisibilityChecked(True)
            canvas.refresh()
            canvas.waitWhileRendering()
            settle(1500)
            grab("qgis_uncertainty.png", window.frameGeometry())

    def open_settings():
        from lcmsr_qgis.ui.settings_dialog import SettingsDialog

        def show():
            dialog = SettingsDialog(iface.mainWindow())
            dialog.move(280, 140)
            dialog.show()
            dialog.tabs.setCurrentIndex(1)    # Inference: device, tiles and the extra Python path README mentions
            state["settings"] = dialog

        def shoot():
            dialog = state["settings"]
            settle()
            grab("settings_dialog.png", dialog.frameGeometry())
            dialog.tabs.setCurrentIndex(0)    # Models: the bundled models and what each is made for
            dialog.model_list.setCurrentRow(1 if dialog.model_list.count() > 1 else 0)
            settle()
            grab("settings_models.png", dialog.frameGeometry())
            dialog.tabs.setCurrentIndex(2)    # Diagnostics fills itself when shown
            settle()
            text = dialog.diagnostics_view.toPlainText()
            status["diagnostics"] = text
            log("diagnostics:\n" + text)
            grab("settings_diagnostics.png", dialog.frameGeometry(), folder=work)
            dialog.reject()

        QTimer.singleShot(0, step("settings_open", show, then=step("settings_shot", shoot, then=quit_qgis),
                                  delay_ms=3000))

    def quit_qgis(code=None):
        required = ["setup", "open_dialog", "shoot_dialog", "settings_open", "settings_shot"]
        if want_run:
            required += ["run", "shoot_result"]
        status["ok"] = all(status["steps"].get(name) == "ok" for name in required) and not status["errors"]
        status["elapsed_s"] = round(time.time() - started, 1)
        log(f"done: ok={status['ok']} steps={status['steps']}")
        write_status()
        log_file.close()
        # A dirty project would make QGIS ask "Save changes?" on exit and wait forever for a click.
        QgsProject.instance().setDirty(False)
        QgsApplication.exit(0 if code is None and status["ok"] else 1)

    def watchdog():
        if "elapsed_s" not in status:
            fail("watchdog", f"QGIS was still running after {timeout_s:.0f}s; steps so far {status['steps']}")
            quit_qgis(1)

    state["watchdog"] = QTimer()
    state["watchdog"].setSingleShot(True)
    state["watchdog"].timeout.connect(watchdog)
    state["watchdog"].start(int(timeout_s * 1000))

    # The dialog needs ~seconds after show() for its parameter widgets and help panel to be laid out and painted.
    chain = step("setup", setup, delay_ms=1500, then=step(
        "open_dialog", open_dialog, delay_ms=4000, then=step(
            "shoot_dialog", shoot_dialog, delay_ms=200, then=step(
                "run", run_algorithm, delay_ms=500, then=wait_for_run))))
    QTimer.singleShot(3000, chain)
    log(f"screenshot script armed (QGIS {Qgis.QGIS_VERSION})")
    return state


_lcmsr_screenshot_state = _lcmsr_screenshot_main()
