"""Many rasters in one resumable command: ``lcmsr batch INPUT... --out-dir D``.

The driver gathers the inputs (files, folders, text lists, STAC ItemCollections of local assets),
plans each scene once (:func:`lcmsr.sr.units.plan_scene`: model, bands, stretch, tile/batch, and the
scene's units with their halos), hands the units to an executor (:mod:`lcmsr.sr.executors`), assembles
each scene when its units are done, and builds a VRT mosaic per CRS of the outputs.  Everything it
learns goes to a JSON-lines job log in the output folder, one event a line, written before it is
relied on:

    {"event": "planned",   "item", "src", "dst", "request", "plan_id", "scene"}
    {"event": "unit_done", "item", "plan_id", "index", "part", "sha256", "seconds", "device"}
    {"event": "item_done", "item", "request", "dst", "sha256", "seconds"}
    {"event": "item_failed", "item", "src", "error"}          (one line, the reason)
    {"event": "mosaic", "path", "crs", "members"};  "start" / "end" / "cancelled" with counts

A rerun reads the log.  An item whose output exists with the logged SHA-256 for the same request (the
same input file, model, options and unit size) is skipped; otherwise the logged scene is reused (never
re-planned: the plan decided once is the plan), its units whose part file exists with the logged
SHA-256 are kept, and only the others run.  Nothing is trusted without its hash: a part or an output
cut short by a kill, or changed since, is computed again.  Parts and outputs are written atomically by
the units themselves.

Errors are per item: a missing file, a corrupt raster or a raster outside every model's domain is one
line on the console and in the log, and the other items go on.

No torch and no GDAL at import: the units and :mod:`lcmsr.raster.mosaic` are imported when used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from .. import __version__
from ..progress import Cancelled, Progress

LOG_NAME = "lcmsr-batch.jsonl"
STACK_FOLDER = ".lcmsr-stacks"     # STAC items' band stacks (VRTs), inside the output folder
OUTPUT_SUFFIX = "_sr"
RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg", ".gpkg", ".nc", ".hdf",
                     ".h5", ".dat", ".bil", ".bsq", ".bip", ".asc", ".ecw", ".sid", ".kea", ".rst")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
STAC_EXTENSIONS = (".json", ".geojson")
# Asset roles that are not imagery to super-resolve.
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual", "cloud", "snow-ice", "water-mask", "data-mask"}
_POLL_S = 0.25


class BatchInputError(ValueError):
    """A usage problem with the whole batch (no inputs, an unusable output folder): exit status 2."""


# ---------------------------------------------------------------- inputs

@dataclass
class Item:
    """One input of the batch: what the user named (``origin``), the raster GDAL reads (``src``, or the
    single-band ``assets`` a band stack is made of), or the ``error`` found while gathering it."""
    origin: str
    src: str = ""
    assets: list[tuple[str, str]] = field(default_factory=list)   # (path, band name) of a STAC item
    error: str = ""
    key: str = ""      # unique name in the batch: the output's stem
    dst: str = ""


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\")) or "raster"
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "raster"


def _kind(path: str) -> str:
    if os.path.isdir(path):
        return "folder"
    ext = os.path.splitext(path)[1].lower()
    if ext in LIST_EXTENSIONS:
        return "list"
    if ext in STAC_EXTENSIONS:
        return "stac"
    return "raster"


def _folder_rasters(folder: str, skip: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.abspath(os.path.join(root, d)) != skip)
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(RASTER_EXTENSIONS) and not f.startswith(".")]
    return found


def _list_entries(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line if os.path.isabs(line) else os.path.join(base, line) for line in lines if line]


def _asset_band_name(key: str, asset: dict) -> str:
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if len(bands) == 1 and isinstance(bands[0], dict):
        return str(bands[0].get("name") or bands[0].get("common_name") or key)
    return key


def _asset_names(key: str, asset: dict) -> set[str]:
    names = {key.lower()}
    for band in asset.get("eo:bands") or asset.get("bands") or []:
        if isinstance(band, dict):
            names |= {str(band.get(k)).lower() for k in ("name", "common_name") if band.get(k)}
    return names


def _is_data_asset(key: str, asset: dict) -> bool:
    roles = set(asset.get("roles") or [])
    if roles & _NOT_DATA_ROLES and "data" not in roles:
        return False
    media = str(asset.get("type") or "").lower()
    href = str(asset.get("href") or "").lower().split("?")[0]
    return "tiff" in media or "jp2" in media or href.endswith(RASTER_EXTENSIONS) and not href.endswith(".vrt")


def stac_items(path: str, wanted: list[str] | None) -> list[Item]:
    """The items of a STAC ItemCollection (or a single Item) of local assets: per item, the assets named by
    ``wanted`` (asset keys or eo:bands names / common names, in that order), else every data asset."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise ValueError(f"{path} is not a STAC Item or ItemCollection (no \"type\": \"FeatureCollection\")")
    features = doc.get("features", []) if doc["type"] == "FeatureCollection" else [doc]
    base = os.path.dirname(os.path.abspath(path))
    items = []
    for n, feature in enumerate(features):
        ident = str(feature.get("id") or f"{_stem(path)}-{n + 1}")
        item = Item(origin=f"{os.path.basename(path)}#{ident}", key=_stem(ident))
        assets = feature.get("assets") or {}
        if wanted:
            chosen = []
            for name in wanted:
                match = [k for k, a in assets.items() if name.lower() in _asset_names(k, a)]
                if not match:
                    item.error = f"no asset named '{name}' (it has {', '.join(assets) or 'no assets'})"
                    break
                chosen.append(match[0])
        else:
            chosen = [k for k, a in assets.items() if _is_data_asset(k, a)]
            if not chosen:
                item.error = f"no raster data asset among {', '.join(assets) or 'no assets'} (name them with --assets)"
        if not item.error:
            for k in chosen:
                href = str(assets[k].get("href") or "")
                if "://" in href and not href.startswith("file://"):
                    item.error = f"asset '{k}' is remote ({href}): only local assets are read (download them first)"
                    break
                href = href[len("file://"):] if href.startswith("file://") else href
                item.assets.append((href if os.path.isabs(href) else os.path.join(base, href),
                                    _asset_band_name(k, assets[k])))
        if not item.error and len(item.assets) == 1:
            item.src, item.assets = item.assets[0][0], []
        items.append(item)
    return items


