"""Scaling of the streaming job: local[2] against the local standalone cluster with one and with two workers, on
topics of 3 and 6 partitions, events/s side by side in one run.

    python -m bench.cluster_bench                  # 30,000 events per topic
    python -m bench.cluster_bench --events 10000

Each topic gets the same generated data set (bench.data); each of the three modes runs the job's own entry point
(`python -m spark.streaming_job`, available-now) over it into a schema and indices of its own. On the cluster the
job's code reaches the executors as a release zip (--py-files), as the supervisor ships it; "1 worker" is the same
cluster with spark.cores.max=1, i.e. one executor of one core. The figure is the processing rate (the sum of the
micro-batches' durations from the job's heartbeats, JVM and executor start-up excluded); the wall rate is printed
beside it. The cluster (`python -m stack up --spark-cluster`) must be running. Results go to
bench/results/cluster-<events>.json; the run fails if a sink did not end with the newest version of every id.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

from bench import log_dir, start_logging
from bench.data import generate
from bench.job import Driver
from bench.monitor import Monitor
from bench.pipeline import JOB_MODULE, job_args, processing_seconds
from bench.scratch import Landed, Scratch, es_landed, produce
from include.orchestration.releases import ReleaseStore
from include.settings import REPO_ROOT, load_settings
from spark.streaming_job import AVAILABLE_NOW
from stack.services import SparkMaster, SparkWorker

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = (3, 6)
BATCH = 10_000
# The sink's per-batch line (spark/sinks/batch.py): where a batch's time went.
_BATCH_SECONDS = re.compile(r"seconds: stage ([\d.]+), merge ([\d.]+) \(bulk ([\d.]+) of it\), total ([\d.]+)")


def time_split(log_path: Path) -> dict[str, float]:
    """Seconds summed over the run's batches: stage (Kafka read, validate, render, COPY: the executors' part), merge
    (Postgres statements and, inside it, the Elasticsearch bulk: the driver's part) and total."""
    sums = [0.0, 0.0, 0.0, 0.0]
    for match in _BATCH_SECONDS.finditer(log_path.read_text(errors="replace")):
        sums = [a + float(b) for a, b in zip(sums, match.groups())]
    return dict(zip(("stage_s", "merge_s", "bulk_s", "foreach_batch_s"), (round(s, 2) for s in sums)))


def modes(settings, py_files: Path) -> dict[str, dict[str, str]]:
    """label -> the driver's extra environment."""
    def cluster(cores: int) -> dict[str, str]:
        submit = ["--py-files", str(py_files), "--conf", f"spark.cores.max={cores}", "pyspark-shell"]
        return {"PIPELINE_SPARK_MASTER": settings.spark_cluster_url, "PIPELINE_SPARK_DRIVER_MEMORY": "1g",
                "PYSPARK_SUBMIT_ARGS": shlex.join(submit)}

    return {"local[2]": {"PIPELINE_SPARK_MASTER": "local[2]"}, "cluster 1 worker": cluster(1),
            "cluster 2 workers": cluster(2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=20251203)
    args = parser.parse_args(argv)
    start_logging()
    settings = load_settings()
    daemons = [SparkMaster(settings), *(SparkWorker(settings, n) for n in range(2))]
    down = [d.name for d in daemons if not d.health().healthy]
    if down:
        print(f"the local Spark cluster is not healthy ({', '.join(down)}): python -m stack up --spark-cluster")
        return 2
    logs = log_dir(settings)
    dataset = generate(args.events, args.seed)
    results: dict[str, dict] = {}
    complete = True
    peaks: dict = {}
    monitor = Monitor().start()
    try:
        with Scratch(settings) as scratch, tempfile.TemporaryDirectory(dir=settings.state_dir) as releases:
            py_files = ReleaseStore(Path(releases)).build_tree(REPO_ROOT).py_files
            landed = Landed(settings, dataset.newest)
            try:
                for partitions in PARTITIONS:
                    topic = scratch.topic(f"p{partitions}", partitions)
                    produce(settings, topic, ((m.key, m.value) for m in dataset.messages))
                    for mode, env in modes(settings, py_files).items():
                        label = f"p{partitions}_{mode.split()[-1].replace('[', '').replace(']', '')}_{len(results)}"
                        schema = scratch.pg_schema(label)
                        indices = scratch.es_indices(label)
                        command = job_args(settings, scratch, label, topic, schema, AVAILABLE_NOW, BATCH)
                        # Small messages: let a batch hold BATCH of them (the default budget allows 2,048).
                        command += ["--max-bytes-per-trigger", str(BATCH * 256 * 1024)]
                        driver = Driver(label, JOB_MODULE, command, logs / f"{scratch.name(label)}.log", monitor,
                                        env=env)
                        try:
                            wall = driver.wait(3600)
                        finally:
                            driver.finish()
                        run = processing_seconds(settings, schema, scratch.name(label))
                        sinks = {"pg": landed.report(schema), "es": es_landed(scratch.es, indices, dataset.distinct_ids)}
                        complete &= sinks["pg"]["complete"] and sinks["es"]["complete"]
                        results[f"{mode}, {partitions} partitions"] = {
                            "mode": mode, "partitions": partitions, "events": len(dataset),
                            "batches": run["batches"], "seconds": round(run["seconds"], 2),
                            "events_per_s": round(len(dataset) / run["seconds"], 1),
                            "wall_s": round(wall, 2), "wall_events_per_s": round(len(dataset) / wall, 1),
                            **time_split(driver.log_path), "complete": sinks["pg"]["complete"] and sinks["es"]["complete"]}
                        print(f"{mode:<18} {partitions} partitions: {results[f'{mode}, {partitions} partitions']}",
                              flush=True)
            finally:
                landed.close()
    finally:
        peaks = monitor.stop()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cluster-{args.events}.json"
    path.write_text(json.dumps({"events": len(dataset), "batch": BATCH, "runs": results,
                                "processes": peaks}, indent=2, default=str))
    print(f"\n{'events/s (processing)':<22}" + "".join(f"{p} partitions".rjust(16) for p in PARTITIONS))
    for mode in modes(settings, Path()):
        print(f"{mode:<22}" + "".join(f"{results[f'{mode}, {p} partitions']['events_per_s']:>16,.0f}"
                                      for p in PARTITIONS))
    print(f"written to {path}; sinks {'complete' if complete else 'INCOMPLETE'}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
