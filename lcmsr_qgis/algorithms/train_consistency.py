"""`lcmsr:train_consistency` — stage 2: CondNet and the latent consistency denoiser; writes the model file."""
from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingParameterFile

from .. import qgis_enums
from .training import TrainingAlgorithm


class TrainConsistencyAlgorithm(TrainingAlgorithm):
    AUTOENCODER = "AUTOENCODER"

    STAGE = "consistency"
    STAGE_NAME = "stage 2 (consistency)"
    FROM_STAGE1 = True
    BACKEND_FUNCTION = "train_consistency"
    OUTPUT_DESCRIPTION = "Model file (.safetensors)"

    def name(self):
        return "train_consistency"

    def displayName(self):  # noqa: N802
        return "Train LCMSR stage 2 (latent consistency model)"

    def shortHelpString(self):  # noqa: N802
        return (
            "Stage 2 of LCMSR training: from the stage-1 autoencoder, learns CondNet and the latent consistency "
            "denoiser that predicts the HR latent from the LR image in one step. The output is the model file "
            "used by <i>Super-resolve raster</i> (add it in the plugin settings to make it the default).<br><br>"
            "<b>Stage-1 checkpoint</b>: the output of <i>Train LCMSR stage 1</i>. Scale, bands, model size and "
            "normalisation are taken from it (scale and bands, if given, must match).<br>"
            "<b>Progress</b> shows the step, the loss and the validation PSNR. <b>Cancel</b> saves a resumable "
            "checkpoint in the checkpoint folder: run again with <b>Resume</b> set to that folder and the same "
            "settings to continue exactly where it stopped.")

    def add_stage_parameters(self):
        self.addParameter(QgsProcessingParameterFile(
            self.AUTOENCODER, "Stage-1 checkpoint (output of stage 1)", qgis_enums.FILE_BEHAVIOR_FILE,
            fileFilter="Stage-1 checkpoints (*.safetensors *.json)"))

    def stage_options(self, parameters, context):
        stage1 = (self.parameterAsFile(parameters, self.AUTOENCODER, context) or "").strip()
        if not stage1:
            raise QgsProcessingException(f"{self.AUTOENCODER}: give the stage-1 checkpoint")
        return {"stage1": stage1}
