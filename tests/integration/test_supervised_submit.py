"""The supervisor's spark-submit runs a release's code on the executors too, not the checkout it was started from.

A real spark-submit (local mode, through the driver-lock wrapper) of an application whose executor code imports a
module that exists twice: in the release's --py-files zip and, shadowing it, in the directory the submitting
process runs in, as a checkout's modules would.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

from include.connections import SPARK_CONN_ID
from include.settings import REPO_ROOT

MODULE = "origin_probe"
APPLICATION = f"""
from pyspark.sql import SparkSession

spark = SparkSession.builder.config("spark.ui.enabled", "false").getOrCreate()


def origin(_):
    import {MODULE}
    yield {MODULE}.ORIGIN


print("executor ran", spark.sparkContext.parallelize([0], 1).mapPartitions(origin).collect()[0], flush=True)
spark.stop()
"""


def test_executors_import_the_release_not_the_directory_it_was_submitted_from(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))  # as Airflow puts its plugins folder on the path
    from streaming_supervisor import LockedSparkSubmitHook

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / f"{MODULE}.py").write_text('ORIGIN = "checkout"\n')
    release = tmp_path / "release"
    (release / "src").mkdir(parents=True)
    (release / "src" / "app.py").write_text(APPLICATION)
    with zipfile.ZipFile(release / "job.zip", "w") as bundle:
        bundle.writestr(f"{MODULE}.py", 'ORIGIN = "release"\n')
    monkeypatch.chdir(checkout)
    # Airflow runs with the virtual environment's bin/ (spark-submit) on its PATH.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    hook = LockedSparkSubmitHook(
        lock_path=tmp_path / "driver.lock", version="probe", driver_log=tmp_path / "driver.log", working_dir=release,
        conn_id=SPARK_CONN_ID, py_files=str(release / "job.zip"), name="supervised-submit-probe",
        env_vars={"PYSPARK_PYTHON": sys.executable, "PYTHONPATH": ""},
        conf={"spark.ui.enabled": "false", "spark.log.level": "WARN"},
    )
    hook.submit(str(release / "src" / "app.py"))

    assert "executor ran release" in hook.output_tail, "\n".join(hook.output_tail)
