"""Evaluation as one protocol (docs/DESIGN-REVIEW.md §6.5, first step): what `lcmsr eval` and the plugin's
evaluate algorithm ask for is an :class:`EvalRequest`; :meth:`EvalRequest.check` makes every check that can
be made before the computation — the mode rules, the output-path rule over the declared outputs (the JSON,
the report and every picture it may write, the work folder) against every input, that the report files can
be written, and every pair's sizes, bands and georeferencing (:func:`~lcmsr.metrics.evaluate.check_pair`);
:func:`evaluate` scores; :func:`write_reports` writes the JSON and the HTML report.  The faces only translate
their parameters into a request and print or return the result, so these rules live here once.

Messages name the inputs in the caller's words (``EvalRequest.terms``: the CLI's flags by default).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import atomic
from ..paths import check_file_output, check_outputs

CLI_EVAL_TERMS = {"sr": "--sr", "model": "--model", "hr": "--hr", "lr": "--lr", "uncertainty": "--uncertainty",
                  "samples": "--samples", "json": "--json", "html": "--html", "work_dir": "--work-dir",
                  "fid": "--fid"}


@dataclass
class EvalRequest:
    """One evaluation: an SR raster or folder (``sr``) or a model file (``model``), scored against ``hr``
    and/or its ``lr`` input (see ``lcmsr eval --help``)."""
    sr: str | None = None
    model: str | None = None
    hr: str | None = None
    lr: str | None = None
    uncertainty: str | None = None
    samples: int = 0
    scale: int | None = None
    bands: list[int] | None = None
    lr_bands: list[int] | None = None
    data_range: float | None = None
    lpips: bool = True
    fid: bool = False
    device: str = "auto"
    json: str | None = None
    html: str | None = None
    work_dir: str | None = None
    options: object = None                  # the SROptions of --model's SR (default: SROptions(device=device))
    terms: dict = field(default_factory=lambda: dict(CLI_EVAL_TERMS))
    # The plugin's inputs are loaded layers (GDAL names such as GPKG:file:table): not file-system paths.
    paths_must_exist: bool = True

    # ---------------------------------------------------------------- what it reads and writes
    def _paths(self) -> dict:
        return {k: Path(v) if v else None for k, v in (("sr", self.sr), ("hr", self.hr), ("lr", self.lr),
                                                      ("uncertainty", self.uncertainty))}

    def inputs(self) -> list[tuple[str, str]]:
        """Every input, a folder's images included, as ``(what, path)`` for the output-path rule."""
        from .fid import list_images

        t = self.terms
        inputs = [(f"the model file ({t['model']})", self.model)]
        for key, given in self._paths().items():
            is_dir = given is not None and given.is_dir()
            inputs.append((f"the {t[key]} {'folder' if is_dir else 'raster'}", given and os.fspath(given)))
            if is_dir:
                inputs += [(f"an image of the {t[key]} folder", os.fspath(p)) for p in list_images(given)]
        return inputs

    def sections(self) -> list[str]:
        """The report's sections: "" for one pair, one per image name for folders (a superset: every name)."""
        from .fid import list_images

        names = [""]
        for given in self._paths().values():
            if given is not None and given.is_dir():
                names += [p.stem for p in list_images(given)]
        return names

    def outputs(self) -> list[tuple[str, str]]:
        """Every file or folder the evaluation writes: the JSON, the work folder, the report and each picture
        it may write beside it (:func:`~lcmsr.metrics.evaluate.report_outputs`)."""
        from .evaluate import report_outputs

        t = self.terms
        return ([(t["json"], self.json), (t["work_dir"], self.work_dir)]
                + report_outputs(self.html, self.sections(), t["html"]))

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """The mode rules: which inputs go together; ValueError / FileNotFoundError in one line."""
        t, p = self.terms, self._paths()
        for key in ("sr", "hr", "lr", "uncertainty", "model"):
            given = p[key] if key != "model" else (Path(self.model) if self.model else None)
            if self.paths_must_exist and given is not None and not given.exists():
                raise FileNotFoundError(f"{t[key]} {given} does not exist")
        if bool(self.sr) == bool(self.model):
            raise ValueError(f"give {t['sr']} (a result to score) or {t['model']} (a model to run), not "
                             f"{'both' if self.sr else 'neither'}")
        if self.model and (not self.hr or self.lr or self.uncertainty):
            raise ValueError(f"{t['model']} needs {t['hr']} (the reference it degrades) and takes no {t['lr']} or "
                             f"{t['uncertainty']} ({t['samples']} K makes the uncertainty raster)")
        if self.samples and not self.model:
            raise ValueError(f"{t['samples']} is for {t['model']} (the SR it runs); with {t['sr']} give its "
                             f"{t['uncertainty']} raster")
        if self.samples and self.samples < 2:
            raise ValueError(f"{t['samples']} must be at least 2 (a spread needs two draws), got {self.samples}")
        if self.sr and not self.hr and not self.lr:
            raise ValueError(f"{t['sr']} needs {t['hr']} (the reference), {t['lr']} (the input it was made from), "
                             f"or both")
        base = p["hr"] if p["hr"] is not None else p["lr"]
        for key in ("sr", "lr", "uncertainty"):
            if p[key] is not None and base is not None and p[key].is_dir() != base.is_dir():
                raise ValueError(f"{t[key]} and {t['hr'] if p['hr'] is not None else t['lr']} must both be rasters "
                                 "or both be folders")
        if self.fid and (p["sr"] is None or not p["sr"].is_dir() or p["hr"] is None):
            raise ValueError(f"{t['fid']} compares two sets of images: give folders for {t['sr']} and {t['hr']}")

    def pairs(self) -> list[tuple[str, Path, dict]]:
        """(name, SR image, {"--hr"/"--lr"/"--uncertainty" key: image}) of an ``sr`` request."""
        p = self._paths()
        others = {k: p[k] for k in ("hr", "lr", "uncertainty") if p[k] is not None}
        if p["sr"].is_dir():
            return _pairs(p["sr"], others, self.terms)
        return [(p["sr"].name, p["sr"], others)]

    def check(self) -> list[tuple[str, Path, dict]]:
        """Every check that can be made before the computation (module doc); -> the pairs of an ``sr``
        request ([] for a model)."""
        self.validate()
        check_outputs(self.outputs(), self.inputs())
        for what, path in ((self.terms["json"], self.json), (self.terms["html"], self.html)):
            check_file_output(path, what)
        if not self.sr:
            return []
        from .evaluate import check_pair

        todo = self.pairs()
        for _, s, found in todo:
            check_pair(s, found.get("hr"), self.scale if self.scale or "lr" in found else 4, self.bands,
                       lr=found.get("lr"), lr_bands=self.lr_bands, uncertainty=found.get("uncertainty"))
        return todo


