"""The official plugin repository's gate, over the zip we upload: it scans every upload and blocks on Bandit and
detect-secrets findings.  Here Bandit and detect-secrets report nothing at MEDIUM or above, and
qgis-plugin-analyzer (a maintained checker from the registry) finds no blocking problem: its repository
rules (structure, metadata, size, binaries), its security audit, and QGIS's own Qt6/QGIS 4 migration rules.

Findings are fixed at their cause (raster/io.py reads XML through a parser that refuses DTDs); the only
exemptions, each with its reason on the line: the detect-secrets pragmas on the public SHA-256 checksums in
metrics/fetch_weights.py, and ``# nosec B310`` on torch_install.remote_size's urlopen, whose URL scheme is
checked to be http/https just above it.
"""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not in {BIN}: `make setup` installs it (requirements.txt)")
    return str(path)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    """The plugin folder exactly as the zip scripts/package.py builds holds it."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "scripts" / "package.py"), "--out", str(dist)], check=True,
                   capture_output=True, timeout=300)
    (archive,) = dist.glob("lcmsr_qgis-*.zip")
    root = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root)
    return root / "lcmsr_qgis"


def test_bandit_finds_nothing_at_medium_or_above(unpacked):
    proc = subprocess.run([tool("bandit"), "-r", "-q", "-ll", "-f", "json", str(unpacked)], capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stdout)
    findings = [f"{r['filename'].split('lcmsr_qgis/', 1)[-1]}:{r['line_number']} {r['test_id']} "
                f"{r['issue_severity']}: {r['issue_text']}" for r in report["results"]]
    assert findings == [] and report["errors"] == []
    assert report["metrics"]["_totals"]["loc"] > 10_000        # it did read the plugin and its backend


def test_detect_secrets_finds_nothing(unpacked):
    proc = subprocess.run([tool("detect-secrets"), "scan", "--all-files", "."], capture_output=True, text=True,
                          timeout=300, cwd=unpacked, check=True)
    results = json.loads(proc.stdout)["results"]
    assert {name: [(r["type"], r["line_number"]) for r in found] for name, found in results.items()} == {}


def test_detect_secrets_would_catch_a_key(tmp_path):
    """The scan above can fail: the same command flags a credential-looking line."""
    (tmp_path / "leak.py").write_text('AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEYx"\n')
    proc = subprocess.run([tool("detect-secrets"), "scan", "--all-files", "."], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, check=True)
    assert "leak.py" in json.loads(proc.stdout)["results"]


def test_qgis_plugin_analyzer_finds_no_blocking_problem(unpacked, tmp_path):
    security = subprocess.run([tool("qgis-analyzer"), "security", str(unpacked), "--tools",
                               "native,bandit,detect-secrets", "--deep", "--fail-on", "warning", "--no-cache",
                               "-o", str(tmp_path / "security")], capture_output=True, text=True, timeout=600)
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr[-2000:]
    subprocess.run([tool("qgis-analyzer"), "analyze", str(unpacked), "--linters", "none", "--no-cache",
                    "-o", str(tmp_path / "analyze")], capture_output=True, text=True, timeout=600, check=True)
    context = json.loads((tmp_path / "analyze" / "project_context.json").read_text(encoding="utf-8"))
    repository = context["repository_compliance"]
    assert repository["is_compliant"] and repository["constraint_errors"] == [] and repository["binaries"] == []
    standards = context["qgis_compliance"]["repository_standards"]
    assert standards["structure"]["is_valid"] and standards["metadata"]["is_valid"], standards
    assert context["security"]["count"] == 0, context["security"]["findings"]
    # QGIS's Qt6 migration rules (QGS4xx) and legacy imports: what would stop the plugin loading in QGIS 4.
    issues = context["qgis_compliance"]["best_practices"]["issues"] + [
        issue for module in context["modules"] for issue in module.get("ast_issues") or []]
    qt6 = [f"{i['file']}:{i['line']} {i['type']}: {i['message']}" for i in issues
           if i["type"].startswith("QT6_") or i["type"] in ("PYQT5_IMPORT", "QGIS_LEGACY_IMPORT")]
    assert qt6 == []
    assert len(context["modules"]) > 50                          # it did read the plugin and its backend
