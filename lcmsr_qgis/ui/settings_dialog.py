"""Settings and models dialog: the model list (validated on adding), defaults for runs, diagnostics.

Everything is stored through :class:`lcmsr_qgis.settings.Settings` (QgsSettings
under ``lcmsr/``) when the dialog is accepted; Cancel changes nothing.  Errors
go through ``message_box(title, text)``, a QMessageBox by default, injectable so
that tests (and headless use) never block on a modal window.
"""
from __future__ import annotations

import os
import re

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lcmsr.choices import DEVICES, PRECISIONS, SR_DEFAULTS

from .. import environment, torch_install, worker
from ..settings import Settings, bundled_model_paths

_DEVICE_PATTERN = re.compile(rf"^({'|'.join(DEVICES)}|cuda:\d+)$")   # a listed device, or a given GPU
PATH_ROLE = Qt.ItemDataRole.UserRole
BUNDLED_ROLE = Qt.ItemDataRole.UserRole + 1
# Training keys shown first in a model's summary, in this order (the rest follow as they are).
_TRAINING_KEYS = [("steps", "stage-2 steps"), ("stage1_steps", "stage-1 steps"), ("val_psnr", "validation PSNR"),
                  ("bicubic_psnr", "bicubic PSNR"), ("seconds", "training time (s)"), ("date", "date")]


def model_summary(path: str) -> str:
    """What a model file says about itself (header only, no tensor read); raises the loader's error."""
    from lcmsr.weights import read_info

    info = read_info(path)
    norm = info.normalization
    lines = [
        f"File: {path}",
        f"Scale: x{info.scale}",
        f"Bands: {info.bands} ({', '.join(info.band_names)})",
        f"Training data type: {info.data_type}",
        "Normalisation (lo … hi per band): "
        + "; ".join(f"{lo:g} … {hi:g}" for lo, hi in zip(norm.lo, norm.hi)),
        f"Config: {info.config.name}",
        f"Made for: {info.domain.summary()}",
    ]
    if info.domain.known and info.domain.notes:
        lines.append(f"Domain notes: {info.domain.notes}")
    training = dict(info.training or {})
    if not training:
        lines.append("Training: no record (untrained or converted model)")
    else:
        parts = []
        for key, label in _TRAINING_KEYS:
            value = training.pop(key, None)
            if value is not None:
                parts.append(f"{label} {value:.2f}" if isinstance(value, float) else f"{label} {value}")
        data = training.pop("data", None)
        if data:
            parts.append(f"{len(data)} training raster(s)")
        lines.append("Training: " + (", ".join(parts) if parts else "recorded"))
        for key in sorted(training):
            value = training[key]
            if isinstance(value, (int, float, str)) and len(str(value)) < 120:
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _warning_box(parent):
    def show(title: str, text: str) -> None:
        QMessageBox.warning(parent, title, text)
    return show


