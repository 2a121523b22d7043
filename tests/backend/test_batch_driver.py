"""The batch driver's own logic with stand-in units: inputs, the job log, resume, per-item errors, executors.

The real units on real rasters (bytes against the local executor, kill -9, the mosaic) are in
test_batch_rasters.py."""
import json
import os
from pathlib import Path

import pytest

import _batch_units as fake
from lcmsr.progress import Cancelled, Progress
from lcmsr.sr.batch import LOG_NAME, JobLog, gather, run_batch
from lcmsr.sr.executors import ExecutorError, make_executor


def events(out_dir, kind=None, since_start: int = 0):
    """The job log's events (of one kind), from the ``since_start``-th run on (0: all runs)."""
    all_events = JobLog(os.path.join(out_dir, LOG_NAME)).events   # a torn line is skipped, as the driver does
    starts = [i for i, e in enumerate(all_events) if e["event"] == "start"]
    chosen = all_events[starts[since_start]:] if since_start else all_events
    return [e for e in chosen if kind is None or e["event"] == kind]


def batch(inputs, out_dir, **kw):
    kw.setdefault("mosaic", False)
    return run_batch([str(i) for i in inputs], str(out_dir), None, {"seed": 0}, units=fake, **kw)


class CancelAfter(Progress):
    """Cancels the batch once ``n`` tasks have finished (the driver reports 'k/N tasks')."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def report(self, fraction, message=""):
        if message.endswith("tasks"):
            self.seen = int(message.split("/")[0])

    def cancelled(self):
        return self.seen >= self.n


def test_inputs_from_files_folders_lists_and_stac(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    a = fake.write_input(data / "a.tif")
    b = fake.write_input(data / "sub" / "b.tif")
    (data / "notes.md").write_text("not a raster")
    other = tmp_path / "other"
    other.mkdir()
    c = fake.write_input(other / "a.tif")                      # the same stem as data/a.tif
    listing = tmp_path / "list.txt"
    listing.write_text(f"# rasters\n{c}\nmissing.tif   # not there\n{a}\n")
    (tmp_path / "stac").mkdir()
    x = fake.write_input(tmp_path / "stac" / "x.tif")
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "S2B_T33UUU_1", "assets": {
            "B04": {"href": "stac/x.tif", "roles": ["data"], "eo:bands": [{"name": "B04", "common_name": "red"}]},
            "thumbnail": {"href": "thumb.png", "roles": ["thumbnail"]}}},
        {"type": "Feature", "id": "remote", "assets": {
            "B04": {"href": "https://example.com/b04.tif", "roles": ["data"], "type": "image/tiff"}}},
        {"type": "Feature", "id": "no-red", "assets": {"B02": {"href": "stac/x.tif", "roles": ["data"]}}},
    ]}))
    out = tmp_path / "out"
    items = gather([str(data), str(listing), str(stac), str(tmp_path / "gone.tif")], str(out), assets=None)
    by_origin = {i.origin: i for i in items}
    # a.tif once (named by the folder and the list), b.tif, other/a.tif, the list's missing entry, 3 STAC items
    assert [os.path.realpath(i.src) for i in items[:3]] == [os.path.realpath(p) for p in (a, b, c)]
    assert by_origin[a].key != by_origin[c].key and by_origin[a].key.startswith("a-")   # shared stem: hashed
    assert by_origin[b].dst == str(out / "b_sr.tif") and not by_origin[b].error
    missing = [i for i in items if i.origin.endswith("missing.tif")]
    assert missing and "does not exist (listed in" in missing[0].error
    s2 = by_origin["items.json#S2B_T33UUU_1"]
    assert os.path.realpath(s2.src) == os.path.realpath(x) and not s2.assets and s2.key == "S2B_T33UUU_1"
    assert "remote" in by_origin["items.json#remote"].error and "only local assets" in by_origin["items.json#remote"].error
    assert "items.json#no-red" not in by_origin       # B02 is a data asset: the same file as item 1, dropped
    assert "does not exist" in by_origin[str(tmp_path / "gone.tif")].error
    # --assets picks by band name or common name; an item without it says which it has
    picked = gather([str(stac)], str(out), assets=["red"])
    assert not picked[0].error and "no asset named 'red' (it has B02)" == picked[2].error
    assert len(picked) == 3


def test_bad_items_are_one_line_each_and_the_others_complete(tmp_path):
    good = [fake.write_input(tmp_path / f"good{i}.tif", units=2) for i in range(2)]
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_text("{not json")
    outside = fake.write_input(tmp_path / "outside.tif", fail="plan")
    broken = fake.write_input(tmp_path / "broken.tif", units=3, fail="unit:1")
    out = tmp_path / "out"
    result = batch([*good, tmp_path / "missing.tif", corrupt, outside, broken], out)
    assert result.exit_status == 1
    assert sorted(r.key for r in result.items if r.status == "done") == ["good0", "good1"]
    failed = {r.key: r.error for r in result.failed}
    assert failed["missing"].endswith("missing.tif does not exist")
    assert "is not a raster GDAL can read" in failed["corrupt"]
    assert "outside the model's domain" in failed["outside"]
    assert failed["broken"] == "unit 1: unit 1 broke (stand-in)"
    assert all("\n" not in e for e in failed.values())
    logged = {e["item"]: e["error"] for e in events(out, "item_failed")}
    assert logged == failed
    assert [e["event"] for e in events(out)][-1] == "end" and events(out, "end")[0]["failed"] == 4
    for p in good:
        assert (out / (os.path.basename(p)[:-4] + "_sr.tif")).read_text().count("\n") == 2


def test_rerun_runs_only_unfinished_units_and_trusts_nothing_without_its_hash(tmp_path):
    inputs = [fake.write_input(tmp_path / f"s{i}.tif", units=4) for i in range(3)]
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        batch(inputs, out, progress=CancelAfter(6))
    first_run = events(out)
    first = events(out, "unit_done")
    assert 4 <= len(first) < 12 and not events(out, "end")     # 6 tasks: units and an assembly
    assert events(out, "cancelled")
    done_before = {(e["item"], e["index"]) for e in first}
    # A part cut short after it was logged (disk trouble, a hand edit): its hash no longer matches.
    victim = next(e for e in first if os.path.exists(e["part"]))
    with open(victim["part"], "w") as f:
        f.write("half")
    # A kill -9 in the middle of writing a log line leaves half a line: ignored, and the next line starts fresh.
    with open(out / LOG_NAME, "a") as f:
        f.write('{"event": "unit_do')
    assembled_before = {e["item"] for e in events(out, "item_done")}
    result = batch(inputs, out)
    assert result.exit_status == 0
    assert {r.key: r.status for r in result.items} == {f"s{i}": "skipped" if f"s{i}" in assembled_before else "done"
                                                      for i in range(3)}
    second = {(e["item"], e["index"]) for e in events(out, "unit_done", since_start=1)}
    expected = {(f"s{i}", u) for i in range(3) for u in range(4) if f"s{i}" not in assembled_before}
    expected -= done_before
    expected.add((victim["item"], victim["index"])) if victim["item"] not in assembled_before else None
    assert second == expected
    planned_before = {e["item"] for e in first_run if e["event"] == "planned"}
    # The logged plans are reused, never re-planned: only what the cancelled run had not reached is planned now.
    assert {e["item"] for e in events(out, "planned", since_start=1)} == {"s0", "s1", "s2"} - planned_before
    reference = batch(inputs, tmp_path / "fresh")
    for r in reference.items:
        assert (out / os.path.basename(r.dst)).read_bytes() == Path(r.dst).read_bytes()
    # Everything done: a third run verifies the outputs' hashes and runs nothing.
    third = batch(inputs, out)
    assert [r.status for r in third.items] == ["skipped"] * 3 and not events(out, "unit_done", since_start=2)
    # An output changed since: redone (its parts are gone, so all its units run again); a changed input too.
    with open(out / "s0_sr.tif", "a") as f:
        f.write("x")
    fake.write_input(tmp_path / "s1.tif", units=2)
    fourth = batch(inputs, out)
    assert [r.status for r in fourth.items] == ["done", "done", "skipped"]
    assert len(events(out, "unit_done", since_start=3)) == 4 + 2
    assert len(events(out, "planned", since_start=3)) == 1    # s0 kept its plan; s1 was planned anew


def test_a_model_chosen_by_domain_and_replaced_since_makes_its_items_run_again(tmp_path):
    model = tmp_path / "chosen.safetensors"
    model.write_bytes(b"weights v1")
    inputs = [fake.write_input(tmp_path / "a.tif", units=2, auto_model=str(model)),
              fake.write_input(tmp_path / "b.tif", units=2)]
    assert [r.status for r in batch(inputs, tmp_path / "out").items] == ["done", "done"]
    model.write_bytes(b"weights v2")     # an update of the bundled model, say: same request, other weights
    assert [r.status for r in batch(inputs, tmp_path / "out").items] == ["done", "skipped"]
    assert [e["item"] for e in events(tmp_path / "out", "planned", since_start=1)] == ["a"]


def test_log_reader_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_text('{"event": "start"}\n{"event": "unit_done", "item": "a", "pl')
    log = JobLog(str(path))
    assert [e["event"] for e in log.events] == ["start"]
    log.write("end")
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["event"] == "end"   # not glued to the torn line
    assert [e["event"] for e in JobLog(str(path)).events] == ["start", "end"]


@pytest.mark.slow
def test_every_executor_gives_the_same_outputs(tmp_path):
    """In-process, a pool of two processes and a local two-worker Dask cluster: the same files and logs."""
    inputs = [fake.write_input(tmp_path / f"s{i}.tif", units=3, delay=0.05) for i in range(3)]
    outputs = {}
    for name, kind, workers in (("inline", "local", 1), ("pool", "local", 2), ("dask", "dask", 2)):
        result = batch(inputs, tmp_path / name, executor=kind, workers=workers)
        assert result.exit_status == 0, result.failed
        outputs[name] = {os.path.basename(r.dst): Path(r.dst).read_text() for r in result.items}
        pids = {e["device"].split(" gpu ")[0] for e in events(tmp_path / name, "unit_done")}
        assert len(pids) == (1 if workers == 1 else 2) or name == "dask" and len(pids) >= 1
    assert outputs["inline"] == outputs["pool"] == outputs["dask"]


@pytest.mark.slow
def test_model_tasks_claim_one_gpu_each_on_a_cluster_whose_workers_declare_gpus(tmp_path):
    """A cluster reached by its address, with two workers declaring GPU=1 and pinned to GPUs 0 and 1 (the
    local CUDA cluster's spec; on this CPU machine the pinning is only an environment variable), each with
    two threads: every unit claims the GPU, so no worker runs two at once, and both GPUs are used."""
    from distributed import Scheduler, SpecCluster

    from lcmsr.sr.executors import local_worker_specs

    inputs = [fake.write_input(tmp_path / f"s{i}.tif", units=3, delay=0.2) for i in range(2)]
    specs = local_worker_specs(workers=1, gpus=2)
    for spec in specs.values():
        spec["options"]["nthreads"] = 2
    with SpecCluster(workers=specs, silence_logs=40,
                     scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0", "host": "127.0.0.1"}}) as cluster:
        with make_executor("dask", address=cluster.scheduler_address) as ex:
            assert ex.gpu_tasks and "one GPU per model task" in ex.describe()
            result = batch(inputs, tmp_path / "out", executor=ex)
    assert result.exit_status == 0
    runs = {}
    for e in events(tmp_path / "out", "unit_done"):
        _, gpu, _, start, _, end = e["device"].rsplit(" ", 5)
        runs.setdefault(gpu, []).append((float(start), float(end)))
    assert sorted(runs) == ["0", "1"]
    for spans in runs.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans


def test_executor_errors_are_one_line():
    with pytest.raises(ExecutorError, match="unknown executor 'spark'"):
        make_executor("spark")
    with pytest.raises(ExecutorError, match="--address names a cluster's scheduler"):
        make_executor("local", address="tcp://127.0.0.1:8786")
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        make_executor("dask", address="tcp://127.0.0.1:9", timeout=1)


def test_usage_errors_exit_2_in_one_line(tmp_path, capsys):
    from lcmsr.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    fake.write_input(folder / "a.tif")
    for argv, message in [
        (["batch", str(folder), "--out-dir", str(folder)], "is also INPUT"),    # outputs would become inputs
        (["batch", str(folder), "--out-dir", str(tmp_path / "o"), "--address", "tcp://h:8786"],
         "--address names a Dask scheduler: use it with --executor dask"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(SystemExit) as stop:     # argparse's own usage error
        main(["batch", str(folder), "--out-dir", str(tmp_path / "o"), "--unit-size", "10"])
    assert stop.value.code == 2 and "a unit is at least 64 LR pixels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