def _pairs(sr_dir: Path, others: dict, terms: dict) -> list[tuple[str, Path, dict]]:
    """(name, SR image, {key: image}) for each SR image with a namesake in the first of ``others`` (hr, else
    lr); every other folder given must hold that name too."""
    from .fid import list_images

    sr = {p.stem: p for p in list_images(sr_dir)}
    found = {key: {p.stem: p for p in list_images(d)} for key, d in others.items()}
    first, ref = next(iter(others.items()))
    common = sorted(sr.keys() & found[first].keys())
    if not common:
        raise ValueError(f"no image in {sr_dir} has a namesake in {ref}")
    missing = sorted(found[first].keys() - sr.keys())
    if missing:
        raise ValueError(f"{len(missing)} {first.upper()} image(s) have no SR result in {sr_dir}, e.g. {missing[0]}")
    for key, images in found.items():
        lacking = [k for k in common if k not in images]
        if lacking:
            raise ValueError(f"the {terms[key]} folder {others[key]} has no image named {lacking[0]} (as in {sr_dir})")
    return [(k, sr[k], {key: images[k] for key, images in found.items()}) for k in common]


@dataclass
class EvalResult:
    rows: dict                      # name -> metrics (plus "mean" for folders)
    baseline: dict                  # name -> the bicubic row's metrics (a model's evaluation)
    scale: int | None
    pictures: dict                  # name -> the report's pictures of that image (None without pictures)
    notes: list[str]
    unit: str | None
    details: dict                   # name -> the whole dict evaluate_pair / evaluate_model gave
    folders: bool                   # the inputs were folders


