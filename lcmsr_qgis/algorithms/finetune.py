"""`lcmsr:finetune` — "Fine-tune a model on your imagery": a bundled, registered or trained model
continued on the user's own HR rasters (lcmsr.train.finetune), written as a new model file.

Defaults and minima come from the backend's one definition of the options (lcmsr.train_options, stage
"finetune"), as the training algorithms' do.  Cancel saves a resumable checkpoint; running again with
the same output continues it (RESUME, on by default).
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .. import qgis_enums
from .base import TRAINING_GROUP, LcmsrAlgorithm, device_request
from .training import TrainNumbers

DEFAULT_BASE = "lcmsr_x4_rgb_small"   # the bundled aerial model


class FinetuneAlgorithm(TrainNumbers, LcmsrAlgorithm):
    INPUTS = "INPUTS"
    LR_INPUTS = "LR_INPUTS"
    MODEL = "MODEL"
    MINUTES = "MINUTES"
    ITERATIONS = "ITERATIONS"
    BANDS = "BANDS"
    VALIDATION = "VALIDATION"
    DEVICE = "DEVICE"
    PATCH = "PATCH"
    BATCH = "BATCH"
    LEARNING_RATE = "LEARNING_RATE"
    SEED = "SEED"
    LPIPS_WEIGHT = "LPIPS_WEIGHT"
    DECODER_SHARE = "DECODER_SHARE"
    RESUME = "RESUME"
    CHECKPOINT = "CHECKPOINT"
    OUTPUT = "OUTPUT"
    STEPS = "STEPS"
    LOSS = "LOSS"
    VAL_PSNR = "VAL_PSNR"
    BICUBIC_PSNR = "BICUBIC_PSNR"

    STAGE = "finetune"
    # Numeric parameters and the TrainOptions field each one sets.
    NUMBERS = {"PATCH": "patch", "BATCH": "batch", "SEED": "seed", "LPIPS_WEIGHT": "lpips_weight",
               "DECODER_SHARE": "decoder_share"}

    GROUP, GROUP_ID = TRAINING_GROUP

    def name(self):
        return "finetune"

    def displayName(self):  # noqa: N802
        return "Fine-tune a model on your imagery"

    def shortHelpString(self):  # noqa: N802
        return (
            "Continues a model on your own high-resolution rasters and writes a new model file, in minutes on a "
            "laptop CPU. Both of the model's stages start from its weights: first its decoder (a quarter of the "
            "budget), then CondNet and the consistency denoiser.<br><br>"
            "<b>Model</b>: the name of a bundled or registered model (e.g. lcmsr_x4_rgb_small, "
            "lcmsr_x4_satellite_bandwise) or the path of a .safetensors file.<br>"
            "<b>High-resolution rasters</b>: imagery of the kind the model is for, at the resolution you want "
            "out. The low-resolution input is made from them by the project's degradation, unless you give "
            "<b>co-registered low-resolution rasters</b> (one per high-resolution raster, same extent, pixels "
            "the scale factor larger).<br>"
            "<b>Minutes</b> is the budget (the steps are planned from a short timed trial); <b>Iterations</b>, "
            "when given, replaces it.<br>"
            "The new model's domain is the base model's, widened by what your data showed (pixel sizes, data "
            "types, band kinds); its metadata records the base model (name and SHA-256), the data and the time. "
            "<b>Cancel</b> saves a checkpoint: run again with the same output to continue.")

    def initAlgorithm(self, config=None):  # noqa: N802
        from lcmsr.train_options import FINETUNE_MINUTES, option

        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, "High-resolution rasters to learn from",
                                                               qgis_enums.SOURCE_RASTER))
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, "Model to start from (a bundled or registered model's name, or a .safetensors file)",
            defaultValue=DEFAULT_BASE))
        self.addParameter(QgsProcessingParameterNumber(
            self.MINUTES, "Minutes to spend", qgis_enums.NUMBER_DOUBLE,
            defaultValue=FINETUNE_MINUTES, minValue=option("minutes").metadata["minimum"]))
        self.addParameter(QgsProcessingParameterNumber(
            self.ITERATIONS, "Iterations (instead of minutes; empty: use minutes)",
            qgis_enums.NUMBER_INTEGER, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.LR_INPUTS, "Co-registered low-resolution rasters (optional: one per high-resolution raster, "
                            "same order)", qgis_enums.SOURCE_RASTER, optional=True))
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands, e.g. 1,2,3 (empty: matched to the "
                                                                   "model by their kinds)", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.VALIDATION, "Validation raster (held out)",
                                                            optional=True))
        self.add_device_parameter(self.DEVICE)
        learning_rate = QgsProcessingParameterNumber(
            self.LEARNING_RATE, "Learning rate (empty: 1e-4 for the decoder, 5e-5 for CondNet and the denoiser)",
            qgis_enums.NUMBER_DOUBLE, optional=True, minValue=0.0)
        self.add_advanced(self.number_parameter(self.PATCH, "HR patch size (pixels)"),
                          self.number_parameter(self.BATCH, "Batch size"), learning_rate,
                          self.number_parameter(self.SEED, "Random seed"),
                          self.number_parameter(self.LPIPS_WEIGHT, "LPIPS weight of the one-step output"),
                          self.number_parameter(self.DECODER_SHARE, "Share of the budget for the decoder"))
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESUME, "Continue from the checkpoint folder when it holds a checkpoint", defaultValue=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.CHECKPOINT, "Checkpoint folder (empty: <output name>_checkpoints beside the output)",
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Fine-tuned model file (.safetensors)",
                                                                "Safetensors files (*.safetensors)"))
        self.addOutput(QgsProcessingOutputNumber(self.STEPS, "Steps trained"))
        self.addOutput(QgsProcessingOutputNumber(self.LOSS, "Last training loss"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_PSNR, "Validation PSNR (dB, model space)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_PSNR, "Bicubic PSNR on the same crops (dB)"))

    def options(self, parameters, context) -> dict:
        from ..settings import Settings

        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not layers:
            raise QgsProcessingException(f"{self.INPUTS}: give at least one high-resolution raster")
        lr_layers = self.parameterAsLayerList(parameters, self.LR_INPUTS, context) or []
        if lr_layers and len(lr_layers) != len(layers):
            raise QgsProcessingException(f"{self.LR_INPUTS}: {len(lr_layers)} low-resolution raster(s) for "
                                         f"{len(layers)} high-resolution raster(s): give one per raster, or none")
        model = (self.parameterAsString(parameters, self.MODEL, context) or "").strip()
        if not model:
            raise QgsProcessingException(f"{self.MODEL}: name the model to start from")
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not out.lower().endswith(".safetensors"):
            raise QgsProcessingException(f"{self.OUTPUT}: '{out}' must end in .safetensors")
        validation = self.parameterAsRasterLayer(parameters, self.VALIDATION, context)
        iterations = None if parameters.get(self.ITERATIONS) in (None, "") else \
            self.parameterAsInt(parameters, self.ITERATIONS, context)
        learning_rate = None if parameters.get(self.LEARNING_RATE) in (None, "") else \
            self.parameterAsDouble(parameters, self.LEARNING_RATE, context)
        folder = (self.parameterAsFileOutput(parameters, self.CHECKPOINT, context) or "").strip()
        options = dict(
            sources=[self.gdal_source(layer, self.INPUTS) for layer in layers],
            lr_sources=[self.gdal_source(layer, self.LR_INPUTS) for layer in lr_layers],
            val_sources=[self.gdal_source(validation, self.VALIDATION)] if validation is not None else [],
            base_model=self._model_path(model, Settings().models),
            minutes=None if iterations else self.parameterAsDouble(parameters, self.MINUTES, context),
            iterations=iterations,
            bands=self.bands_value(parameters, self.BANDS, context),
            lr=learning_rate if learning_rate else None,
            checkpoint_dir=folder or os.path.splitext(out)[0] + "_checkpoints",
            resume=self.parameterAsBoolean(parameters, self.RESUME, context),
            device=device_request(self.parameterAsEnum(parameters, self.DEVICE, context)),
            out=out)
        options.update(self.number_values(parameters, context))
        options["lpips"] = options["lpips_weight"] > 0
        return options

    @staticmethod
    def _model_path(model: str, registered) -> str:
        """A path, or the bundled or registered (plugin settings) model of that name."""
        from lcmsr.catalog import model_paths

        if os.path.exists(model):
            return model
        for path in model_paths(registered):
            base = os.path.basename(path)
            if model in (base, os.path.splitext(base)[0]):
                return path
        names = ", ".join(os.path.splitext(os.path.basename(p))[0] for p in model_paths(registered)) or "none"
        raise QgsProcessingException(f"MODEL: '{model}' is neither a file nor a bundled or registered model "
                                     f"(known: {names})")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        feedback = feedback if feedback is not None else QgsProcessingFeedback()
        fields = self.options(parameters, context)
        budget = f"{fields['iterations']} iterations" if fields["iterations"] else f"{fields['minutes']:g} minutes"
        feedback.pushInfo(f"fine-tuning {os.path.basename(fields['base_model'])} on {len(fields['sources'])} "
                          f"raster(s), {budget}, checkpoints in {fields['checkpoint_dir']}")
        result = self.run_job("train", feedback, stage="finetune", options=fields)
        feedback.pushInfo(f"fine-tuning: {result['steps']} steps in {result['seconds']:.0f} s; "
                          f"wrote {result['model_path']}")
        return {self.OUTPUT: result["model_path"] or fields["out"], self.CHECKPOINT: fields["checkpoint_dir"],
                self.STEPS: result["steps"], self.LOSS: result["loss"], self.VAL_PSNR: result["val_psnr"],
                self.BICUBIC_PSNR: result["bicubic_psnr"]}
