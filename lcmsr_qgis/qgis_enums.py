"""QGIS enums that moved into ``Qgis`` (QGIS 3.36), spelled the QGIS 4 way where they exist.

From QGIS 3.36 ``QgsProcessingAlgorithm.Flag`` *is* ``Qgis.ProcessingAlgorithmFlag`` and the old member
names (``FlagCanCancel``) are compatibility aliases that QGIS 4 drops; QGIS 3.22-3.34 have only the old
spelling.  Each value here is the scoped ``Qgis.*`` member where this QGIS has it, else the old one.  The
old spelling is a string, looked up only when the new one is missing: nothing on QGIS >= 3.36 reaches an
alias (tests/qgis/test_qt6_clean.py checks both).
"""
from __future__ import annotations

import qgis.core


def scoped(new: str, old: str):
    """The member at dotted path ``new`` in ``qgis.core`` (e.g. "Qgis.ProcessingAlgorithmFlag.CanCancel"),
    or at ``old`` on a QGIS older than that enum."""
    for path in (new, old):
        value = qgis.core
        try:
            for part in path.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        return value
    raise AttributeError(f"neither qgis.core.{new} nor qgis.core.{old} exists in QGIS {qgis.core.Qgis.QGIS_VERSION}")


# The pairs, so that the test can check every one on the QGIS it runs on.
PAIRS = {
    "ALGORITHM_CAN_CANCEL": ("Qgis.ProcessingAlgorithmFlag.CanCancel", "QgsProcessingAlgorithm.Flag.FlagCanCancel"),
    "PARAMETER_ADVANCED": ("Qgis.ProcessingParameterFlag.Advanced",
                           "QgsProcessingParameterDefinition.Flag.FlagAdvanced"),
    "NUMBER_INTEGER": ("Qgis.ProcessingNumberParameterType.Integer", "QgsProcessingParameterNumber.Type.Integer"),
    "NUMBER_DOUBLE": ("Qgis.ProcessingNumberParameterType.Double", "QgsProcessingParameterNumber.Type.Double"),
    "FILE_BEHAVIOR_FILE": ("Qgis.ProcessingFileParameterBehavior.File", "QgsProcessingParameterFile.Behavior.File"),
    "FILE_BEHAVIOR_FOLDER": ("Qgis.ProcessingFileParameterBehavior.Folder",
                             "QgsProcessingParameterFile.Behavior.Folder"),
    "SOURCE_RASTER": ("Qgis.ProcessingSourceType.Raster", "QgsProcessing.SourceType.TypeRaster"),
    "SOURCE_FILE": ("Qgis.ProcessingSourceType.File", "QgsProcessing.SourceType.TypeFile"),
}
ALGORITHM_CAN_CANCEL = scoped(*PAIRS["ALGORITHM_CAN_CANCEL"])
PARAMETER_ADVANCED = scoped(*PAIRS["PARAMETER_ADVANCED"])
NUMBER_INTEGER = scoped(*PAIRS["NUMBER_INTEGER"])
NUMBER_DOUBLE = scoped(*PAIRS["NUMBER_DOUBLE"])
FILE_BEHAVIOR_FILE = scoped(*PAIRS["FILE_BEHAVIOR_FILE"])
FILE_BEHAVIOR_FOLDER = scoped(*PAIRS["FILE_BEHAVIOR_FOLDER"])
SOURCE_RASTER = scoped(*PAIRS["SOURCE_RASTER"])
SOURCE_FILE = scoped(*PAIRS["SOURCE_FILE"])
