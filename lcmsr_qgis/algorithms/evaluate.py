"""`lcmsr:evaluate` — PSNR, SSIM and LPIPS of a super-resolved raster against its HR reference.

Either the SR raster is given, or a model: then the reference is degraded with
the training degradation, super-resolved and scored (the paper's protocol), next
to bicubic upsampling of the same LR.
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
    BICUBIC_PSNR = "BICUBIC_PSNR"
    BICUBIC_SSIM = "BICUBIC_SSIM"
    BICUBIC_LPIPS = "BICUBIC_LPIPS"

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
            "the model and scored; the scale is the model's. Empty SR raster and model = the default model. "
            "Bicubic upsampling of the same LR is scored too: the baseline the model has to beat.<br>"
            "<b>LPIPS</b> (AlexNet) uses the float32 weights where they are found (the folder in "
            "LCMSR_METRIC_WEIGHTS, or build/metric-weights of a source checkout), else the float16 copy bundled "
            "with the plugin, which gives the same LPIPS within 2e-4.<br>"
            "Outputs the three numbers (and the bicubic baseline's, with a model) and an HTML report.")

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
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_PSNR, "Bicubic baseline PSNR (dB, with a model)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_SSIM, "Bicubic baseline SSIM (with a model)"))
        self.addOutput(QgsProcessingOutputNumber(self.BICUBIC_LPIPS, "Bicubic baseline LPIPS (with a model)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        hr = self.gdal_source(reference, self.REFERENCE)
        sr_layer = self.parameterAsRasterLayer(parameters, self.SR, context)
        model_path = (self.parameterAsFile(parameters, self.MODEL, context) or "").strip()
        bands = self.bands_value(parameters, self.BANDS, context)
        want_lpips = self.parameterAsBoolean(parameters, self.LPIPS, context)
        html = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        request = device_request(self.parameterAsEnum(parameters, self.DEVICE, context))
        progress = self.progress(feedback)
        with self.backend_errors():
            # The backend's evaluation, the one `lcmsr eval` runs: only the inputs are QGIS's.
            from lcmsr.device import resolve_device
            from lcmsr.metrics.evaluate import evaluate_model, evaluate_pair, write_html_report
            from lcmsr.paths import check_outputs

            # The backend's output-path rule: the report may not replace a raster or the model it scores.
            check_outputs([(self.OUTPUT_HTML, html)], [(self.REFERENCE, hr), (self.MODEL, model_path),
                                                        (self.SR, sr_layer.source() if sr_layer else None)])
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
            extra = dict(scale=scale, bands=", ".join(map(str, bands or metrics.get("bands") or [])))
            rows = {os.path.basename(sr): dict({k: metrics.get(k) for k in ("psnr", "ssim", "lpips")}, **extra)}
            bicubic = metrics.get("bicubic") or {}
            if bicubic:
                rows["bicubic"] = dict(bicubic, **extra)
            write_html_report(html, rows, f"LCMSR evaluation: {title}")
        lpips_text = "skipped" if metrics.get("lpips") is None else f"{metrics['lpips']:.4f}"
        progress.info(f"PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}, LPIPS {lpips_text}")
        if bicubic:
            progress.info(f"bicubic baseline: PSNR {bicubic['psnr']:.3f} dB, SSIM {bicubic['ssim']:.4f}")
        return {self.PSNR: metrics["psnr"], self.SSIM: metrics["ssim"], self.LPIPS_VALUE: metrics.get("lpips"),
                self.OUTPUT_HTML: html, self.SR_RASTER: sr, self.BICUBIC_PSNR: bicubic.get("psnr"),
                self.BICUBIC_SSIM: bicubic.get("ssim"), self.BICUBIC_LPIPS: bicubic.get("lpips")}
