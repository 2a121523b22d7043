"""The job boundary (lcmsr.jobs, `lcmsr run-job`): a job as JSON, its events as JSON lines, one-line errors."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcmsr.choices import Terms
from lcmsr.jobs import Job, JobError, options_from_dict, options_to_dict, output_paths, run
from lcmsr.progress import JsonLinesProgress, decode_event, encode_event

REPO = Path(__file__).resolve().parents[2]
SAMPLE_HR = REPO / "resources" / "sample" / "neon_hr.tif"


def run_job_cli(job_file, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "lcmsr", "run-job", str(job_file)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def events_of(stdout: str) -> list:
    return [decode_event(line) for line in stdout.splitlines() if line.strip()]


def test_events_round_trip_and_anything_else_is_refused():
    import numpy as np

    for kind, fields in (("progress", {"percent": 12.5, "message": "tile 3/8"}), ("info", {"message": "a\nb"}),
                         ("warning", {"message": "w"}), ("error", {"message": "e"}),
                         ("result", {"result": {"psnr": np.float32(3.5), "path": Path("/x/y.tif")}})):
        line = encode_event(kind, **fields)
        assert "\n" not in line
        event = decode_event(line)
        assert event["event"] == kind
    assert decode_event(encode_event("info", message="a\nb"))["message"] == "a\\nb"   # one line in QGIS's log
    assert decode_event(encode_event("result", result={"psnr": np.float32(3.5)}))["result"] == {"psnr": 3.5}
    for bad in ("", "hello", "[1, 2]", '{"event": "nope"}', '{"event": "progress"}', '{"event": "progress", '
                '"percent": NaN}', '{"event": "result", "result": 3}'):
        with pytest.raises(ValueError):
            decode_event(bad)
    with pytest.raises(ValueError):
        encode_event("nope")


def test_json_lines_progress_thins_progress_and_obeys_a_cancel_request():
    stream = io.StringIO()
    progress = JsonLinesProgress(stream)
    for i in range(1001):
        progress.report(i / 1000)
    progress.info("hello")
    progress.warn("careful")
    events = events_of(stream.getvalue())
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents[0] == 0.0 and percents[-1] == 100.0 and len(percents) <= 1001
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(percents, percents[1:]))
    assert [e["event"] for e in events[-2:]] == ["info", "warning"]
    assert not progress.cancelled()
    progress.request_cancel()
    assert progress.cancelled()
    with pytest.raises(Exception, match="cancelled"):
        progress.check()


def test_option_dataclasses_travel_as_their_fields():
    from lcmsr.raster.pipeline import SROptions
    from lcmsr.train_options import TrainOptions

    terms = Terms({"bands": "'Bands'", "tile": "'Tile'"}, setting="{name} = {value}")
    sr = SROptions(tile=64, bands=[3, 2, 1], terms=terms, creation_options=["COMPRESS=ZSTD"], uncertainty="/u.tif")
    text = Job("superresolve", {"sr": options_to_dict(sr)}).to_json()
    back = options_from_dict(SROptions, Job.from_json(text).args["sr"], "sr")
    assert back == sr and back.terms.set("tile", 3) == "'Tile' = 3"
    train = TrainOptions(sources=["a.tif"], iterations=5, lr=1e-4, overrides={"consistency": {"loss": "l2"}})
    assert options_from_dict(TrainOptions, json.loads(json.dumps(options_to_dict(train))), "options") == train
    with pytest.raises(JobError, match="sr has unknown key.*no_such_option"):
        options_from_dict(SROptions, {"no_such_option": 1}, "sr")


@pytest.mark.parametrize("text, message", [
    ("{bad", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"command": "rm -rf", "args": {}}', "unknown job command"),
    ('{"command": "degrade", "args": []}', "'args' must be a JSON object"),
    ('{"command": "degrade", "args": {}, "extra": 1}', "unknown keys: extra"),
    ('{"version": 99, "command": "degrade"}', "job version 99"),
])
def test_malformed_jobs_are_one_line_errors(text, message):
    with pytest.raises(JobError, match=message):
        Job.from_json(text)


def test_run_job_with_a_malformed_job_gives_one_error_event_and_status_2(tmp_path):
    job = tmp_path / "job.json"
    job.write_text('{"command": "degrade", "args": {"src": 5}', encoding="utf-8")
    done = run_job_cli(job)
    assert done.returncode == 2
    (event,) = events_of(done.stdout)
    assert event["event"] == "error" and "not valid JSON" in event["message"] and "\n" not in event["message"]
    missing = run_job_cli(tmp_path / "nope.json")
    assert missing.returncode == 2 and events_of(missing.stdout)[-1]["message"].startswith("cannot read the job")
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text(json.dumps({"command": "degrade", "args": {"src": 5, "dst": "x.tif", "scale": 4}}))
    done = run_job_cli(wrong_type)
    assert done.returncode == 2 and events_of(done.stdout) == [
        {"event": "error", "message": "the job's 'src' has the wrong type (int)"}]


def test_run_job_degrades_with_events_on_stdout_only(tmp_path):
    pytest.importorskip("osgeo")
    dst = tmp_path / "lr.tif"
    job = tmp_path / "job.json"
    job.write_text(Job("degrade", {"src": str(SAMPLE_HR), "dst": str(dst), "scale": 4}).to_json(), encoding="utf-8")
    done = run_job_cli(job)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)   # every stdout line is an event: decode_event raises otherwise
    assert events[-1] == {"event": "result", "result": {"output": str(dst)}}
    assert any(e["event"] == "progress" for e in events) and dst.exists()


def test_run_in_process_gives_plain_json_results_and_sweeps_what_killed_runs_left(tmp_path):
    pytest.importorskip("osgeo")
    from lcmsr.atomic import HOST_TAG

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".lr.tif.partial-{HOST_TAG}-{dead}-abcd1234"
    stale.write_bytes(b"half a raster")
    job = Job("degrade", {"src": str(SAMPLE_HR), "dst": str(tmp_path / "lr.tif"), "scale": 4})
    assert output_paths(job) == [str(tmp_path / "lr.tif")]
    assert run(job) == {"output": str(tmp_path / "lr.tif")}
    assert not stale.exists()


def test_sigterm_cancels_a_job_and_leaves_no_output(tmp_path, tiny_model):
    """The worker's cancel: SIGTERM mid-job is the job's own cancel (exit 130, one error event), nothing written."""
    import signal
    import time

    from lcmsr.raster.pipeline import SROptions

    dst = tmp_path / "sr.tif"
    job = tmp_path / "job.json"
    job.write_text(Job("superresolve", {"src": str(REPO / "resources" / "sample" / "neon_lr.tif"), "dst": str(dst),
                                        "model": tiny_model,
                                        "sr": options_to_dict(SROptions(tile=16, overlap=2, batch=1,
                                                                        device="cpu"))}).to_json())
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lcmsr", "run-job", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:   # wait for the first tile
        if decode_event(line)["event"] == "progress" and "tile" in decode_event(line)["message"]:
            break
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    rc = proc.wait(timeout=120)
    rest = events_of(proc.stdout.read())
    proc.stdout.close()
    proc.stderr.close()
    assert rc == 130 and time.monotonic() - start < 60
    assert rest[-1]["event"] == "error" and rest[-1]["message"].startswith("Cancelled")
    assert sorted(os.listdir(tmp_path)) == ["job.json"]
