"""What the training algorithms share: parameters, TrainOptions, progress and cancel.

Stage 1 (`lcmsr:train_autoencoder`) learns the residual encoder E and the SR
decoder D; stage 2 (`lcmsr:train_consistency`) learns CondNet and the latent
consistency denoiser from the stage-1 checkpoint and writes the model file;
the optional stage 3 (`lcmsr:train_decoder`) tunes that model's decoder to the
latents its one-step sampler produces and writes a new model file.
Defaults and minima of the parameters come from the backend's one definition of the
options, lcmsr.train_options (torch-free: listing the algorithms needs no torch; it is
imported where parameters are built, so importing these modules needs no backend).
Cancelling saves a resumable checkpoint (the backend does it); the error then
says which folder to give as RESUME.
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .. import qgis_enums
from .base import CONFIG_LABELS, CONFIG_VALUES, TRAINING_GROUP, LcmsrAlgorithm, device_request


class TrainNumbers:
    """Number parameters generated from TrainOptions fields (``NUMBERS``: parameter name -> field) with the
    stage's (``STAGE``) defaults and the fields' minimums, and read back with their type: shared by the
    training stages and fine-tuning."""

    STAGE = ""
    NUMBERS: dict = {}

    def number_parameter(self, name: str, label: str) -> QgsProcessingParameterNumber:
        """The parameter ``name`` with the default and minimum of its TrainOptions field for this stage."""
        from lcmsr.train_options import option, option_default

        field = option(self.NUMBERS[name])
        default = option_default(field.name, self.STAGE)
        kind = qgis_enums.NUMBER_DOUBLE if isinstance(default, float) else qgis_enums.NUMBER_INTEGER
        return QgsProcessingParameterNumber(name, label, kind, defaultValue=default, minValue=field.metadata["minimum"])

    def add_advanced(self, *parameters) -> None:
        for parameter in parameters:
            parameter.setFlags(parameter.flags() | qgis_enums.PARAMETER_ADVANCED)
            self.addParameter(parameter)

    def number_values(self, parameters, context) -> dict:
        """{field: value} of every number parameter, as a float or an int like the field's default."""
        from lcmsr.train_options import option_default

        values = {}
        for name, field in self.NUMBERS.items():
            double = isinstance(option_default(field, self.STAGE), float)
            values[field] = (self.parameterAsDouble if double else self.parameterAsInt)(parameters, name, context)
        return values


