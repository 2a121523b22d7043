"""`lcmsr:superresolve` — one raster through the LCMSR model, georeferenced output."""
from __future__ import annotations

import os

from qgis.core import (
    QgsColorRampShader,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

from lcmsr.choices import OUTPUT_TYPE_LABELS, OUTPUT_TYPES, PRECISION_LABELS, PRECISIONS, SR_DEFAULTS, Terms

from .. import qgis_enums
from ..settings import Settings
from .base import DEVICE_LABELS, DEVICE_VALUES, LcmsrAlgorithm, device_request


MODEL_DEFAULT_SAMPLER = "Model's default (the sampler that measures best on the model's validation split)"


def samplers() -> tuple[list, list]:
    """(names, labels) of the samplers, from the backend's one definition (lcmsr.choices, torch-free), and last
    the model's own default (name None: the backend reads it from the model file).  Indices are the enum values
    users pass: 0 consistency, 1 faithful, 2 ddim as before; 3 ddpm; 4 the model's default (the default)."""
    from lcmsr.choices import SAMPLER_LABELS, SAMPLER_NAMES

    return list(SAMPLER_NAMES) + [None], [SAMPLER_LABELS[name] for name in SAMPLER_NAMES] + [MODEL_DEFAULT_SAMPLER]


def resolve_model_path(value: str) -> str:
    """The MODEL parameter, else the default model of the settings; '' means: choose by the input's domain."""
    path = (value or "").strip() or Settings().model_for_run()
    if path and not os.path.isfile(path):
        raise QgsProcessingException(f"MODEL: model file '{path}' does not exist")
    return path


def base_device_label(name: str) -> str:
    return DEVICE_LABELS[DEVICE_VALUES.index(name)]


# Parameter labels, said once: the dialog shows them and the backend's error messages name them (QGIS_TERMS).
LABELS = {"bands": "Bands (empty: all but alpha)",
          "band_roles": "Band roles in band order, e.g. red,green,blue,nir (empty: read from the file)",
          "ignore_domain": "Run even if the input is outside the model's domain",
          "tile": "Tile size (LR pixels; 0: fits the memory budget)", "overlap": "Tile overlap (LR pixels)",
          "batch": "Tiles per batch (0: fits the memory budget)",
          "memory_budget": "Memory budget, GB (CPU: what the run may add to the process)",
          "device": "Device"}
# How the backend's messages name what to change, in this dialog's words instead of the CLI's flags.
QGIS_TERMS = Terms({**{k: f"'{v}'" for k, v in LABELS.items()}, "bands": "'Bands'",
                    "cpu": f"'{base_device_label('cpu')}'"}, setting="{name} = {value}")


def creation_options(text: str) -> list[str]:
    """'COMPRESS=ZSTD|PREDICTOR=2' (the form of QGIS's creation-options widget; ';' also separates)."""
    return [o.strip() for o in (text or "").replace(";", "|").split("|") if o.strip()]


def output_layer_name(input_name: str, scale: int) -> str:
    return f"{input_name} x{scale} LCMSR"


def uncertainty_layer_name(input_name: str, scale: int) -> str:
    return f"{input_name} x{scale} LCMSR uncertainty"


UNCERTAINTY_RAMP = "Magma"   # dark = the samples agree, bright = detail the model invents differently each draw


class UncertaintyStyle(QgsProcessingLayerPostProcessorInterface):
    """Shows the loaded uncertainty raster as a single-band pseudocolour ramp from 0 (the samples agree) to its
    98th percentile, so the few largest spreads do not wash out the rest."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        provider = layer.dataProvider() if layer is not None else None
        if provider is None or not layer.isValid():
            return
        _, high = provider.cumulativeCut(1, 0.0, 0.98)
        high = high if high > 0 else 1.0
        ramp = QgsStyle.defaultStyle().colorRamp(UNCERTAINTY_RAMP)
        shader = QgsColorRampShader(0.0, float(high), ramp)   # interpolated, continuous
        shader.classifyColorRamp()
        raster_shader = QgsRasterShader(0.0, float(high))
        raster_shader.setRasterShaderFunction(shader)
        renderer = QgsSingleBandPseudoColorRenderer(provider, 1, raster_shader)
        renderer.setClassificationMin(0.0)
        renderer.setClassificationMax(float(high))
        layer.setRenderer(renderer)
        layer.triggerRepaint()


# One stateless styler for every run: Processing keeps only a C++ pointer to a post-processor, so the Python
# object must outlive the algorithm instance that hands it over.
UNCERTAINTY_STYLE = UncertaintyStyle()


class RunParameters:
    """The names of the parameters :func:`add_run_parameters` adds and :func:`run_options` reads, for every
    algorithm that super-resolves (one list, so the two cannot drift apart)."""
    TILE = "TILE"
    OVERLAP = "OVERLAP"
    BATCH = "BATCH"
    MEMORY_BUDGET = "MEMORY_BUDGET"
    STEPS = "STEPS"
    SAMPLER = "SAMPLER"
    SEED = "SEED"
    PRECISION = "PRECISION"
    LR_CONSISTENCY = "LR_CONSISTENCY"
    OUTPUT_TYPE = "OUTPUT_TYPE"
    IGNORE_DOMAIN = "IGNORE_DOMAIN"
    BAND_ROLES = "BAND_ROLES"
    CREATION_OPTIONS = "CREATION_OPTIONS"
    COG = "COG"
    OVERVIEWS = "OVERVIEWS"
    SAMPLES = "SAMPLES"


def add_run_parameters(alg, settings, samples: bool = False) -> None:
    """The options of a super-resolution run (tile ... overviews), shared by `superresolve` and `superresolve_many`;
    ``alg`` has the parameter names as class constants.  ``samples``: the uncertainty samples K too."""
    advanced = [
        QgsProcessingParameterNumber(alg.TILE, LABELS["tile"], qgis_enums.NUMBER_INTEGER,
                                     defaultValue=settings.tile, minValue=0, maxValue=8192),
        QgsProcessingParameterNumber(alg.OVERLAP, LABELS["overlap"],
                                     qgis_enums.NUMBER_INTEGER, defaultValue=settings.overlap,
                                     minValue=0, maxValue=4096),
        QgsProcessingParameterNumber(alg.BATCH, LABELS["batch"], qgis_enums.NUMBER_INTEGER,
                                     defaultValue=settings.batch, minValue=0, maxValue=1024),
        QgsProcessingParameterNumber(alg.MEMORY_BUDGET, LABELS["memory_budget"],
                                     qgis_enums.NUMBER_DOUBLE,
                                     defaultValue=settings.memory_budget, minValue=0.1, maxValue=1024.0),
        QgsProcessingParameterNumber(alg.STEPS, "Sampling steps (of a chosen sampler)", qgis_enums.NUMBER_INTEGER,
                                     defaultValue=SR_DEFAULTS["steps"], minValue=1, maxValue=1000),
        QgsProcessingParameterEnum(alg.SAMPLER, "Sampler", options=samplers()[1],
                                   defaultValue=len(samplers()[0]) - 1),
        QgsProcessingParameterNumber(alg.SEED, "Random seed", qgis_enums.NUMBER_INTEGER,
                                     defaultValue=SR_DEFAULTS["seed"], minValue=0),
        QgsProcessingParameterEnum(alg.PRECISION, "Precision", options=[PRECISION_LABELS[p] for p in PRECISIONS],
                                   defaultValue=_index(PRECISIONS, settings.precision,
                                                       PRECISIONS.index(SR_DEFAULTS["precision"]))),
        QgsProcessingParameterNumber(alg.LR_CONSISTENCY, "LR-consistency iterations (0 = off)",
                                     qgis_enums.NUMBER_INTEGER,
                                     defaultValue=SR_DEFAULTS["lr_consistency"], minValue=0, maxValue=50),
    ]
    if samples:
        advanced.insert(-1, QgsProcessingParameterNumber(alg.SAMPLES, "Uncertainty samples (K)",
                                                         qgis_enums.NUMBER_INTEGER,
                                                         defaultValue=SR_DEFAULTS["samples"], minValue=2,
                                                         maxValue=64))
    for parameter in advanced:
        parameter.setFlags(parameter.flags() | qgis_enums.PARAMETER_ADVANCED)
        alg.addParameter(parameter)
    alg.addParameter(QgsProcessingParameterEnum(
        alg.OUTPUT_TYPE, "Output data type", options=[OUTPUT_TYPE_LABELS[t] for t in OUTPUT_TYPES],
        defaultValue=_index(OUTPUT_TYPES, SR_DEFAULTS["output_type"])))
    alg.addParameter(QgsProcessingParameterBoolean(alg.IGNORE_DOMAIN, LABELS["ignore_domain"], defaultValue=False))
    alg.addParameter(QgsProcessingParameterString(alg.BAND_ROLES, LABELS["band_roles"], defaultValue="",
                                                  optional=True))
    options = QgsProcessingParameterString(alg.CREATION_OPTIONS, "Creation options (NAME=VALUE|...)",
                                           defaultValue="", optional=True)
    options.setMetadata({"widget_wrapper": {"widget_type": "rasteroptions"}})  # QGIS's own options editor
    for parameter in (options,
                      QgsProcessingParameterBoolean(alg.COG, "Cloud Optimized GeoTIFF (.tif, with overviews)",
                                                    defaultValue=SR_DEFAULTS["cog"]),
                      QgsProcessingParameterBoolean(alg.OVERVIEWS, "Build overviews",
                                                    defaultValue=SR_DEFAULTS["overviews"])):
        parameter.setFlags(parameter.flags() | qgis_enums.PARAMETER_ADVANCED)
        alg.addParameter(parameter)


def run_options(alg, parameters, context, **extra) -> dict:
    """The SROptions fields (lcmsr.raster.pipeline.SROptions, as the job carries them) from the parameters
    :func:`add_run_parameters` added (``extra``: bands, device, uncertainty...)."""
    from lcmsr.jobs import options_to_dict

    sampler = samplers()[0][alg.parameterAsEnum(parameters, alg.SAMPLER, context)]
    return dict(
        tile=alg.parameterAsInt(parameters, alg.TILE, context),
        overlap=alg.parameterAsInt(parameters, alg.OVERLAP, context),
        batch=alg.parameterAsInt(parameters, alg.BATCH, context),
        memory_budget=alg.parameterAsDouble(parameters, alg.MEMORY_BUDGET, context),
        precision=PRECISIONS[alg.parameterAsEnum(parameters, alg.PRECISION, context)],
        # The model's default sampler comes with its own steps; a chosen sampler takes the STEPS parameter.
        steps=alg.parameterAsInt(parameters, alg.STEPS, context) if sampler is not None else None,
        sampler=sampler,
        seed=alg.parameterAsInt(parameters, alg.SEED, context),
        output_type=OUTPUT_TYPES[alg.parameterAsEnum(parameters, alg.OUTPUT_TYPE, context)],
        ignore_domain=alg.parameterAsBoolean(parameters, alg.IGNORE_DOMAIN, context),
        band_roles=alg.parameterAsString(parameters, alg.BAND_ROLES, context) or None,
        cog=alg.parameterAsBoolean(parameters, alg.COG, context),
        overviews=alg.parameterAsBoolean(parameters, alg.OVERVIEWS, context),
        creation_options=creation_options(alg.parameterAsString(parameters, alg.CREATION_OPTIONS, context)),
        lr_consistency=alg.parameterAsInt(parameters, alg.LR_CONSISTENCY, context),
        models=Settings().models,
        terms=options_to_dict(QGIS_TERMS),
        **extra,
    )


class SuperResolveAlgorithm(RunParameters, LcmsrAlgorithm):
    INPUT = "INPUT"
    BANDS = "BANDS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    UNCERTAINTY = "UNCERTAINTY"

    def name(self):
        return "superresolve"

    def displayName(self):  # noqa: N802
        return "Super-resolve raster"

    def shortHelpString(self):  # noqa: N802
        return (
            "Sharpens a raster by the model's scale factor (x2, x3, x4 or x8) with LCMSR, a latent consistency "
            "diffusion model that needs one network evaluation per tile.<br><br>"
            "<b>Input raster</b>: any GDAL raster with the band count the model was trained for (choose them with "
            "<b>Bands</b>; empty = all bands but alpha). 8-bit, 16-bit and float data are read in their own value "
            "range; nodata and masked pixels stay nodata.<br>"
            "<b>Model</b>: an LCMSR .safetensors file; empty = the default model of the plugin settings if one is "
            "set, else the bundled or registered model whose domain fits the input (bands by role, data type, "
            "pixel size); the log says which and why.<br>"
            "<b>Band roles</b>: what each band is, in band order (red,green,blue,nir; '?' for unknown), when the "
            "file does not say or says it wrongly. A model that takes bands in a fixed order (the joint R,G,B,NIR "
            "satellite model) is chosen only when the roles are read from the file or stated here; roles guessed "
            "from a sensor's usual stack order go to the band-wise model.<br>"
            "<b>Domain guard</b>: a model knows the imagery it was made for. An input whose pixel size is more than "
            "2x outside the model's range, or whose data type it does not take, stops with one line naming both "
            "sides; tick <b>Run even if the input is outside the model's domain</b> to run anyway (it still "
            "warns).<br>"
            "<b>Device</b>: Auto uses the first CUDA GPU and falls back to the CPU with a warning.<br>"
            "<b>Tile / overlap / batch</b>: LR pixels per tile, LR pixels shared by neighbouring tiles (blended, so "
            "no seams), tiles per network call. Smaller values use less memory.<br>"
            "<b>Steps / sampler</b>: by default the model's own choice, the sampler that measured best on its "
            "validation split (the model card shows them all; the log says which). "
            "1 consistency step is the method's single-step sampling; 2–4 trade time for "
            "detail. 'Faithful' decodes the conditioning network's regression latent without noise: it never "
            "invents detail (smoother, higher PSNR); 'DDIM'/'DDPM' are the multi-step baselines the single step is "
            "measured against.<br>"
            "<b>Seed</b>: the same seed gives the same output.<br>"
            "<b>Uncertainty</b> (optional output): where the model invents detail. One Float32 band on the output's "
            "grid: per pixel, the standard deviation of <b>Uncertainty samples</b> (K) results drawn with different "
            "noise, root-mean-square over the bands, in the output's units; nodata where the input is. The "
            "super-resolved raster stays the first sample, identical to a run without it; the run costs about K "
            "times as long. Not with the faithful sampler, which draws no noise.<br>"
            "<b>LR-consistency iterations</b> (advanced): back-projection steps that correct the result so that "
            "reducing it again with the project's antialiased bicubic gives back the input (0 = off).<br>"
            "<b>Output</b>: georeferenced (CRS copied, pixel size divided by the scale), in the input's data type "
            "or Float32, in the format its extension names (.tif GeoTIFF, .img Erdas Imagine, .gpkg GeoPackage, "
            ".png, .jpg for 8-bit data, or another GDAL format that writes nothing but the output and its "
            ".aux.xml/.ovr/.msk side-cars: formats that write files named after it, such as .ers, .bil or .rst, "
            "are refused before any work). An existing GeoPackage is replaced only when it holds nothing but one "
            "raster table (a former output); one with other layers is refused: write to a new .gpkg file. Nodata "
            "is kept per band; where the format keeps one nodata value per file (GeoTIFF, GeoPackage) and the "
            "bands' differ, a Float32 output has NaN as nodata in every band and an integer one is refused. "
            "It keeps the input's band descriptions and colour interpretation, not its band statistics, and its "
            "metadata records the model file and its SHA-256, scale, sampler, steps, seed and LCMSR version "
            "(LCMSR_* keys).<br>"
            "<b>Creation options</b> (advanced): the GDAL driver's options, e.g. COMPRESS=ZSTD; they replace the "
            "default of the same name (GeoTIFF: tiled 256, DEFLATE with predictor). <b>Cloud Optimized GeoTIFF</b> "
            "needs a .tif output and has overviews; <b>Build overviews</b> adds them to other outputs.")

    def initAlgorithm(self, config=None):  # noqa: N802
        settings = Settings()
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, LABELS["bands"], None, self.INPUT,
                                                     optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model (.safetensors; empty: chosen by the input's domain)", qgis_enums.FILE_BEHAVIOR_FILE,
            extension="safetensors", optional=True))
        self.add_device_parameter(self.DEVICE)
        add_run_parameters(self, settings, samples=True)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Super-resolved raster"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.UNCERTAINTY, "Uncertainty (spread of K samples)", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        src = self.gdal_source(layer, self.INPUT)
        bands = self.bands_value(parameters, self.BANDS, context)
        model_path = resolve_model_path(self.parameterAsFile(parameters, self.MODEL, context))
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        uncertainty = self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context) or None
        options = run_options(self, parameters, context, bands=bands, uncertainty=uncertainty,
                              device=device_request(self.parameterAsEnum(parameters, self.DEVICE, context)),
                              samples=self.parameterAsInt(parameters, self.SAMPLES, context))
        result = self.run_job("superresolve", feedback, src=src, dst=dst, model=model_path, sr=options)
        scale = result["scale"]
        if context.willLoadLayerOnCompletion(dst):
            details = context.layerToLoadOnCompletionDetails(dst)
            details.name = output_layer_name(layer.name(), scale)
            # Processing names file outputs after the file by default; the input's name says more.
            details.forceName = True
        if uncertainty and context.willLoadLayerOnCompletion(uncertainty):
            details = context.layerToLoadOnCompletionDetails(uncertainty)
            details.name = uncertainty_layer_name(layer.name(), scale)
            details.forceName = True
            details.setPostProcessor(UNCERTAINTY_STYLE)
        return {self.OUTPUT: dst, self.UNCERTAINTY: uncertainty}


def _index(values, value, default: int = 0) -> int:
    return values.index(value) if value in values else default
