"""`lcmsr:evaluate` — PSNR, SSIM and LPIPS of a super-resolved raster against its HR reference.

Either the SR raster is given, or a model: then the reference is degraded with
the training degradation, super-resolved and scored (the paper's protocol).
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from ..settings import Settings
from .base import TRAINING_GROUP, LcmsrAlgorithm, device_request
from .superresolve import warn_fallback


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

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802
        return "Evaluate super-resolution (PSNR, SSIM, LPIPS)"

    GROUP, GROUP_ID = TRAINING_GROUP

    def shortHelpString(self):  # noqa: N802
        return (
            "Scores super-resolution against a high-resolution reference as in the paper: PSNR and SSIM over the "
            "selected bands with a border of <i>scale</i> pixels cropped, LPIPS (AlexNet) on the whole image.<br><br>"
            "<b>Reference</b>: the HR raster. Then either<br>"
            "• <b>SR raster</b>: a super-resolved raster of the same size (set <b>Scale</b> to its factor), or<br>"
            "• <b>Model</b>: the reference is degraded (antialiased bicubic, as in training), super-resolved with "
            "the model and scored; the scale is the model's. Empty SR raster and model = the default model.<br>"
            "<b>LPIPS</b> needs its weights (`make setup`); without them it is skipped with a warning.<br>"
            "Outputs the three numbers and an HTML report.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference raster (high resolution)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.SR, "Super-resolved raster (or give a model)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model (.safetensors) to degrade + super-resolve the reference",
            QgsProcessingParameterFile.Behavior.File, extension="safetensors", optional=True))
        self.add_scale_parameter(self.SCALE, "Scale factor of the SR raster (ignored with a model)")
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Reference bands (empty: all)", None,
                                                     self.REFERENCE, optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterBoolean(self.LPIPS, "Compute LPIPS", defaultValue=True))
        self.add_device_parameter(self.DEVICE)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Report",
                                                                "HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputNumber(self.PSNR, "PSNR (dB)"))
        self.addOutput(QgsProcessingOutputNumber(self.SSIM, "SSIM"))
        self.addOutput(QgsProcessingOutputNumber(self.LPIPS_VALUE, "LPIPS"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.SR_RASTER, "Super-resolved raster that was scored"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        hr = self.gdal_source(reference, self.REFERENCE)
        sr_layer = self.parameterAsRasterLayer(parameters, self.SR, context)
        model_path = (self.parameterAsFile(parameters, self.MODEL, context) or "").strip()
        bands = self.parameterAsInts(parameters, self.BANDS, context) or None
        want_lpips = self.parameterAsBoolean(parameters, self.LPIPS, context)
        html = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        request = device_request(self.parameterAsEnum(parameters, self.DEVICE, context))
        progress = self.progress(feedback)
        with self.backend_errors():
            # The backend's evaluation, the one `lcmsr eval` runs: only the inputs are QGIS's.
            from lcmsr.device import resolve_device
            from lcmsr.metrics.evaluate import evaluate_model, evaluate_pair, write_html_report

            device = resolve_device(request)
            if sr_layer is not None:
                if model_path:
                    progress.warn(f"{self.SR} is given: {self.MODEL} is not used")
                sr = self.gdal_source(sr_layer, self.SR)
                scale = self.scale_value(parameters, self.SCALE, context)
                metrics = evaluate_pair(sr, hr, scale, bands, lpips=want_lpips, device=device.device,
                                        progress=progress)
                title = f"{sr_layer.name()} vs {reference.name()}"
            else:
                from lcmsr.raster.pipeline import SROptions

                from ..model_cache import model_cache
                from .superresolve import resolve_model_path

                model_path = resolve_model_path(model_path)
                if not model_path:
                    raise QgsProcessingException(f"{self.SR} or {self.MODEL}: give a super-resolved raster or a "
                                                 "model (no default model is set in the plugin settings)")
                warn_fallback(progress, device)
                model = model_cache().get(model_path, str(device.device))
                settings = Settings()
                options = SROptions(tile=settings.tile, overlap=settings.overlap, batch=settings.batch,
                                    device=request)
                work_dir = os.path.dirname(QgsProcessingUtils.generateTempFilename("lcmsr_eval"))
                metrics = evaluate_model(model, hr, work_dir, bands, options=options, lpips=want_lpips,
                                         device=device.device, progress=progress)
                sr, scale = metrics["sr"], metrics["scale"]
                title = f"{os.path.basename(model_path)} on {reference.name()} (x{scale})"
            row = {k: metrics.get(k) for k in ("psnr", "ssim", "lpips")}
            row.update(scale=scale, bands=", ".join(map(str, bands or metrics.get("bands") or [])))
            write_html_report(html, {os.path.basename(sr): row}, f"LCMSR evaluation: {title}")
        lpips_text = "skipped" if metrics.get("lpips") is None else f"{metrics['lpips']:.4f}"
        progress.info(f"PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}, LPIPS {lpips_text}")
        return {self.PSNR: metrics["psnr"], self.SSIM: metrics["ssim"], self.LPIPS_VALUE: metrics.get("lpips"),
                self.OUTPUT_HTML: html, self.SR_RASTER: sr}
