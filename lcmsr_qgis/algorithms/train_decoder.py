"""`lcmsr:train_decoder` — optional stage 3: the decoder tuned to the one-step sampler's latents."""
from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingParameterFile

from .. import qgis_enums
from .training import TrainingAlgorithm


class TrainDecoderAlgorithm(TrainingAlgorithm):
    MODEL = "MODEL"
    LPIPS_WEIGHT = "LPIPS_WEIGHT"

    STAGE = "decoder"
    STAGE_NAME = "stage 3 (decoder alignment)"
    FROM_STAGE1 = True
    PREVIOUS = "the model's"
    BACKEND_FUNCTION = "train_decoder"
    NUMBERS = dict(TrainingAlgorithm.NUMBERS, LPIPS_WEIGHT="lpips_weight")
    OUTPUT_DESCRIPTION = "Aligned model file (.safetensors)"

    def name(self):
        return "train_decoder"

    def displayName(self):  # noqa: N802
        return "Train LCMSR stage 3 (align the decoder, optional)"

    def shortHelpString(self):  # noqa: N802
        return (
            "Optional stage 3, not in the paper: fine-tunes the decoder of a finished model file on the latents "
            "its one-step sampler produces (CondNet and the consistency denoiser stay frozen) and writes a new "
            "model file. Stage 1 teaches the decoder the <i>true</i> latent of the HR image; inference gives it "
            "the <i>sampled</i> one. After a short training the two differ, and this stage recovers the PSNR "
            "lost in between, at some cost in texture (the aerial model card measures it; the shipped models do "
            "not use it).<br><br>"
            "<b>Model</b>: the output of <i>Train LCMSR stage 2</i> (or any LCMSR model file). Scale, bands, "
            "model size and normalisation are taken from it.<br>"
            "<b>Loss</b>: squared error plus <b>LPIPS weight</b> × LPIPS (0: squared error only, the sharpest "
            "PSNR; higher: more texture).<br>"
            "<b>Cancel</b> saves a resumable checkpoint: run again with <b>Resume</b> set to that folder.")

    def add_stage_parameters(self):
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model file to align (output of stage 2)", qgis_enums.FILE_BEHAVIOR_FILE,
            fileFilter="LCMSR models (*.safetensors)"))
        self.add_advanced(self.number_parameter(self.LPIPS_WEIGHT, "LPIPS weight"))

    def stage_options(self, parameters, context):
        model = (self.parameterAsFile(parameters, self.MODEL, context) or "").strip()
        if not model:
            raise QgsProcessingException(f"{self.MODEL}: give the model file to align")
        weight = self.parameterAsDouble(parameters, self.LPIPS_WEIGHT, context)
        return {"base_model": model, "lpips": weight > 0}   # the pixel loss: the stage's default, l2
