"""`lcmsr:evaluate` — PSNR, SSIM and LPIPS of a super-resolved raster against its HR reference, and whether
to trust it: LR-consistency, spectral angles, the uncertainty map's correlation with the error, pictures.

Either the SR raster is given (with its reference, its LR input, or both), or a model: then the reference
is degraded with the training degradation, super-resolved and scored (the paper's protocol), next to
bicubic upsampling of the same LR.
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .. import qgis_enums
from ..settings import Settings
from .base import TRAINING_GROUP, LcmsrAlgorithm, device_request


class EvaluateAlgorithm(LcmsrAlgorithm):
    REFERENCE = "REFERENCE"
    SR = "SR"
    MODEL = "MODEL"
    SCALE = "SCALE"
    BANDS = "BANDS"
    LPIPS = "LPIPS"
    DEVICE = "DEVICE"
    OUTPUT_HTML = "OUTPUT_HTML"
    # outputs
    PSNR = "PSNR"
    SSIM = "SSIM"
    LPIPS_VALUE = "LPIPS_VALUE"
    SR_RASTER = "SR_RASTER"
    BICUBIC_PSNR = "BICUBIC_PSNR"
    BICUBIC_SSIM = "BICUBIC_SSIM"
    BICUBIC_LPIPS = "BICUBIC_LPIPS"
    LR = "LR"
    UNCERTAINTY = "UNCERTAINTY"
    SAMPLES = "SAMPLES"
    LR_MAE = "LR_MAE"
    LR_RMSE = "LR_RMSE"
    LR_MAX = "LR_MAX"
    SAM_INPUT = "SAM_INPUT"
    SAM_REFERENCE = "SAM_REFERENCE"
    UNCERTAINTY_SPEARMAN = "UNCERTAINTY_SPEARMAN"
    BICUBIC_LR_MAE = "BICUBIC_LR_MAE"
    BICUBIC_SAM_REFERENCE = "BICUBIC_SAM_REFERENCE"
    # output -> the backend's result key
    TRUST_OUTPUTS = {LR_MAE: "lr_mae", LR_RMSE: "lr_rmse", LR_MAX: "lr_max", SAM_INPUT: "sam_input",
                     SAM_REFERENCE: "sam_reference", UNCERTAINTY_SPEARMAN: "uncertainty_spearman"}

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802
        return "Evaluate super-resolution (PSNR, SSIM, LPIPS, LR-consistency)"

    GROUP, GROUP_ID = TRAINING_GROUP

    def shortHelpString(self):  # noqa: N802
        return (
            "Scores super-resolution against a high-resolution reference as in the paper: PSNR and SSIM over the "
            "selected bands with a border of <i>scale</i> pixels cropped, LPIPS (AlexNet) on the whole image; "
            "and says whether to trust it.<br><br>"
            "Either<br>"
            "• <b>SR raster</b> with its <b>Reference</b> (HR), its <b>LR input</b> (the raster it was "
            "super-resolved from), or both (set <b>Scale</b> to its factor; with an LR input the scale is read "
            "from the sizes), or<br>"
            "• <b>Model</b> with a <b>Reference</b>: the reference is degraded (antialiased bicubic, as in "
            "training), super-resolved with the model and scored; the scale is the model's. Empty SR raster and "
            "model = the default model. Bicubic upsampling of the same LR is scored too: the baseline the model "
            "has to beat.<br><br>"
            "<b>Whether to trust it</b>: <i>LR-consistency</i> (mean, RMS and largest |degrade(SR) − LR input|, "
            "in the input's units: grey levels for 8-bit) says whether the result keeps what the input said; the "
            "<i>spectral angle</i> (degrees) to the bicubic-enlarged input says how much it changed the colours, "
            "the one to the reference how far its colours are off. Without a reference, PSNR, SSIM and LPIPS "
            "cannot be measured: only LR-consistency and the angle to the input are. An <b>uncertainty "
            "raster</b> (Super-resolve raster's uncertainty output; with a model, set <b>Uncertainty samples</b> "
            "K to make one, at about K times the time) adds its map to the report and, with a "
            "reference, the Spearman correlation between per-16×16-block uncertainty and error (above 0.3: "
            "the map points at the errors). Nodata pixels count nowhere.<br>"
            "The <b>report</b> shows crops at the most detailed place side by side (bicubic | SR | reference), "
            "the error heat map and the uncertainty map, with their colour scales; the pictures are also "
            "written as PNG files beside it.<br>"
            "<b>LPIPS</b> (AlexNet) uses the float32 weights where they are found (the folder in "
            "LCMSR_METRIC_WEIGHTS, or build/metric-weights of a source checkout), else the float16 copy bundled "
            "with the plugin, which gives the same LPIPS within 2e-4.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference raster (high resolution)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.SR, "Super-resolved raster (or give a model)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.LR, "LR input the super-resolved raster was made from (for LR-consistency)", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.UNCERTAINTY, "Uncertainty raster of the super-resolved raster", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model (.safetensors) to degrade + super-resolve the reference",
            qgis_enums.FILE_BEHAVIOR_FILE, extension="safetensors", optional=True))
        self.add_scale_parameter(self.SCALE, "Scale factor of the SR raster (ignored with a model or an LR input)")
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Reference bands (empty: all)", None,
                                                     self.REFERENCE, optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.SAMPLES, "Uncertainty samples with a model (K; 0 = no uncertainty raster)",
            qgis_enums.NUMBER_INTEGER, defaultValue=0, minValue=0, maxValue=64, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(self.LPIPS, "Compute LPIPS", defaultValue=True))
        self.add_device_parameter(self.DEVICE)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Report",
                                                                "HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputNumber(self.PSNR, "PSNR (dB)"))
        self.addOutput(QgsProcessingOutputNumber(self.SSIM, "SSIM"))
        self.addOutput(QgsProcessingOutputNumber(self.LPIPS_VALUE, "LPIPS"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.SR_RASTER, "Super-resolved raster that was scored"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_PSNR, "Bicubic baseline PSNR (dB, with a model)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_SSIM, "Bicubic baseline SSIM (with a model)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_LPIPS, "Bicubic baseline LPIPS (with a model)"))
        for name, label in ((self.LR_MAE, "LR-consistency: mean |degrade(SR) − LR|"),
                            (self.LR_RMSE, "LR-consistency: RMS of degrade(SR) − LR"),
                            (self.LR_MAX, "LR-consistency: largest |degrade(SR) − LR|"),
                            (self.SAM_INPUT, "Spectral angle to the bicubic-enlarged input (degrees)"),
                            (self.SAM_REFERENCE, "Spectral angle to the reference (degrees)"),
                            (self.UNCERTAINTY_SPEARMAN, "Spearman correlation of block uncertainty and error"),
                            (self.BICUBIC_LR_MAE, "Bicubic baseline LR-consistency (mean, with a model)"),
                            (self.BICUBIC_SAM_REFERENCE, "Bicubic baseline spectral angle to the reference")):
            self.addOutput(QgsProcessingOutputNumber(name, label))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        feedback = feedback if feedback is not None else QgsProcessingFeedback()
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        hr = self.gdal_source(reference, self.REFERENCE) if reference is not None else None
        sr_layer = self.parameterAsRasterLayer(parameters, self.SR, context)
        lr_layer = self.parameterAsRasterLayer(parameters, self.LR, context)
        unc_layer = self.parameterAsRasterLayer(parameters, self.UNCERTAINTY, context)
        model_path = (self.parameterAsFile(parameters, self.MODEL, context) or "").strip()
        bands = self.bands_value(parameters, self.BANDS, context)
        want_lpips = self.parameterAsBoolean(parameters, self.LPIPS, context)
        html = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        request = device_request(self.parameterAsEnum(parameters, self.DEVICE, context))
        lr = self.gdal_source(lr_layer, self.LR) if lr_layer is not None else None
        unc = self.gdal_source(unc_layer, self.UNCERTAINTY) if unc_layer is not None else None
        # The backend's evaluation protocol (lcmsr.metrics.protocol, the one `lcmsr eval` runs) checks, before
        # any work, the report and its pictures against every input (the output-path rule), that the report
        # can be written, and the rasters' sizes, bands and georeferencing; it runs in the job.
        from lcmsr.metrics.protocol import CLI_EVAL_TERMS

        terms = dict(CLI_EVAL_TERMS, sr=self.SR, model=self.MODEL, hr=self.REFERENCE, lr=self.LR,
                     uncertainty=self.UNCERTAINTY, samples=self.SAMPLES, html=self.OUTPUT_HTML)
        inputs = [(self.REFERENCE, hr), (self.MODEL, model_path),
                  (self.SR, sr_layer.source() if sr_layer else None), (self.LR, lr), (self.UNCERTAINTY, unc)]
        job = dict(html=html, terms=terms, bands=bands, lpips=want_lpips, device=request, paths_must_exist=False)
        if sr_layer is not None:
            if model_path:
                feedback.pushWarning(f"{self.SR} is given: {self.MODEL} is not used")
            if hr is None and lr is None:
                raise QgsProcessingException(f"{self.SR} is scored against {self.REFERENCE} (the high-resolution "
                                             f"reference), {self.LR} (its low-resolution input), or both: give one")
            job.update(sr=self.gdal_source(sr_layer, self.SR), hr=hr, lr=lr, uncertainty=unc,
                       scale=None if lr else self.scale_value(parameters, self.SCALE, context))
            title = f"{sr_layer.name()} vs {reference.name() if reference else lr_layer.name() + ' (no reference)'}"
        else:
            from .superresolve import resolve_model_path

            if hr is None:
                raise QgsProcessingException(f"{self.REFERENCE}: a model is scored on the reference it degrades; "
                                             "give the high-resolution reference raster")
            if lr or unc:
                feedback.pushWarning(f"with a model, {self.LR} and {self.UNCERTAINTY} are not used (the LR is the "
                                     f"degraded reference; {self.SAMPLES} makes the uncertainty raster)")
            model_path = resolve_model_path(model_path)
            if not model_path:
                raise QgsProcessingException(f"{self.SR} or {self.MODEL}: give a super-resolved raster or a "
                                             "model (no default model is set in the plugin settings)")
            samples = self.parameterAsInt(parameters, self.SAMPLES, context)
            if samples == 1:
                raise QgsProcessingException(f"{self.SAMPLES}: a spread needs at least 2 samples (0 = none)")
            settings = Settings()
            job.update(model=model_path, hr=hr, samples=samples,
                       work_dir=os.path.dirname(QgsProcessingUtils.generateTempFilename("lcmsr_eval")),
                       options=dict(tile=settings.tile, overlap=settings.overlap, batch=settings.batch,
                                    device=request))
            title = f"{os.path.basename(model_path)} on {reference.name()} (x{{scale}})"
        metrics = self.run_job("evaluate", feedback, request=job, title=title,
                               inputs=[[what, path] for what, path in inputs])
        bicubic = metrics.get("bicubic") or {}
        numbers = dict({self.PSNR: metrics["psnr"], self.SSIM: metrics["ssim"], self.LPIPS_VALUE: metrics.get("lpips"),
                        self.BICUBIC_PSNR: bicubic.get("psnr"), self.BICUBIC_SSIM: bicubic.get("ssim"),
                        self.BICUBIC_LPIPS: bicubic.get("lpips"), self.BICUBIC_LR_MAE: bicubic.get("lr_mae"),
                        self.BICUBIC_SAM_REFERENCE: bicubic.get("sam_reference")},
                       **{out: metrics[key] for out, key in self.TRUST_OUTPUTS.items()})
        # Plain floats: a numpy scalar reaches Qt as an opaque object that qgis_process prints empty.
        return dict({name: None if value is None else float(value) for name, value in numbers.items()},
                    **{self.OUTPUT_HTML: html, self.SR_RASTER: metrics["sr"]})
