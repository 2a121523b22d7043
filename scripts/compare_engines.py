"""How Dask distributed and Ray compare as the engine of `lcmsr batch` (docs/DESIGN.md, "Batches and executors").

Run it with each engine in its own fresh venv (their install size is the venv's growth):

    /usr/bin/python3 -m venv --system-site-packages /tmp/v-dask && /tmp/v-dask/bin/pip install "dask[distributed]"
    /usr/bin/python3 -m venv --system-site-packages /tmp/v-ray && /tmp/v-ray/bin/pip install ray
    /tmp/v-dask/bin/python scripts/compare_engines.py dask
    /tmp/v-ray/bin/python scripts/compare_engines.py ray

It prints: import time, the start of a local cluster of 2 single-threaded workers, 100 sequential no-op
round trips (ms each), 500 no-op tasks at once (ms per task) and the shutdown.
"""
import sys, time, json
def noop(x):
    return x

def main():
    engine = sys.argv[1]
    t0 = time.perf_counter()
    if engine == "dask":
        import distributed
        t1 = time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = distributed.Client(cluster)
        client.wait_for_workers(2)
        t2 = time.perf_counter()
        client.submit(noop, -1, pure=False).result()
        t3 = time.perf_counter()
        for i in range(100):
            client.submit(noop, i, pure=False).result()
        t4 = time.perf_counter()
        fs = [client.submit(noop, i, pure=False) for i in range(500)]
        client.gather(fs)
        t5 = time.perf_counter()
        client.close(); cluster.close()
    else:
        import ray
        t1 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        f = ray.remote(num_cpus=1)(noop)
        t2 = time.perf_counter()
        ray.get(f.remote(-1))
        t3 = time.perf_counter()
        for i in range(100):
            ray.get(f.remote(i))
        t4 = time.perf_counter()
        ray.get([f.remote(i) for i in range(500)])
        t5 = time.perf_counter()
        ray.shutdown()
    t6 = time.perf_counter()
    print(json.dumps({"engine": engine, "import_s": round(t1 - t0, 2), "cluster_start_s": round(t2 - t1, 2),
                      "first_task_s": round(t3 - t2, 2), "round_trip_ms": round((t4 - t3) * 10, 2),
                      "throughput_ms_per_task": round((t5 - t4) * 2, 2), "shutdown_s": round(t6 - t5, 2)}))

if __name__ == '__main__':
    main()
