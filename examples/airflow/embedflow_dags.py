"""Airflow DAGs that run embedflow pipelines: one run per day, and the same split over shards.

Install embedflow into the workers' environment (`pip install embedflow-<version>.whl`, then
`embedflow setup` once for the offline default model). Each task runs `embedflow run` and:

- templates the day into the pipeline (the `DS` variable, read as `${DS}` in the YAML);
- pushes the run's `--summary-json` to XCom (rows read, embedded, written, seconds...);
- maps embedflow's exit codes to Airflow's outcomes:
  0 success; 1 failure, retried by Airflow (`retries` below); 2 invalid pipeline or
  destination, failed without retries; 3 partial (rows in a dead-letter file), failed without
  retries, its log naming the file (`embedflow replay FILE --pipeline P` sends them again);
  130/143 interrupted. Code 99 (BashOperator's "skipped") is never used.

Settings, from the environment of the scheduler and workers:
  EMBEDFLOW_PIPELINE  the pipeline file (default: daily.yaml beside this file)
  EMBEDFLOW_WORKDIR   the folder the pipeline's relative paths start from (default: the
                      repository holding this file)
  EMBEDFLOW_SHARDS    how many shards the mapped DAG splits the table into (default 3)
  EMBEDFLOW_RETRIES, EMBEDFLOW_RETRY_DELAY_SECS   Airflow's retries of a failed run (2, 300)
  EMBEDFLOW_BACKFILL_PIPELINE  the backfill DAG's pipeline, one with `sink.pinecone.import`
                      (default: backfill.yaml beside this file)

The backfill DAG loads a table through Pinecone's bulk import without holding a worker while
Pinecone imports: one task writes the files and starts the import (`wait: false`), the next
waits for it (`embedflow import wait ID`), which Airflow can retry on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

HERE = Path(__file__).resolve().parent
PIPELINE = os.environ.get("EMBEDFLOW_PIPELINE", str(HERE / "daily.yaml"))
WORKDIR = os.environ.get("EMBEDFLOW_WORKDIR", str(HERE.parent.parent))
SHARDS = int(os.environ.get("EMBEDFLOW_SHARDS", "3"))
BACKFILL = os.environ.get("EMBEDFLOW_BACKFILL_PIPELINE", str(HERE / "backfill.yaml"))

PARTIAL = 3
INVALID = 2


def embedflow_run(
    pipeline: str, day: str, shard: str | None = None, env: dict | None = None, extra: list[str] | None = None
) -> dict:
    """Runs `embedflow run` for `day` (and `shard`), streaming its log into the task's log;
    returns the summary for XCom, or raises with embedflow's error line."""
    exe = shutil.which("embedflow")
    if exe is None:
        raise AirflowFailException("embedflow is not on the PATH: pip install the embedflow wheel")
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(tmp) / "summary.json"
        cmd = [exe, "run", pipeline, "--no-progress", "--summary-json", str(summary_path)]
        if shard is not None:
            cmd += ["--shard", shard]
        cmd += extra or []
        run_env = dict(os.environ, DS=day, **(env or {}))
        print("running:", " ".join(cmd), f"(DS={day})", flush=True)
        proc = subprocess.run(cmd, cwd=WORKDIR, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # embedflow's own lines (progress, warnings, the summary and any `error:` line).
        print(proc.stdout, flush=True)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if proc.returncode == 0:
        return summary
    error = next((l for l in proc.stdout.splitlines() if l.startswith("error:")), f"exit code {proc.returncode}")
    if proc.returncode == PARTIAL:
        raise AirflowFailException(
            f"embedflow wrote only part of the rows: {error}; the rest are in the dead-letter file "
            f"{summary and summary.get('dead_letter')}; send them with "
            f"`embedflow replay FILE --pipeline {pipeline}` once the index is back"
        )
    if proc.returncode == INVALID:
        raise AirflowFailException(f"embedflow: the pipeline or its destination is invalid: {error}")
    raise AirflowException(f"embedflow failed ({proc.returncode}): {error}")


# Exit code 1 (a transient failure: an unreachable store or index) is retried.
DEFAULTS = {
    "retries": int(os.environ.get("EMBEDFLOW_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("EMBEDFLOW_RETRY_DELAY_SECS", "300"))),
}
# Both DAGs run once a day, from the same start, with the same retries.
SCHEDULE = {
    "schedule": "@daily",
    "start_date": datetime(2026, 11, 1),
    "catchup": False,
    "default_args": DEFAULTS,
    "tags": ["embedflow"],
}


@dag(dag_id="embedflow_daily", **SCHEDULE)
def embedflow_daily():
    @task(task_id="embed")
    def embed() -> dict:
        return embedflow_run(PIPELINE, get_current_context()["ds"])

    embed()


@dag(dag_id="embedflow_sharded", **SCHEDULE)
def embedflow_sharded():
    """One mapped task per shard: each embeds the rows whose id hashes to it, with no
    coordinator; a Parquet output gets one part per shard."""

    @task(task_id="embed_shard")
    def embed_shard(shard: str) -> dict:
        # The shards' parts go to a folder of their own, beside the daily DAG's output.
        return embedflow_run(
            PIPELINE, get_current_context()["ds"], shard, env={"EMBEDFLOW_OUT": "out/airflow-sharded"}
        )

    @task(task_id="total")
    def total(summaries: list[dict]) -> dict:
        return {
            "rows_written": sum(s["rows_written"] for s in summaries),
            "shards": len(summaries),
        }

    total(embed_shard.expand(shard=[f"{i}/{SHARDS}" for i in range(SHARDS)]))


@dag(dag_id="embedflow_backfill", **{**SCHEDULE, "schedule": None})
def embedflow_backfill():
    """A first load through Pinecone's bulk import: write the files and start the import, then
    wait for it in a task of its own."""

    @task(task_id="start_import")
    def start_import() -> dict:
        summary = embedflow_run(
            BACKFILL, get_current_context()["ds"], extra=["--set", "sink.pinecone.import.wait=false"]
        )
        if not summary.get("import_id"):
            raise AirflowFailException(f"the run started no import: {summary.get('output')}")
        return summary

    @task(task_id="wait_import")
    def wait_import(summary: dict) -> dict:
        exe = shutil.which("embedflow")
        if exe is None:
            raise AirflowFailException("embedflow is not on the PATH: pip install the embedflow wheel")
        cmd = [exe, "import", "wait", summary["import_id"], "--pipeline", BACKFILL]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=WORKDIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        print(proc.stderr, flush=True)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        error = next((l for l in proc.stderr.splitlines() if l.startswith("error:")), f"exit code {proc.returncode}")
        # A failed or cancelled import is final: re-run the DAG to write and import again.
        raise AirflowFailException(f"the Pinecone import did not complete: {error}")

    wait_import(start_import())


embedflow_daily()
embedflow_sharded()
embedflow_backfill()
