"""What every LCMSR algorithm shares: group, icon, the backend check, error translation.

No torch import at module level: the toolbox lists the algorithms in a QGIS without
torch, and ``canExecute`` says what to install.  Choices and defaults come from
``lcmsr.choices``, which is torch-free and ships in the plugin zip with the backend.
"""
from __future__ import annotations

import contextlib
import re

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from lcmsr import choices

from .. import environment, qgis_enums
from ..provider import plugin_icon

# Enum parameters take indices: values and labels in the order lcmsr.choices lists them.
DEVICE_VALUES = list(choices.DEVICES)
DEVICE_LABELS = [choices.DEVICE_LABELS[name] for name in choices.DEVICES]
CONFIG_VALUES = list(choices.CONFIG_NAMES)
CONFIG_LABELS = [choices.CONFIG_LABELS[name] for name in choices.CONFIG_NAMES]


def device_default_index() -> int:
    """The settings' device as an index of DEVICE_VALUES ("cuda:1" counts as CUDA)."""
    from ..settings import Settings

    device = str(Settings().device or "auto").lower()
    return DEVICE_VALUES.index("cuda") if device.startswith("cuda") else (
        DEVICE_VALUES.index(device) if device in DEVICE_VALUES else 0)


def device_request(index: int) -> str:
    """The enum's choice as a request for lcmsr.runtime.resolve_device; CUDA keeps the settings' GPU index."""
    from ..settings import Settings

    value = DEVICE_VALUES[index]
    if value == "cuda":
        configured = str(Settings().device or "").lower()
        if configured.startswith("cuda:"):
            return configured
    return value


TRAINING_GROUP = ("Training and evaluation", "training")


def parse_bands(value, parameter: str = "BANDS") -> list[int] | None:
    """Bands as QGIS hands them over: a list of numbers (the dialog, processing.run) or text such as '3,2,1'
    or '3 2 1' (qgis_process: QGIS 3.22's parameterAsInts turns that text into [0]).  Empty: None."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif value is None:
        items = []
    else:
        items = [item for item in re.split(r"[,;\s]+", str(value).strip()) if item]
    bands = []
    for item in items:
        try:
            band = int(str(item).strip())
        except ValueError:
            raise QgsProcessingException(f"{parameter}: '{item}' is not a band number (use e.g. 3,2,1)") from None
        if band < 1:
            raise QgsProcessingException(f"{parameter}: band {band} does not exist (bands are numbered from 1)")
        bands.append(band)
    return bands or None


class LcmsrAlgorithm(QgsProcessingAlgorithm):
    """Base of the provider's algorithms; subclasses declare parameters and call the backend."""

    GROUP, GROUP_ID = "Super-resolution", "superresolution"

    def group(self):
        return self.GROUP

    def groupId(self):  # noqa: N802
        return self.GROUP_ID

    def createInstance(self):  # noqa: N802
        return type(self)()

    def icon(self):
        return plugin_icon()

    def flags(self):
        return super().flags() | qgis_enums.ALGORITHM_CAN_CANCEL

    def canExecute(self):  # noqa: N802
        ok, message = environment.backend_status()
        return ok, ("" if ok else message)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        # qgis_process does not ask canExecute: without torch, the one-line hint instead of an import traceback.
        ok, message = environment.backend_status()
        if not ok:
            raise QgsProcessingException(message)
        return True

    # --- helpers for subclasses ---------------------------------------------------------------
    def add_device_parameter(self, name: str = "DEVICE"):
        self.addParameter(QgsProcessingParameterEnum(name, "Device", options=DEVICE_LABELS,
                                                    defaultValue=device_default_index()))

    def add_scale_parameter(self, name: str = "SCALE", description: str = ""):
        scales = choices.SCALES
        description = description or f"Scale factor ({', '.join(map(str, scales[:-1]))} or {scales[-1]})"
        self.addParameter(QgsProcessingParameterNumber(name, description, qgis_enums.NUMBER_INTEGER,
                                                      defaultValue=4, minValue=min(scales), maxValue=max(scales)))

    def scale_value(self, parameters, name, context) -> int:
        scale = self.parameterAsInt(parameters, name, context)
        if scale not in choices.SCALES:
            raise QgsProcessingException(f"{name} = {scale} is not supported: use one of "
                                         f"{', '.join(map(str, choices.SCALES))}")
        return scale

    def bands_value(self, parameters, name, context) -> list[int] | None:
        """A band list parameter (QgsProcessingParameterBand or text) as 1-based band numbers; None: all."""
        value = parameters.get(name)
        if not (value is None or isinstance(value, (str, int, list, tuple))):
            value = self.parameterAsString(parameters, name, context)   # a QgsProperty, an expression...
        return parse_bands(value, name)

    @staticmethod
    def gdal_source(layer, parameter: str) -> str:
        """The path GDAL opens for a raster layer; other providers (WMS, …) cannot be read by the backend."""
        if layer is None or not layer.isValid():
            raise QgsProcessingException(f"{parameter}: the raster layer could not be loaded")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{parameter}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; "
                "LCMSR reads files through GDAL — export it to a GeoTIFF first (Raster ▸ Conversion ▸ Translate)")
        return layer.source()

    @staticmethod
    def run_job(command: str, feedback, **args) -> dict:
        """The backend's ``command`` (lcmsr.jobs) with ``args`` (plain values; option dataclasses as dicts of
        their fields), run where the settings say (lcmsr_qgis.worker: a worker process by default); its
        result.  Errors arrive as QgsProcessingException with the backend's own sentence."""
        from lcmsr.jobs import Job

        from ..worker import runner

        return runner().run(Job(command, args), feedback)

    @staticmethod
    @contextlib.contextmanager
    def backend_errors():
        """Backend exceptions become QgsProcessingException with the backend's own sentence.

        The backend's errors already name the file, band or value; a traceback in
        the Processing log would only hide that sentence.
        """
        from lcmsr.progress import Cancelled

        try:
            yield
        except QgsProcessingException:
            raise
        except Cancelled as exc:
            raise QgsProcessingException(f"Cancelled: {exc}") from exc
        except (ValueError, LookupError, OSError, RuntimeError, MemoryError) as exc:
            from lcmsr.text import safe_text   # one line: a path may hold a newline or escape codes

            raise QgsProcessingException(safe_text(exc) or type(exc).__name__) from exc

