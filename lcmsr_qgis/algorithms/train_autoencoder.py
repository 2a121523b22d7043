"""`lcmsr:train_autoencoder` — stage 1: the residual encoder E and the SR decoder D."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterEnum

from .training import TrainingAlgorithm


class TrainAutoencoderAlgorithm(TrainingAlgorithm):
    PIXEL_LOSS = "PIXEL_LOSS"
    LPIPS_WEIGHT = "LPIPS_WEIGHT"

    STAGE = "autoencoder"
    STAGE_NAME = "stage 1 (autoencoder)"
    BACKEND_FUNCTION = "train_autoencoder"
    NUMBERS = dict(TrainingAlgorithm.NUMBERS, LPIPS_WEIGHT="lpips_weight")
    OUTPUT_DESCRIPTION = "Stage-1 autoencoder checkpoint (.safetensors)"

    def name(self):
        return "train_autoencoder"

    def displayName(self):  # noqa: N802
        return "Train LCMSR stage 1 (autoencoder)"

    def shortHelpString(self):  # noqa: N802
        return (
            "Stage 1 of LCMSR training: learns the residual encoder and the SR decoder that turns the LR image and "
            "a 4-channel latent at HR/8 back into the HR image. Its output feeds stage 2 "
            "(<i>Train LCMSR stage 2</i>).<br><br>"
            "<b>Training rasters</b>: high-resolution rasters; LR inputs are made from them by antialiased "
            "bicubic downsampling. <b>Validation raster</b>: a held-out raster, measured every few hundred steps "
            "(PSNR against bicubic).<br>"
            "<b>Bands</b>: 1-based band numbers, the same for every raster. <b>Model size</b>: <i>small</i> "
            "trains on a CPU; <i>paper</i> needs a GPU.<br>"
            "<b>Pixel loss</b> and <b>LPIPS weight</b> (advanced): the paper uses L1 + 1.0 × LPIPS; the shipped "
            "model was trained with L2 + 0.05 × LPIPS, which keeps a briefly trained model closer to the "
            "reference in PSNR (0: no perceptual term).<br>"
            "<b>Progress</b> shows the step, the loss and the validation PSNR. <b>Cancel</b> saves a resumable "
            "checkpoint in the checkpoint folder: run again with <b>Resume</b> set to that folder and the same "
            "settings to continue exactly where it stopped.")

    def add_stage_parameters(self):
        from lcmsr.choices import PIXEL_LOSS_LABELS, PIXEL_LOSSES
        from lcmsr.train_options import option_default

        self.add_advanced(
            QgsProcessingParameterEnum(self.PIXEL_LOSS, "Pixel loss",
                                       options=[PIXEL_LOSS_LABELS[k] for k in PIXEL_LOSSES],
                                       defaultValue=PIXEL_LOSSES.index(option_default("pixel_loss", self.STAGE))),
            self.number_parameter(self.LPIPS_WEIGHT, "LPIPS weight"))

    def stage_options(self, parameters, context):
        from lcmsr.choices import PIXEL_LOSSES

        weight = self.parameterAsDouble(parameters, self.LPIPS_WEIGHT, context)
        return {"pixel_loss": PIXEL_LOSSES[self.parameterAsEnum(parameters, self.PIXEL_LOSS, context)],
                "lpips": weight > 0}
