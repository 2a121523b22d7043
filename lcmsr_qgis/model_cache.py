"""Loaded models kept between algorithm runs, keyed by (file, modification time, device).

A batch of 50 rasters through ``lcmsr:superresolve`` must read the weights once,
not 50 times.  Processing runs algorithms on background threads (the menu
action's task is one more), so lookups and loads hold a lock: two runs asking
for the same model at once get the same object, loaded once.  A file replaced
on disk (new mtime or size) is loaded afresh.  Only a few models are kept, since
each may hold GPU memory.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

MAX_MODELS = 2


def _load_with_backend(path: str, device: str):
    from lcmsr.weights import load_model

    return load_model(path, device=device)


class ModelCache:
    def __init__(self, loader=None, max_models: int = MAX_MODELS):
        self._loader = loader or _load_with_backend
        self._max = max(1, int(max_models))
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0   # how many times a file was actually read (tests and the log use it)

    @staticmethod
    def key(path: str, device) -> tuple:
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileNotFoundError(f"model file '{path}' cannot be read: {exc.strerror or exc}") from None
        return path, st.st_mtime_ns, st.st_size, str(device)

    def get(self, path: str, device="cpu"):
        """The model in ``path`` on ``device`` (a resolved device such as "cpu" or "cuda:0")."""
        key = self.key(path, device)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            # An older version of the same file on the same device is stale: free it before loading.
            for old in [k for k in self._models if k[0] == key[0] and k[3] == key[3]]:
                del self._models[old]
            model = self._loader(key[0], key[3])
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self._max:
                self._models.popitem(last=False)
            return model

    def __contains__(self, item) -> bool:
        path, device = item
        try:
            key = self.key(path, device)
        except FileNotFoundError:
            return False
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


_CACHE = ModelCache()


def model_cache() -> ModelCache:
    """The plugin-wide cache shared by every algorithm run and task."""
    return _CACHE