class SettingsDialog(QDialog):
    def __init__(self, parent=None, message_box=None, settings: Settings | None = None):
        super().__init__(parent)
        self.setWindowTitle("LCMSR — settings and models")
        self.settings = settings or Settings()
        self.message_box = message_box or _warning_box(self)
        self.last_error = ""
        self._default_model = self.settings.default_model or ""

        self.torch_target = torch_install.torch_dir()
        self.install_task = torch_install.current_task()   # one started from an earlier dialog
        self.torch_box = self._torch_box()
        self.tabs = QTabWidget(self)
        self.tabs.addTab(self._models_tab(), "Models")
        self.tabs.addTab(self._run_tab(), "Inference")
        self.tabs.addTab(self._diagnostics_tab(), "Diagnostics")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, parent=self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.torch_box)
        layout.addWidget(self.tabs)
        layout.addWidget(buttons)
        self.resize(720, 520)
        self._load()

    # --- PyTorch, shown only while the backend cannot run ------------------------------------
    def _torch_box(self) -> QGroupBox:
        box = QGroupBox("PyTorch", self)
        self.torch_label = QLabel(box)
        self.torch_label.setWordWrap(True)
        self.torch_variant = QComboBox(box)
        self.install_button = QPushButton("Install PyTorch", box)
        self.install_button.clicked.connect(lambda: self.install_torch())
        self.cancel_install_button = QPushButton("Cancel install", box)
        self.cancel_install_button.clicked.connect(self.cancel_install)
        self.install_progress = QProgressBar(box)
        self.install_progress.setRange(0, 100)
        row = QHBoxLayout()
        row.addWidget(self.torch_variant, 1)
        row.addWidget(self.install_button)
        row.addWidget(self.cancel_install_button)
        layout = QVBoxLayout(box)
        layout.addWidget(self.torch_label)
        layout.addLayout(row)
        layout.addWidget(self.install_progress)
        self.cancel_install_button.hide()
        self.install_progress.hide()
        ok, message = environment.backend_status()
        box.setVisible(not ok)
        if not ok:
            variant, why = torch_install.choose_variant(
                torch_install.driver_cuda_version(torch_install.query_nvidia_smi()))
            if variant != "cpu":
                self.torch_variant.addItem(f"{torch_install.torch_plan(variant).label}: {why}", variant)
            self.torch_variant.addItem(f"{torch_install.torch_plan('cpu').label}"
                                       + ("" if variant != "cpu" else f": {why}"), "cpu")
            self.torch_label.setText(
                f"{message.split(';')[0]}. 'Install PyTorch' finds the build that exists for this Python, says "
                f"its download size as the index measures it, and installs it into {self.torch_target}, "
                "which the plugin uses from then on: no path to set, and no QGIS restart unless this session "
                "already loaded another PyTorch (it will say so).")
        if self.install_task is not None:
            self.install_button.setEnabled(False)
            self.torch_label.setText("PyTorch is being installed (see QGIS's task bar); the result goes to the "
                                     "LCMSR log.")
        return box

    def install_torch(self, variant: str | None = None):
        """Start the background install (a QgsTask); returns the task.  The dialog may stay open or close."""
        if self.install_task is not None:
            return self.install_task
        plan = torch_install.torch_plan(variant or self.torch_variant.currentData() or "cpu")
        task = torch_install.make_task(plan, self.torch_target, on_done=self._install_done)
        task.progressChanged.connect(lambda value: self._install_progress(task, plan, value))
        self.install_task = task
        self.install_button.setEnabled(False)
        self.cancel_install_button.show()
        self.install_progress.setValue(0)
        self.install_progress.show()
        self.torch_label.setText(f"Installing {plan.label} into {self.torch_target}… (Cancel leaves nothing behind)")
        QgsApplication.taskManager().addTask(task)
        return task

    def _install_progress(self, task, plan, value: float) -> None:
        self.install_progress.setValue(int(value))
        if task.announced and task.announced not in self.torch_label.text():
            self.torch_label.setText(f"Installing {plan.label}: {task.announced}, into {self.torch_target}… "
                                     "(Cancel leaves nothing behind)")

    def cancel_install(self) -> None:
        if self.install_task is not None:
            self.install_task.cancel()

    def _install_done(self, ok: bool, message: str, offer=None) -> None:
        self.install_task = None
        self.cancel_install_button.hide()
        self.install_progress.setVisible(ok)
        self.install_button.setEnabled(not ok)
        self.torch_label.setText(message[:1].upper() + message[1:])
        if offer is not None:   # the build that is reachable instead, with its measured size: one choice away
            index = self.torch_variant.findData(torch_install.REGISTRY)
            if index < 0:
                self.torch_variant.addItem(f"{offer.plan.label}: {offer.describe()}", torch_install.REGISTRY)
                index = self.torch_variant.count() - 1
            self.torch_variant.setCurrentIndex(index)
        if self.diagnostics_view.toPlainText():
            self.refresh_diagnostics()

    # --- tabs -------------------------------------------------------------------------------
    def _models_tab(self) -> QWidget:
        page = QWidget(self)
        self.model_list = QListWidget(page)
        self.model_list.currentItemChanged.connect(self._show_current)
        self.model_details = QPlainTextEdit(page)
        self.model_details.setReadOnly(True)
        self.default_label = QLabel(page)
        self.default_label.setWordWrap(True)
        add = QPushButton("Add…", page)
        add.clicked.connect(self._browse_models)
        remove = QPushButton("Remove", page)
        remove.clicked.connect(lambda: self.remove_model(self.current_model()))
        make_default = QPushButton("Use as default", page)
        make_default.clicked.connect(lambda: self.set_default_model(self.current_model()))
        row = QHBoxLayout()
        for button in (add, remove, make_default):
            row.addWidget(button)
        row.addStretch(1)
        layout = QVBoxLayout(page)
        layout.addWidget(self.model_list, 2)
        layout.addLayout(row)
        layout.addWidget(self.default_label)
        layout.addWidget(self.model_details, 3)
        return page

    def _run_tab(self) -> QWidget:
        page = QWidget(self)
        self.device_combo = QComboBox(page)
        self.device_combo.setEditable(True)   # "cuda:1" picks a second GPU
        self.device_combo.addItems(list(DEVICES))
        self.tile_spin = self._spin(page, 0, 8192)
        self.overlap_spin = self._spin(page, 0, 4096)
        self.batch_spin = self._spin(page, 0, 1024)
        for spin in (self.tile_spin, self.batch_spin):   # 0: chosen on the CPU to fit the memory budget
            spin.setSpecialValueText("Auto (fits the memory budget)")
        self.memory_spin = QDoubleSpinBox(page)
        self.memory_spin.setRange(0.1, 1024.0)
        self.memory_spin.setSingleStep(0.1)
        self.memory_spin.setSuffix(" GB")
        self.precision_combo = QComboBox(page)
        self.precision_combo.addItems(list(PRECISIONS))
        self.python_path_edit = QLineEdit(page)
        self.python_path_edit.setPlaceholderText("site-packages of a virtual environment with torch (optional)")
        browse = QToolButton(page)
        browse.setText("…")
        browse.clicked.connect(self._browse_python_path)
        path_row = QHBoxLayout()
        path_row.addWidget(self.python_path_edit)
        path_row.addWidget(browse)
        # Where jobs run (lcmsr_qgis.worker): a worker process on an interpreter, or inside QGIS.
        self.runner_combo = QComboBox(page)
        for name in worker.RUNNERS:
            self.runner_combo.addItem(worker.RUNNER_LABELS[name], name)
        self.worker_python_edit = QLineEdit(page)
        self.worker_python_edit.setPlaceholderText(f"automatic: {worker.default_python() or 'not found'}")
        browse_python = QToolButton(page)
        browse_python.setText("…")
        browse_python.clicked.connect(self._browse_worker_python)
        check = QPushButton("Check", page)
        check.clicked.connect(self.check_worker_python)
        python_row = QHBoxLayout()
        python_row.addWidget(self.worker_python_edit)
        python_row.addWidget(browse_python)
        python_row.addWidget(check)
        self.worker_check_label = QLabel(page)
        self.worker_check_label.setWordWrap(True)
        self.runner_combo.currentIndexChanged.connect(
            lambda _i: self.worker_python_edit.setEnabled(self.runner_combo.currentData() == worker.WORKER))
        form = QFormLayout(page)
        form.addRow("Run jobs", self.runner_combo)
        form.addRow("Worker Python", python_row)
        form.addRow(self.worker_check_label)
        form.addRow("Device (auto, cpu, cuda, cuda:N)", self.device_combo)
        form.addRow("Tile size (LR pixels)", self.tile_spin)
        form.addRow("Tile overlap (LR pixels)", self.overlap_spin)
        form.addRow("Tiles per batch", self.batch_spin)
        form.addRow("Memory budget (CPU: what a run may add to QGIS)", self.memory_spin)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Extra Python path", path_row)
        note = QLabel("These are the defaults of the Processing algorithms and of "
                      "'Super-resolve active layer'. In a worker process, PyTorch runs outside QGIS: a crash "
                      "or an out-of-memory there is an error message, and GPU memory is freed after each job; "
                      "an empty Worker Python is the Python QGIS runs on with the plugin's PyTorch. A new "
                      "extra Python path is used at once for what is not imported yet, fully after restarting "
                      "QGIS.", page)
        note.setWordWrap(True)
        form.addRow(note)
        return page

    def _diagnostics_tab(self) -> QWidget:
        page = QWidget(self)
        self.diagnostics_view = QPlainTextEdit(page)
        self.diagnostics_view.setReadOnly(True)
        refresh = QPushButton("Refresh", page)
        refresh.clicked.connect(self.refresh_diagnostics)
        copy = QPushButton("Copy", page)
        copy.clicked.connect(self.copy_diagnostics)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(refresh)
        row.addWidget(copy)
        layout = QVBoxLayout(page)
        layout.addWidget(self.diagnostics_view)
        layout.addLayout(row)
        self.tabs.currentChanged.connect(self._tab_changed)
        return page

    @staticmethod
    def _spin(parent, lo, hi) -> QSpinBox:
        spin = QSpinBox(parent)
        spin.setRange(lo, hi)
        return spin

    # --- state --------------------------------------------------------------------------------
    def _load(self) -> None:
        s = self.settings
        for path in bundled_model_paths():
            self._append(path, bundled=True)
        for path in s.models:
            if path not in self.models(bundled=True):
                self._append(path)
        self.device_combo.setCurrentText(str(s.device))
        self.tile_spin.setValue(int(s.tile))
        self.overlap_spin.setValue(int(s.overlap))
        self.batch_spin.setValue(int(s.batch))
        self.memory_spin.setValue(float(s.memory_budget))
        precision = str(s.precision)
        # A value stored by an older version ("fp32", the old default) loads as it was saved.
        self.precision_combo.setCurrentIndex(PRECISIONS.index(precision if precision in PRECISIONS
                                                              else SR_DEFAULTS["precision"]))
        self.python_path_edit.setText(str(s.extra_python_path or ""))
        runner = s.runner if s.runner in worker.RUNNERS else worker.WORKER
        self.runner_combo.setCurrentIndex(worker.RUNNERS.index(runner))
        self.worker_python_edit.setText(str(s.worker_python or ""))
        self.worker_python_edit.setEnabled(runner == worker.WORKER)
        self._update_default_label()
        if self.model_list.count():
            self.model_list.setCurrentRow(0)

    def models(self, bundled: bool = False) -> list:
        """The registered models (saved in the settings); with ``bundled=True`` the bundled ones too."""
        items = [self.model_list.item(i) for i in range(self.model_list.count())]
        return [it.data(PATH_ROLE) for it in items if bundled or not it.data(BUNDLED_ROLE)]

    def current_model(self) -> str:
        item = self.model_list.currentItem()
        return item.data(PATH_ROLE) if item is not None else ""

    @property
    def default_model(self) -> str:
        return self._default_model

    def _append(self, path: str, bundled: bool = False) -> QListWidgetItem:
        item = QListWidgetItem(os.path.basename(path))
        item.setData(PATH_ROLE, path)
        item.setData(BUNDLED_ROLE, bundled)
        item.setToolTip(path)
        origin = "bundled" if bundled else "registered"
        try:
            from lcmsr.weights import read_info

            info = read_info(path)
            d = info.domain
            made_for = (f"{d.family}, " + ("any band" if d.bandwise else "/".join(d.band_roles))
                        + (f", {d.lr_gsd_m[0]:g}-{d.lr_gsd_m[1]:g} m" if d.lr_gsd_m else "")
                        if d.known else "domain unknown")
            item.setText(f"{os.path.basename(path)} — x{info.scale}, {made_for} ({origin})")
        except ImportError:  # no torch yet: the box above the tabs installs it
            item.setText(f"{os.path.basename(path)} ({origin}) — readable once PyTorch is installed")
        except Exception as exc:  # a listed file that went missing or broke since: keep it, say so
            item.setText(f"{os.path.basename(path)} — unusable: {exc}")
        self.model_list.addItem(item)
        return item

    def _error(self, title: str, text: str) -> None:
        self.last_error = text
        self.message_box(title, text)

    def add_model(self, path: str) -> bool:
        """Validate ``path`` with the backend's reader and list it; an invalid file is refused with its message."""
        path = os.path.abspath(os.fspath(path))
        if path in self.models(bundled=True):
            self.model_list.setCurrentRow(self.models(bundled=True).index(path))
            return True
        try:
            # The full check (tensors, shapes, checksum), not just the header: a file accepted here
            # must not fail later in a run.
            from lcmsr.weights import check_model

            check_model(path)
        except ImportError:
            self._error("LCMSR backend missing", environment.backend_status()[1])
            return False
        except Exception as exc:  # ModelFileError, and anything else the loader raises, shown as it is
            self._error("Not an LCMSR model", str(exc))
            return False
        item = self._append(path)
        self.model_list.setCurrentItem(item)
        return True

    def remove_model(self, path: str) -> None:
        for i in range(self.model_list.count()):
            if self.model_list.item(i).data(PATH_ROLE) == path and not self.model_list.item(i).data(BUNDLED_ROLE):
                self.model_list.takeItem(i)
                break
        if path and path == self._default_model:
            self._default_model = ""
            self._update_default_label()

    def set_default_model(self, path: str) -> None:
        if path and path not in self.models(bundled=True) and not self.add_model(path):
            return
        self._default_model = os.path.abspath(path) if path else ""
        self._update_default_label()

    def _update_default_label(self) -> None:
        if self._default_model:
            text = f"Default model: {self._default_model}"
        else:
            text = ("Default model: none — each run chooses the bundled or registered model whose domain "
                    "(bands, data type, pixel size) fits its input, and says which and why")
        self.default_label.setText(text)

    def _show_current(self, current, _previous=None) -> None:
        if current is None:
            self.model_details.setPlainText("")
            return
        try:
            self.model_details.setPlainText(model_summary(current.data(PATH_ROLE)))
        except Exception as exc:
            self.model_details.setPlainText(f"This model cannot be used: {exc}")

    # --- diagnostics --------------------------------------------------------------------------
    def _tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.diagnostics_view.parentWidget() and \
                not self.diagnostics_view.toPlainText():
            self.refresh_diagnostics()

    def refresh_diagnostics(self) -> str:
        text = environment.diagnostics(self.device_combo.currentText().strip() or "auto")
        self.diagnostics_view.setPlainText(text)
        return text

    def copy_diagnostics(self) -> str:
        text = self.diagnostics_view.toPlainText() or self.refresh_diagnostics()
        QApplication.clipboard().setText(text)
        return text

    # --- saving -------------------------------------------------------------------------------
    def save(self) -> bool:
        device = self.device_combo.currentText().strip().lower()
        if not _DEVICE_PATTERN.match(device):
            self._error("Invalid device", f"Device '{device}' is not one of auto, cpu, cuda or cuda:N")
            return False
        python = self.worker_python_edit.text().strip()
        if python and self.runner_combo.currentData() == worker.WORKER and not (
                os.path.isfile(python) and os.access(python, os.X_OK)):
            self._error("Invalid worker Python", f"Worker Python '{python}' does not exist or cannot be run: give "
                                                 "a Python interpreter, or leave it empty for the automatic one")
            return False
        s = self.settings
        s.set("runner", self.runner_combo.currentData())
        s.set("worker_python", python)
        s.models = self.models()
        s.set("default_model", self._default_model)
        s.set("device", device)
        s.set("tile", self.tile_spin.value())
        s.set("overlap", self.overlap_spin.value())
        s.set("batch", self.batch_spin.value())
        s.set("memory_budget", self.memory_spin.value())
        s.set("precision", self.precision_combo.currentText())
        extra = self.python_path_edit.text().strip()
        s.set("extra_python_path", extra)
        environment.add_extra_python_path(extra)
        return True

    def accept(self) -> None:
        if self.save():
            super().accept()

    # --- file pickers (interactive only) ------------------------------------------------------
    def _browse_models(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add LCMSR models", "", "LCMSR models (*.safetensors)")
        for path in paths:
            self.add_model(path)

    def check_worker_python(self) -> str:
        """Whether the worker Python in the field can run jobs (one line, also shown under the field)."""
        python = self.worker_python_edit.text().strip()
        ok, message = worker.check_python(python or worker.default_python(), custom=bool(python))
        text = ("OK: " if ok else "Not usable: ") + message
        self.worker_check_label.setText(text)
        return text

    def _browse_worker_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Worker Python (the python executable of an environment "
                                                    "with PyTorch and GDAL)", self.worker_python_edit.text())
        if path:
            self.worker_python_edit.setText(path)

    def _browse_python_path(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Extra Python path (site-packages)",
                                                  self.python_path_edit.text())
        if folder:
            self.python_path_edit.setText(folder)