def evaluate(request: EvalRequest, progress=None, pictures: bool | None = None, checked=None,
             model=None) -> EvalResult:
    """Run ``request`` (checked first unless ``checked`` holds :meth:`EvalRequest.check`'s pairs).
    ``pictures``: make the report's pictures (default: when an HTML report is asked for); ``model``: the
    loaded model of ``request.model`` (the plugin's cache), else it is loaded here."""
    from ..runtime import resolve_device
    from .evaluate import METRIC_KEYS, TRUST_KEYS, evaluate_model, evaluate_pair
    from .fid import list_images

    todo = request.check() if checked is None else checked
    pictures = bool(request.html) if pictures is None else pictures
    device = resolve_device(request.device).device
    keys = METRIC_KEYS + TRUST_KEYS
    rows, baseline, pics, notes, details = {}, {}, {}, [], {}
    scale, unit = request.scale, None
    hr = Path(request.hr) if request.hr else None
    base = hr if hr is not None else Path(request.lr)
    if request.model:
        from ..raster.pipeline import SROptions
        from ..weights import load_model

        model = model if model is not None else load_model(request.model, device=str(device))
        options = request.options or SROptions(device=request.device)
        # Named like lcmsr.atomic's temporary files: a killed run's folder is swept by the next command.
        scratch = None
        if not request.work_dir:
            atomic.sweep_stale(tempfile.gettempdir())   # what killed runs left there
            scratch = atomic.temp_folder(tempfile.gettempdir(), "lcmsr-eval")
        try:
            for h in list_images(hr) if hr.is_dir() else [hr]:
                r = evaluate_model(model, h, Path(request.work_dir or scratch) / h.stem, request.bands,
                                   options=options, lpips=request.lpips, pictures=pictures, device=device,
                                   samples=request.samples, progress=progress)
                name = h.stem if hr.is_dir() else h.name
                rows[name], baseline[name], scale = {k: r[k] for k in keys}, r["bicubic"], r["scale"]
                pics[name], unit, details[name] = r.get("pictures"), r["unit"], r
                notes += r["notes"]
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
    else:
        for name, s, found in todo:
            r = evaluate_pair(s, found.get("hr"), scale if scale or "lr" in found else 4, request.bands,
                              lr=found.get("lr"), lr_bands=request.lr_bands, uncertainty=found.get("uncertainty"),
                              pictures=pictures, data_range=request.data_range, lpips=request.lpips, device=device,
                              progress=progress)
            rows[name], pics[name], unit, details[name] = {k: r[k] for k in keys}, r.get("pictures"), r["unit"], r
            notes += r["notes"]
            scale = scale or r["scale"]
    if base.is_dir():
        for table in (rows, baseline) if baseline else (rows,):
            n = len(table)
            table["mean"] = {k: (sum(r[k] for r in table.values()) / n
                                 if all(r[k] is not None for r in table.values()) else None) for k in keys}
        if request.fid:
            from .fid import fid

            rows["mean"]["fid"] = fid(Path(request.sr), hr, data_range=request.data_range or 255.0, device=device)
    return EvalResult(rows, baseline, scale, pics, list(dict.fromkeys(notes)), unit, details, base.is_dir())


def _finite(obj):
    # Strict JSON has no Infinity: the PSNR of identical images is written as null.
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def shown_rows(result: EvalResult) -> dict:
    """One table: the model's rows, then the bicubic baseline's."""
    return dict(result.rows, **{f"bicubic: {name}": r for name, r in result.baseline.items()})


def write_reports(request: EvalRequest, result: EvalResult, title: str | None = None) -> None:
    """The JSON (``request.json``) and the HTML report (``request.html``), each written atomically; the
    report's pictures are checked against every input again before anything is written."""
    from .evaluate import write_html_report

    sr, hr, lr, unc = (str(Path(p)) if p else None for p in (request.sr, request.hr, request.lr,
                                                               request.uncertainty))
    if request.json:
        out = {"sr": sr, "model": request.model, "hr": hr, "lr": lr, "uncertainty": unc, "scale": result.scale,
               "bands": request.bands, "lr_unit": result.unit, "results": result.rows, "notes": result.notes}
        if request.model:
            out["bicubic"] = result.baseline
        Path(request.json).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_finite(out), indent=2, allow_nan=False) + "\n"
        with atomic.AtomicPath(request.json) as tmp:   # an older report stays whole if this run is stopped
            Path(tmp).write_text(text)
    if request.html:
        if title is None:
            base = Path(request.hr or request.lr)
            title = (f"{Path(request.model).name} on {base.name}" if request.model else
                     f"{Path(request.sr).name} vs {base.name}" if request.hr else
                     f"{Path(request.sr).name} (no reference; its input {base.name})")
        sections = result.pictures if result.folders else {"": next(iter(result.pictures.values()))}
        write_html_report(request.html, shown_rows(result), f"LCMSR evaluation: {title}", pictures=sections,
                          notes=result.notes, inputs=request.inputs())