class TrainingAlgorithm(TrainNumbers, LcmsrAlgorithm):
    INPUTS = "INPUTS"
    VALIDATION = "VALIDATION"
    SCALE = "SCALE"
    BANDS = "BANDS"
    PATCH = "PATCH"
    ITERATIONS = "ITERATIONS"
    BATCH = "BATCH"
    LEARNING_RATE = "LEARNING_RATE"
    SEED = "SEED"
    RESUME = "RESUME"
    CHECKPOINT = "CHECKPOINT"
    CONFIG = "CONFIG"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    # outputs besides OUTPUT
    STEPS = "STEPS"
    LOSS = "LOSS"
    VAL_PSNR = "VAL_PSNR"
    BICUBIC_PSNR = "BICUBIC_PSNR"

    STAGE = ""               # the lcmsr.train stage: "autoencoder" | "consistency" | "decoder"
    STAGE_NAME = ""          # for messages
    BACKEND_FUNCTION = ""    # lcmsr.train.train_autoencoder | train_consistency | train_decoder
    FROM_STAGE1 = False      # stages 2 and 3: scale, bands and config come from the previous stage
    PREVIOUS = "the stage-1"  # what they come from, for the parameter labels
    OUTPUT_DESCRIPTION = ""
    # Numeric parameters and the TrainOptions field each one sets (the stage ones add theirs).
    NUMBERS = {"ITERATIONS": "iterations", "PATCH": "patch", "BATCH": "batch", "SEED": "seed"}

    GROUP, GROUP_ID = TRAINING_GROUP

    def add_stage_parameters(self) -> None:
        """Stage 2 adds the stage-1 checkpoint here."""

    def initAlgorithm(self, config=None):  # noqa: N802
        from lcmsr.train_options import option_default

        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, "Training rasters (high resolution)",
                                                               qgis_enums.SOURCE_RASTER))
        self.addParameter(QgsProcessingParameterRasterLayer(self.VALIDATION, "Validation raster (held out)",
                                                            optional=True))
        self.add_stage_parameters()
        if self.FROM_STAGE1:
            # Stage 2 continues the stage-1 run: its scale, bands and model size come from that checkpoint.
            self.addParameter(QgsProcessingParameterNumber(
                self.SCALE, f"Scale factor (empty: {self.PREVIOUS} scale)", qgis_enums.NUMBER_INTEGER,
                optional=True, minValue=2, maxValue=8))
            self.addParameter(QgsProcessingParameterString(self.BANDS, f"Bands (empty: {self.PREVIOUS} bands)",
                                                           optional=True))
        else:
            self.add_scale_parameter(self.SCALE)
            self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands, e.g. 1,2,3 (empty: all but alpha)",
                                                           optional=True))
            self.addParameter(QgsProcessingParameterEnum(self.CONFIG, "Model size", options=CONFIG_LABELS,
                                                         defaultValue=CONFIG_VALUES.index(
                                                             option_default("config", self.STAGE))))
        self.addParameter(self.number_parameter(self.ITERATIONS, "Iterations"))
        self.add_device_parameter(self.DEVICE)
        self.add_advanced(self.number_parameter(self.PATCH, "HR patch size (pixels)"),
                          self.number_parameter(self.BATCH, "Batch size"),
                          QgsProcessingParameterNumber(self.LEARNING_RATE, self.learning_rate_label(),
                                                       qgis_enums.NUMBER_DOUBLE, optional=True,
                                                       minValue=0.0),
                          self.number_parameter(self.SEED, "Random seed"))
        self.addParameter(QgsProcessingParameterFile(
            self.RESUME, "Resume from checkpoint (folder, or its step-N.json)", qgis_enums.FILE_BEHAVIOR_FOLDER,
            optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.CHECKPOINT, "Checkpoint folder (empty: <output name>_checkpoints beside the output)",
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.OUTPUT_DESCRIPTION,
                                                                "Safetensors files (*.safetensors)"))
        self.addOutput(QgsProcessingOutputNumber(self.STEPS, "Steps trained"))
        self.addOutput(QgsProcessingOutputNumber(self.LOSS, "Last training loss"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_PSNR, "Validation PSNR (dB, model space)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_PSNR, "Bicubic PSNR on the same crops (dB)"))

    def learning_rate_label(self) -> str:
        from lcmsr.train_options import DECODER_LR, PAPER_LR

        if self.STAGE not in PAPER_LR:
            return f"Learning rate (empty: {DECODER_LR:g}, decayed to 0 on a cosine)"
        lr, batch = PAPER_LR[self.STAGE]
        return f"Learning rate (empty: the paper's {lr:g} per batch of {batch}, scaled with the batch)"

    def stage_options(self, parameters, context) -> dict:
        """TrainOptions fields only this stage has."""
        return {}

    def options(self, parameters, context) -> dict:
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not layers:
            raise QgsProcessingException(f"{self.INPUTS}: give at least one training raster")
        sources = [self.gdal_source(layer, self.INPUTS) for layer in layers]
        validation = self.parameterAsRasterLayer(parameters, self.VALIDATION, context)
        learning_rate = 0.0 if parameters.get(self.LEARNING_RATE) in (None, "") else \
            self.parameterAsDouble(parameters, self.LEARNING_RATE, context)
        resume = (self.parameterAsFile(parameters, self.RESUME, context) or "").strip()
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not out.lower().endswith(".safetensors"):
            raise QgsProcessingException(f"{self.OUTPUT}: '{out}' must end in .safetensors")
        options = dict(
            sources=sources,
            val_sources=[self.gdal_source(validation, self.VALIDATION)] if validation is not None else [],
            scale=self._scale(parameters, context),
            bands=self.bands_value(parameters, self.BANDS, context),
            lr=learning_rate if learning_rate > 0 else None,
            checkpoint_dir=self._checkpoint_dir(parameters, context, out),
            resume=resume or False,
            device=device_request(self.parameterAsEnum(parameters, self.DEVICE, context)),
            out=out,
        )
        options.update(self.number_values(parameters, context))
        if not self.FROM_STAGE1:
            options["config"] = CONFIG_VALUES[self.parameterAsEnum(parameters, self.CONFIG, context)]
        options.update(self.stage_options(parameters, context))
        return options

    def _checkpoint_dir(self, parameters, context, out: str) -> str:
        # Beside the output rather than in a temporary folder: a cancelled run is resumed from here,
        # possibly after QGIS was restarted (temporary folders are deleted on exit).
        folder = (self.parameterAsFileOutput(parameters, self.CHECKPOINT, context) or "").strip()
        return folder or os.path.splitext(out)[0] + "_checkpoints"

    def _scale(self, parameters, context):
        if self.FROM_STAGE1 and parameters.get(self.SCALE) in (None, ""):
            return None
        return self.scale_value(parameters, self.SCALE, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        feedback = feedback if feedback is not None else QgsProcessingFeedback()
        fields = self.options(parameters, context)
        feedback.pushInfo(f"{self.STAGE_NAME}: {len(fields['sources'])} training raster(s), "
                      f"{fields['iterations']} iterations, checkpoints in {fields['checkpoint_dir']}")
        try:
            result = self.run_job("train", feedback, stage=self.STAGE, options=fields)
        except QgsProcessingException as exc:
            if feedback is not None and feedback.isCanceled():
                # The backend saved a checkpoint before stopping: say how to continue.
                raise QgsProcessingException(
                    f"{exc}. To continue, run again with {self.RESUME} = {fields['checkpoint_dir']}") from exc
            raise
        model_path = result["model_path"] or fields["out"]
        feedback.pushInfo(f"{self.STAGE_NAME}: {result['steps']} steps in {result['seconds']:.0f} s; "
                          f"wrote {model_path}" + (f"; checkpoint {result['checkpoint']}" if result["checkpoint"]
                                                   else ""))
        return {
            self.OUTPUT: model_path,
            self.CHECKPOINT: fields["checkpoint_dir"],
            self.STEPS: result["steps"],
            self.LOSS: result["loss"],
            self.VAL_PSNR: result["val_psnr"],
            self.BICUBIC_PSNR: result["bicubic_psnr"],
        }
