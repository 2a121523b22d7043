#!/usr/bin/env python3
"""Build dist/lcmsr_qgis-<version>.zip: the plugin folder at the zip's root, installable with
QGIS's "Install from ZIP", with the backend bundled under lcmsr_qgis/ext/ and the shipped
models, LPIPS weights (float16), sample raster and icon under lcmsr_qgis/resources/.

The official plugin repository (plugins.qgis.org) accepts it: <= 25 MB, LICENSE in the plugin
folder, no __pycache__/.pyc/.git, the required metadata (tests/process/test_qgis_process.py checks
those rules on the built file)."""
import argparse
import os
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
from lcmsr.atomic import AtomicPath  # noqa: E402  (torch-free, GDAL-free)

PLUGIN = "lcmsr_qgis"
SKIP_DIRS = {"__pycache__", "__MACOSX"}  # and every hidden folder (.git, .pytest_cache, ...): see walk
SKIP_SUFFIXES = {".pyc", ".pyo"}
SKIP_NAME_ENDINGS = (".aux.xml",)  # GDAL/QGIS side files written next to rasters that were opened


def version() -> str:
    for line in (REPO / "metadata.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("version="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("metadata.txt has no version= line")


def walk(src: Path):
    """Files under src (following symlinks), sorted so the zip is reproducible."""
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix not in SKIP_SUFFIXES and not name.endswith(SKIP_NAME_ENDINGS) and not name.startswith("."):
                yield path


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{version()}.zip"
    entries = []
    for path in walk(REPO / PLUGIN):
        rel = path.relative_to(REPO / PLUGIN)
        if rel.parts[0] in {"ext", "resources"}:
            continue  # a stale dev copy must never shadow what is bundled below
        entries.append((path, Path(PLUGIN) / rel))
    for path in walk(REPO / "backend" / "lcmsr"):
        entries.append((path, Path(PLUGIN) / "ext" / "lcmsr" / path.relative_to(REPO / "backend" / "lcmsr")))
    for sub in ("models", "metric-weights", "sample"):
        if (REPO / "resources" / sub).is_dir():
            for path in walk(REPO / "resources" / sub):
                # The models' evaluation records (JSON) are the cards' sources, not something the plugin reads;
                # they hold provenance hashes the plugin repository's secret scan would flag.
                if sub == "models" and path.suffix == ".json":
                    continue
                entries.append((path, Path(PLUGIN) / "resources" / path.relative_to(REPO / "resources")))
    entries.append((REPO / "resources" / "icon.svg", Path(PLUGIN) / "resources" / "icon.svg"))
    # Explicit folder entries: some unzip code (older QGIS installers) only creates folders it is told about.
    folders = sorted({str(p) + "/" for _, arc in entries for p in arc.parents if str(p) != "."})
    with AtomicPath(target, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            info = zipfile.ZipInfo(folder, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
        for src, arc in entries:
            info = zipfile.ZipInfo(str(arc), date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, src.read_bytes())
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "dist"))
    args = parser.parse_args(argv)
    target = build(Path(args.out))
    print(f"{target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