def gather(inputs: list[str], out_dir: str, assets: list[str] | None = None) -> list[Item]:
    """The batch's items, in the order given (folders walked in name order); the output folder itself is
    never walked.  A path that does not exist is an item with an error, not a stop."""
    items: list[Item] = []
    skip = os.path.abspath(out_dir)
    for entry in inputs:
        path = os.path.expanduser(entry)
        if not os.path.exists(path):
            items.append(Item(origin=entry, src=path, error=f"{entry} does not exist"))
            continue
        kind = _kind(path)
        try:
            if kind == "folder":
                found = _folder_rasters(path, skip)
                if not found:
                    items.append(Item(origin=entry, error=f"folder {entry} holds no raster files "
                                                          f"({', '.join(RASTER_EXTENSIONS[:4])} ...)"))
                items += [Item(origin=p, src=p) for p in found]
            elif kind == "list":
                items += [Item(origin=p, src=p, error="" if os.path.exists(p) else f"{p} does not exist "
                                                                                  f"(listed in {entry})")
                          for p in _list_entries(path)]
            elif kind == "stac":
                items += stac_items(path, assets)
            else:
                items.append(Item(origin=entry, src=path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            items.append(Item(origin=entry, error=f"cannot read {entry}: {exc}"))
    unique, seen = [], set()
    for item in items:   # the same file named twice (a folder and a list): one item
        where = os.path.realpath(item.src) if item.src and not item.error else None
        if where is None or where not in seen:
            unique.append(item)
            seen.add(where)
    _name_outputs(unique, out_dir)
    return unique


def _name_outputs(items: list[Item], out_dir: str) -> None:
    """``<stem>_sr.tif`` in the output folder; stems shared by several inputs get a hash of their origin, so a
    name does not depend on the order of the inputs."""
    for item in items:
        item.key = item.key or _stem(item.src or item.origin)
    counts: dict[str, int] = {}
    for item in items:
        counts[item.key.lower()] = counts.get(item.key.lower(), 0) + 1
    for item in items:
        if counts[item.key.lower()] > 1:
            where = os.path.abspath(item.src) if item.src else item.origin
            item.key += "-" + hashlib.sha256(where.encode("utf-8", "replace")).hexdigest()[:6]
        item.dst = os.path.join(out_dir, f"{item.key}{OUTPUT_SUFFIX}.tif")


# ---------------------------------------------------------------- the job log

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_hash(path: str, sha256: str | None) -> bool:
    if not sha256 or not os.path.isfile(path):
        return False
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


class JobLog:
    """The JSON-lines job log: appended one whole line per ``write`` (one ``write(2)`` on an O_APPEND file,
    then fsync), read back on a rerun.  A line cut short by a kill is ignored."""

    def __init__(self, path: str):
        self.path = path
        self.events: list[dict] = []
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and "event" in event:
                        self.events.append(event)
        self.previous = list(self.events)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A kill mid-write leaves a line without its newline: start on a fresh line.
        if os.path.getsize(path) and not _ends_with_newline(path):
            os.write(self._fd, b"\n")

    def write(self, event: str, **fields) -> dict:
        record = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        os.write(self._fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(self._fd)
        self.events.append(record)
        return record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # What the earlier runs left: the last word on each item.
    def planned(self, key: str, request: str) -> dict | None:
        for e in reversed(self.previous):
            if e.get("item") == key and e["event"] == "planned" and e.get("request") == request:
                return e
        return None

    def units_done(self, key: str, plan_id: str) -> dict[int, dict]:
        done = {}
        for e in self.previous:
            if e["event"] == "unit_done" and e.get("item") == key and e.get("plan_id") == plan_id:
                done[int(e["index"])] = e
        return done

    def item_done(self, key: str, request: str) -> dict | None:
        for e in reversed(self.previous):
            if e.get("item") == key and e["event"] in ("item_done", "planned"):
                return e if e["event"] == "item_done" and e.get("request") == request else None
        return None


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# ---------------------------------------------------------------- the driver

@dataclass
class ItemResult:
    origin: str
    key: str
    status: str            # "done" (this run), "skipped" (done before, output verified), "failed"
    dst: str = ""
    error: str = ""
    units_run: int = 0
    units_reused: int = 0


@dataclass
class BatchResult:
    items: list[ItemResult]
    log: str
    mosaics: list = field(default_factory=list)     # lcmsr.raster.mosaic.Mosaic
    executor: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items if r.status == "failed"]

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 0


def options_record(options) -> dict:
    """The options that decide the output, as JSON (the request's fingerprint); how errors are worded does not."""
    record = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options or {})
    record.pop("terms", None)
    return record


def _file_stamp(path: str) -> list:
    try:
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.path.abspath(path), None, None]


