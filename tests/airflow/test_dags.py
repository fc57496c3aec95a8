"""The example DAGs on a real Airflow: `airflow db migrate`, then `airflow dags test` of the
daily DAG, the sharded (mapped) DAG, a broken pipeline and a partial run (exit code 3), checking
task states, XCom and outputs in Airflow's own database and on disk.

Run by scripts/test-airflow.sh, with the Python of a venv holding Airflow and the embedflow
wheel, and these variables: AIRFLOW_HOME (an empty folder), EMBEDFLOW_HOME (with the model set
up), PINECONE_TEST_SERVER (the project's Pinecone test server binary), REPO.
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(os.environ["REPO"])
HOME = Path(os.environ["AIRFLOW_HOME"])
WORK = HOME / "work"
DAY = "2026-11-28"


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


class Command:
    """An airflow command started in the background, with `home` as AIRFLOW_HOME; its output
    goes to a file there (a pipe would stall a command while another is awaited)."""

    def __init__(self, *args, home=HOME, extra_env=None):
        env = dict(os.environ, AIRFLOW_HOME=str(home), **(extra_env or {}))
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
        self.what = " ".join(args)
        self.log = home / f"{args[0]}-{args[1]}.log"
        self.started = time.time()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(["airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, expect_ok=True):
        """Waits for the command; returns its output (stdout and stderr)."""
        code = self.proc.wait()
        output = self.log.read_text()
        print(f"airflow {self.what}: exit {code} in {time.time() - self.started:.1f} s")
        if expect_ok and code != 0:
            print(output[-6000:], file=sys.stderr)
            sys.exit(1)
        return output


def run_id(db, dag_id, day):
    """The run of `dag_id` whose logical date is `day` (`dags test` names runs by the clock)."""
    row = db.execute(
        "SELECT run_id FROM dag_run WHERE dag_id = ? AND substr(logical_date, 1, 10) = ?",
        (dag_id, day),
    ).fetchone()
    check(row is not None, f"{dag_id} has a run for {day}")
    return row[0]


def task_states(home, dag_id, day):
    db = sqlite3.connect(home / "airflow.db")
    return db.execute(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
        (dag_id, run_id(db, dag_id, day)),
    ).fetchall()


def xcom(home, dag_id, task_id, day, map_index=-1):
    db = sqlite3.connect(home / "airflow.db")
    row = db.execute(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' AND map_index = ? AND run_id = ?",
        (dag_id, task_id, map_index, run_id(db, dag_id, day)),
    ).fetchone()
    check(row is not None, f"{dag_id}.{task_id}[{map_index}] pushed an XCom")
    value = row[0]
    value = value.decode() if isinstance(value, bytes) else value
    value = json.loads(value)
    # Airflow 3 may store the serialized form; unwrap a JSON string once more.
    return json.loads(value) if isinstance(value, str) else value


def parquet_rows(path):
    out = subprocess.run(
        ["embedflow", "sql", "--format", "json", "--table", f"t={path}", "SELECT count(*) AS n FROM t"],
        stdout=subprocess.PIPE, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["n"]


def wait_for_port(port):
    """Waits until something listens on 127.0.0.1:`port` (the Pinecone test server)."""
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    check(False, f"the Pinecone test server listens on port {port}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    (WORK / "data").mkdir(parents=True)
    # The example pipelines read data/sample.parquet; a tenth of the bundled sample (every
    # tenth paragraph, written by embedflow's own SQL) keeps the test quick: the DAGs' behaviour
    # does not depend on the volume, and three shards still get about 100 rows each.
    subprocess.run(
        ["embedflow", "sql", "--quiet", "--allow-writes", "--table", f"t={REPO / 'data' / 'sample.parquet'}",
         "COPY (SELECT id, chapter, section, body, url FROM "
         "(SELECT *, row_number() OVER (ORDER BY id) AS n FROM t) WHERE n % 10 = 1 ORDER BY id) "
         f"TO '{WORK / 'data' / 'sample.parquet'}' STORED AS PARQUET"],
        stdout=subprocess.DEVNULL, check=True,
    )
    rows = parquet_rows(WORK / "data" / "sample.parquet")
    check(300 < rows < 320, f"a tenth of the sample: {rows} rows")
    os.environ.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "examples" / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        EMBEDFLOW_WORKDIR=str(WORK),
        EMBEDFLOW_RETRY_DELAY_SECS="1",
    )
    Command("db", "migrate").wait()

    # Four independent DAG runs at once, each in a home of its own holding a copy of the
    # migrated database (Airflow's SQLite database takes one writer at a time): `airflow dags
    # test` is mostly Python starting up and parsing, one core each.
    def home_for(name):
        home = HOME / "runs" / name
        home.mkdir(parents=True)
        shutil.copy(HOME / "airflow.db", home / "airflow.db")
        return home

    # A broken pipeline and a partial run (every upsert refused by a Pinecone test server).
    broken = WORK / "broken.yaml"
    broken.write_text((REPO / "examples" / "airflow" / "daily.yaml").read_text().replace("body AS text", "bdy AS text"))
    port = free_port()
    server = subprocess.Popen(
        [os.environ["PINECONE_TEST_SERVER"], "--port", str(port), "--api-key", "dev", "--index", "docs:384",
         "--rate-503", "1.0", "--fault-path", "/vectors/upsert"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    partial = WORK / "partial.yaml"
    partial.write_text(
        "source:\n  tables:\n    docs: { path: data/sample.parquet }\n"
        "  sql: SELECT id, body AS text FROM docs LIMIT 40\n"
        "embed:\n  model: all-MiniLM-L6-v2\n  id: id\n"
        f"sink:\n  pinecone:\n    index: docs\n    controller: http://127.0.0.1:{port}\n"
        "    max_retries: 1\n    dead_letter: failed/${DS}.jsonl\n"
    )
    runs = {}
    try:
        wait_for_port(port)
        homes = {name: home_for(name) for name in ["daily", "sharded", "broken", "partial"]}
        runs = {
            "daily": Command("dags", "test", "embedflow_daily", DAY, home=homes["daily"]),
            "sharded": Command("dags", "test", "embedflow_sharded", DAY, home=homes["sharded"]),
            "broken": Command(
                "dags", "test", "embedflow_daily", "2026-11-27", home=homes["broken"],
                extra_env={"EMBEDFLOW_PIPELINE": str(broken)},
            ),
            "partial": Command(
                "dags", "test", "embedflow_daily", "2026-11-26", home=homes["partial"],
                extra_env={"EMBEDFLOW_PIPELINE": str(partial), "PINECONE_API_KEY": "dev"},
            ),
        }
        outputs = {
            "daily": runs["daily"].wait(),
            "sharded": runs["sharded"].wait(),
            "broken": runs["broken"].wait(expect_ok=False),
            "partial": runs["partial"].wait(expect_ok=False),
        }
    finally:
        # A failed wait leaves no DAG run or server behind.
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.terminate()
        server.terminate()

    # The daily DAG: one task, the summary in XCom, the day in the output's path and rows.
    home = homes["daily"]
    states = task_states(home, "embedflow_daily", DAY)
    check(states == [("embed", -1, "success")], f"daily: task states {states}")
    summary = xcom(home, "embedflow_daily", "embed", DAY)
    check(summary["rows_written"] == rows, f"daily: XCom summary rows_written {summary['rows_written']}")
    out = WORK / "out" / "airflow" / DAY / "part-0.parquet"
    check(out.is_file() and parquet_rows(out) == rows, f"daily: output {out} holds {rows} rows")

    # The mapped DAG: one task per shard, the parts together the whole table.
    home = homes["sharded"]
    states = task_states(home, "embedflow_sharded", DAY)
    check(
        states == [("embed_shard", 0, "success"), ("embed_shard", 1, "success"), ("embed_shard", 2, "success"), ("total", -1, "success")],
        f"sharded: task states {states}",
    )
    total = xcom(home, "embedflow_sharded", "total", DAY)
    check(total == {"rows_written": rows, "shards": 3}, f"sharded: XCom total {total}")
    parts = [WORK / "out" / "airflow-sharded" / DAY / f"part-{i}.parquet" for i in range(3)]
    check(sum(parquet_rows(p) for p in parts) == rows, "sharded: the three parts hold every row once")

    # The broken pipeline: a failed task whose log has embedflow's error line.
    output = outputs["broken"]
    states = task_states(homes["broken"], "embedflow_daily", "2026-11-27")
    check(states == [("embed", -1, "failed")], f"broken: task states {states}")
    check(output.count("running: ") == 3, "broken: exit code 1 is retried by Airflow (2 retries)")
    check("error:" in output and "bdy" in output, "broken: the task log has embedflow's error line naming the column")

    # The partial run: exit code 3, a failed task naming the dead-letter file.
    output = outputs["partial"]
    states = task_states(homes["partial"], "embedflow_daily", "2026-11-26")
    check(states == [("embed", -1, "failed")], f"partial: task states {states}")
    check("dead-letter file failed/2026-11-26.jsonl" in output, "partial: the task log names the dead-letter file")
    check(output.count("running: ") == 1, "partial: exit code 3 is not retried (replay the file instead)")
    check((WORK / "failed" / "2026-11-26.jsonl").is_file(), "partial: the dead-letter file exists")
    print("airflow: all checks passed")


if __name__ == "__main__":
    main()
