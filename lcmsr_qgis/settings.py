"""Per-user settings in QgsSettings under the plugin's own prefix `lcmsr/`."""
import json
import os

from qgis.core import QgsSettings

from lcmsr.choices import SR_DEFAULTS

PREFIX = "lcmsr/"
# The run defaults are the backend's (lcmsr.choices is torch-free and ships with the plugin).
DEFAULTS = {
    "default_model": "",
    **{key: SR_DEFAULTS[key] for key in ("device", "tile", "overlap", "batch", "memory_budget", "precision")},
    "extra_python_path": "",
    # Where jobs run (lcmsr_qgis.worker): "worker" (a worker process) or "inprocess" (inside QGIS), and the
    # worker's interpreter ("": the Python QGIS runs on, with the plugin's PyTorch folder).
    "runner": "worker",
    "worker_python": "",
}


def bundled_model_paths() -> list:
    """The shipped models, where the backend's automatic choice finds them (lcmsr.catalog, torch-free)."""
    from lcmsr.catalog import bundled_model_dir

    return [str(p) for p in sorted(bundled_model_dir().glob("*.safetensors"))]


class Settings:
    def __init__(self):
        self._s = QgsSettings()

    def _get(self, key):
        default = DEFAULTS[key]
        value = self._s.value(PREFIX + key, default)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                return type(default)(value)
            except (TypeError, ValueError):
                return default
        return value if value is not None else default

    def _set(self, key, value):
        self._s.setValue(PREFIX + key, value)

    def __getattr__(self, key):
        if key in DEFAULTS:
            return self._get(key)
        raise AttributeError(key)

    def set(self, key, value):
        if key not in DEFAULTS and key != "models":
            raise KeyError(key)
        self._set(key, value)

    @property
    def models(self) -> list:
        raw = self._s.value(PREFIX + "models", "[]")
        try:
            paths = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            paths = []
        return [p for p in paths if isinstance(p, str)]

    @models.setter
    def models(self, paths):
        self._s.setValue(PREFIX + "models", json.dumps(list(dict.fromkeys(paths))))

    def model_for_run(self) -> str:
        """The default model if the user set one and it exists; '' lets the run choose by the input's domain."""
        path = self.default_model
        if path and os.path.exists(path):
            return path
        return ""