def request_id(item: Item, model, options, unit_size: int) -> str:
    """What an item's output is a function of: its input files (path, size, modification time), the model
    file, the options, the unit size and the lcmsr version.  A rerun with the same request may reuse the
    logged plan, parts and output; any change starts the item afresh."""
    sources = [_file_stamp(p) for p, _ in item.assets] if item.assets else [_file_stamp(item.src)]
    record = {"sources": sources, "bands": [name for _, name in item.assets],
              "model": _file_stamp(os.fspath(model)) if model else None,
              "options": options_record(options), "unit_size": unit_size, "version": __version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _model_unchanged(scene: dict) -> bool:
    """Whether the model file a logged plan names still has the SHA-256 it was planned with."""
    path, sha = scene.get("model"), scene.get("model_sha256")
    if not path or not sha:
        return True
    from ..catalog import file_sha256

    try:
        return file_sha256(path) == sha
    except OSError:
        return False


def plan_id(scene: dict) -> str:
    return hashlib.sha256(json.dumps(scene, sort_keys=True, default=str).encode()).hexdigest()[:20]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__name__ == "KilledWorker":
        text = f"a worker died while running it ({text}); rerun to resume"
    elif type(exc).__name__ == "BrokenProcessPool":
        text = "a worker process died; rerun to resume"
    return text


@dataclass
class _Scene:
    item: Item
    request: str
    scene: dict
    plan_id: str
    todo: list[dict]
    reused: int
    started: float = field(default_factory=time.perf_counter)
    tasks: int = 0         # its units to run and its assembly
    finished: int = 0      # of those, finished
    failed: str = ""
    ran: int = 0


class _Driver:
    def __init__(self, items, out_dir, model, options, executor, units, unit_size, progress, log):
        self.items, self.out_dir, self.model, self.options = items, out_dir, model, options
        self.executor, self.units, self.unit_size = executor, units, unit_size
        self.progress, self.log = progress, log
        self.results: dict[str, ItemResult] = {}
        self.scenes: list[_Scene] = []
        self.known_tasks = self.finished_tasks = 0

    def fail(self, item: Item, error: str) -> None:
        self.log.write("item_failed", item=item.key, src=item.src or item.origin, error=error)
        self.results[item.key] = ItemResult(item.origin, item.key, "failed", item.dst, error)
        self.progress.warn(f"FAILED {item.origin}: {error}")

    def prepare(self, item: Item) -> _Scene | None:
        """The item's scene, from the log when the same request was planned before, else planned now."""
        if item.error:
            self.fail(item, item.error)
            return None
        if item.assets:
            try:
                from ..raster.mosaic import stack_bands

                folder = os.path.join(self.out_dir, STACK_FOLDER)
                os.makedirs(folder, exist_ok=True)
                item.src = stack_bands(item.assets, os.path.join(folder, f"{item.key}.vrt"))
            except (OSError, ValueError, RuntimeError) as exc:
                self.fail(item, one_line(exc))
                return None
        request = request_id(item, self.model, self.options, self.unit_size)
        planned = self.log.planned(item.key, request)
        if planned and not _model_unchanged(planned["scene"]):
            # The model chosen by domain (no --model) was replaced since: what was made with it is stale.
            self.progress.info(f"{item.origin}: its model file changed since it was planned: planned again")
            planned = None
        done = self.log.item_done(item.key, request) if planned else None
        if done and _same_hash(item.dst, done.get("sha256")):
            self.results[item.key] = ItemResult(item.origin, item.key, "skipped", item.dst)
            self.progress.info(f"{item.origin}: done before ({os.path.basename(item.dst)}, SHA-256 verified)")
            return None
        if planned:
            scene = planned["scene"]
        else:
            try:
                self.progress.check()
                scene = self.units.plan_scene(item.src, item.dst, self.model, self.options, self.progress,
                                              unit_size=self.unit_size)
            except Cancelled:
                raise
            except Exception as exc:   # noqa: BLE001 - a bad item is reported in one line, the others go on
                self.fail(item, one_line(exc))
                return None
            scene = json.loads(json.dumps(scene))   # what an engine ships: JSON, nothing else
        pid = plan_id(scene)
        if not planned:
            self.log.write("planned", item=item.key, src=item.src, dst=item.dst, request=request, plan_id=pid,
                           units=len(scene["units"]), scene=scene)
        reusable = self.log.units_done(item.key, pid) if planned else {}
        todo = [u for u in scene["units"]
                if not (int(u["index"]) in reusable and _same_hash(u["part"], reusable[int(u["index"])]["sha256"]))]
        reused = len(scene["units"]) - len(todo)
        if reused:
            self.progress.info(f"{item.origin}: {reused} of {len(scene['units'])} unit(s) done before "
                               f"(SHA-256 verified), {len(todo)} to run")
        return _Scene(item, request, scene, pid, todo, reused)

    def run(self) -> None:
        """Plan items while the executor is busy (a catalogue's first units start after one plan, not all),
        keep at most 2 x workers tasks in flight (every worker fed, a cancel prompt), log every result."""
        ex = self.executor
        in_flight: dict = {}     # future -> (scene, unit or None for the assembly)
        queue: list[tuple[_Scene, dict | None]] = []
        to_plan = list(self.items)
        limit = max(2, 2 * ex.workers)
        try:
            while to_plan or queue or in_flight:
                self.progress.check()
                while to_plan and len(queue) + len(in_flight) < limit:
                    self._plan_next(to_plan.pop(0), queue)
                while queue and len(in_flight) < limit:
                    s, unit = queue.pop(0)
                    if s.failed:
                        continue
                    if unit is None:
                        future = ex.submit(self.units.assemble, s.scene)
                    else:
                        future = ex.submit(self.units.run_unit, unit, gpu=True)
                    in_flight[future] = (s, unit)
                if not in_flight:
                    continue
                done, _ = ex.wait(set(in_flight), timeout=_POLL_S)
                for future in done:
                    s, unit = in_flight.pop(future)
                    self.finished_tasks += 1
                    s.finished += 1
                    try:
                        result = ex.result(future)
                    except Cancelled:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - a remote failure, of any kind, fails its item
                        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                            raise
                        if not s.failed:
                            what = "assembling it" if unit is None else f"unit {unit['index']}"
                            s.failed = f"{what}: {one_line(exc)}"
                            self.fail(s.item, s.failed)
                        continue
                    if unit is not None:
                        self._unit_done(s, unit, result, queue)
                    else:
                        self._item_done(s, result)
                self._report()
        except BaseException:
            ex.cancel(set(in_flight))
            raise

    def _plan_next(self, item: Item, queue: list) -> None:
        self.progress.report(self._fraction(), f"planning {item.origin}")
        s = self.prepare(item)
        if s is None:
            return
        s.tasks = len(s.todo) + 1
        self.scenes.append(s)
        self.known_tasks += s.tasks
        queue += [(s, u) for u in s.todo] if s.todo else [(s, None)]

    def _fraction(self) -> float:
        """Items count equally; an item's share fills as its tasks (units and assembly) finish."""
        finished = sum(1 for r in self.results.values() if r.status != "done")   # failed or skipped, whole
        finished += sum(min(1.0, s.finished / s.tasks) for s in self.scenes if not s.failed)
        return 0.95 * min(1.0, finished / max(1, len(self.items)))

    def _report(self) -> None:
        self.progress.report(self._fraction(), f"{self.finished_tasks}/{self.known_tasks} tasks")

    def _unit_done(self, s: _Scene, unit: dict, result: dict, queue) -> None:
        s.ran += 1
        self.log.write("unit_done", item=s.item.key, plan_id=s.plan_id, index=int(unit["index"]),
                       part=result.get("part", unit["part"]), sha256=result["sha256"],
                       seconds=round(float(result.get("seconds", 0.0)), 3), device=str(result.get("device", "")))
        if s.failed:
            return
        s.todo = [u for u in s.todo if u is not unit]
        if not s.todo:
            queue.insert(0, (s, None))   # assemble as soon as its units are in

    def _item_done(self, s: _Scene, result: dict) -> None:
        sha = result.get("sha256") or sha256_file(s.item.dst)
        seconds = time.perf_counter() - s.started
        self.log.write("item_done", item=s.item.key, request=s.request, dst=s.item.dst, sha256=sha,
                       seconds=round(seconds, 2))
        self.results[s.item.key] = ItemResult(s.item.origin, s.item.key, "done", s.item.dst, "", s.ran, s.reused)
        self.progress.info(f"{s.item.origin} -> {os.path.basename(s.item.dst)} ({s.ran} unit(s) run, "
                           f"{s.reused} reused, {seconds:.1f} s)")


def run_batch(inputs: list[str], out_dir: str, model=None, options=None, *, executor="local", workers: int = 1,
              address: str | None = None, unit_size: int = 0, assets: list[str] | None = None,
              mosaic: bool = True, overviews: bool = True, progress: Progress | None = None,
              units=None) -> BatchResult:
    """Super-resolve every input into ``out_dir`` (see the module's docstring); resumable.

    ``executor``: a name (``local``, ``dask``) or an :class:`~lcmsr.sr.executors.Executor` (then it is the
    caller's to close).  ``units``: the unit-of-work functions (``plan_scene``, ``run_unit``, ``assemble``),
    by default :mod:`lcmsr.sr.units`; the engine calls them by reference, so they must be importable there.
    Raises :class:`BatchInputError` for a batch that cannot start; item failures are in the result.
    """
    start = time.perf_counter()
    progress = progress or Progress()
    if not inputs:
        raise BatchInputError("no inputs: name raster files, folders, text lists or STAC ItemCollections")
    out_dir = os.path.abspath(os.fspath(out_dir))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise BatchInputError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise BatchInputError(f"the output folder {out_dir} is not writable")
    if options is None:
        from ..raster.pipeline import SROptions

        options = SROptions(cog=True)   # a batch's outputs are COGs unless the caller's options say otherwise
    if hasattr(options, "validate"):
        options.validate()
    if units is None:
        from . import units
    model = os.path.abspath(os.fspath(model)) if model else None
    items = gather(list(inputs), out_dir, assets)
    from .executors import Executor, make_executor

    own = not isinstance(executor, Executor)
    ex = make_executor(executor, workers, address, getattr(options, "device", "auto")) if own else executor
    log = JobLog(os.path.join(out_dir, LOG_NAME))
    result = BatchResult(items=[], log=log.path, executor=ex.describe())
    try:
        progress.info(f"{len(items)} input(s) -> {out_dir}, executor {ex.describe()}")
        log.write("start", inputs=len(items), executor=ex.describe(), version=__version__,
                  unit_size=unit_size, model=model)
        driver = _Driver(items, out_dir, model, options, ex, units, unit_size, progress, log)
        try:
            driver.run()
        except Cancelled:
            log.write("cancelled", done=sum(r.status == "done" for r in driver.results.values()))
            raise
        result.items = [driver.results.get(i.key) or ItemResult(i.origin, i.key, "failed", i.dst, "not run")
                        for i in items]
        outputs = [r.dst for r in result.items if r.status in ("done", "skipped")]
        if mosaic and outputs:
            progress.report(0.96, "mosaic")
            try:
                from ..raster.mosaic import build_mosaics

                result.mosaics = build_mosaics(outputs, out_dir, overviews=overviews)
                for m in result.mosaics:
                    log.write("mosaic", path=m.path, crs=m.crs, members=[os.path.basename(p) for p in m.members])
                    progress.info(f"mosaic {m.path}: {len(m.members)} raster(s), {m.crs}")
            except (OSError, ValueError, RuntimeError) as exc:
                log.write("mosaic_failed", error=one_line(exc))
                progress.warn(f"the mosaic could not be built: {one_line(exc)}")
        result.seconds = time.perf_counter() - start
        counts = {k: sum(r.status == k for r in result.items) for k in ("done", "skipped", "failed")}
        log.write("end", seconds=round(result.seconds, 2), **counts)
        progress.report(1.0, "done")
        return result
    finally:
        log.close()
        if own:
            ex.close()
