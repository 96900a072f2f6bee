"""Slide jobs: persisted in SQLite under --state-dir, run one at a time by a worker thread.

A job is written (and an upload fsync'ed to disk) before its id is returned, so a submitted slide
survives a crash. On start, jobs left `running` by a crash or `kill -9` go back to `queued` and run
again from the start (their outputs are only trusted once report.json exists); finished results
stay. SIGTERM stops the worker between batches and leaves the job `queued`.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from ..config import PredictConfig
from ..slide.pipeline import Interrupted, predict_slide
from ..slide.reader import SlideError
from .security import Refused, inside

STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")
_SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, state TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL, uploaded INTEGER NOT NULL,
  created REAL NOT NULL, updated REAL NOT NULL, progress REAL NOT NULL DEFAULT 0, result TEXT, error TEXT, mpp REAL)"""


class JobStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uploads, self.outputs = self.dir / "uploads", self.dir / "jobs"
        self.uploads.mkdir(exist_ok=True)
        self.outputs.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        # Reads go through a second connection: under WAL they never wait for a write's fsync
        # (synchronous=FULL), so reading a job's state on the event loop stays sub-millisecond.
        self._reader = sqlite3.connect(self.dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()
        self._db.execute("UPDATE jobs SET state='cancelled' WHERE state='cancelling'")  # cancelled, then a crash
        self.resumed = self._db.execute("UPDATE jobs SET state='queued', progress=0 WHERE state='running'").rowcount
        self.removed_uploads = self._remove_orphan_uploads()

    def _remove_orphan_uploads(self) -> int:
        """Upload folders no job refers to: an upload cut short by a crash or `kill -9` (its job is
        written only once the file is on disk)."""
        known = {row[0] for row in self._db.execute("SELECT id FROM jobs WHERE uploaded=1")}
        orphans = [d for d in self.uploads.iterdir() if d.name not in known]
        for d in orphans:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
        return len(orphans)

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def add(self, job_id: str, source: Path, name: str, uploaded: bool, mpp: float | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, state, source, name, uploaded, created, updated, mpp) "
                             "VALUES (?,?,?,?,?,?,?,?)", (job_id, "queued", str(source), name, int(uploaded), now, now, mpp))

    _COLUMNS = ("id", "state", "name", "created", "updated", "progress", "result", "error", "source")

    def _job(self, row) -> dict:
        job = dict(zip(self._COLUMNS, row))
        job["result"] = json.loads(job["result"]) if job["result"] else None
        return job

    def get(self, job_id: str) -> dict | None:
        with self._read_lock:
            row = self._reader.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def recent(self, limit: int = 500) -> list[dict]:
        """The newest `limit` jobs, newest first."""
        with self._read_lock:
            rows = self._reader.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs ORDER BY created DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._read_lock:
            rows = self._reader.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | dict(rows)

    def claim(self) -> tuple[str, Path, float | None] | None:
        with self._lock:
            row = self._db.execute("SELECT id, source, mpp FROM jobs WHERE state='queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET state='running', updated=? WHERE id=?", (time.time(), row[0]))
        return row[0], Path(row[1]), row[2]

    def cancel(self, job_id: str) -> str | None:
        """A queued job is cancelled at once; a running one is marked `cancelling` and its runner stops
        at the next batch. Returns the job's state after the call (None: no such job)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            new = {"queued": "cancelled", "running": "cancelling"}.get(row[0], row[0])
            if new != row[0]:
                self._db.execute("UPDATE jobs SET state=?, updated=? WHERE id=?", (new, time.time(), job_id))
        return new

    def state(self, job_id: str) -> str | None:
        with self._read_lock:
            row = self._reader.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))

    def out_dir(self, job_id: str) -> Path:
        return self.outputs / job_id


class JobRunner(threading.Thread):
    """Takes queued jobs one at a time and runs the whole-slide pipeline on them."""

    def __init__(self, store: JobStore, engine, cfg: PredictConfig, log, cluster=None, roots=()):
        super().__init__(name="saganet-jobs", daemon=True)
        self.store, self.engine, self.cfg, self.log, self.cluster = store, engine, cfg, log, cluster
        self.roots = list(roots)  # where a job's slide may be: the slide root and the uploads folder
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            claimed = self.store.claim()
            if claimed is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self._run_one(*claimed)

    def _run_one(self, job_id: str, source: Path, mpp: float | None) -> None:
        def progress(done, total):
            self.store.update(job_id, progress=round(done / total, 4) if total else 1.0)

        def should_stop() -> bool:  # a shutdown, or DELETE /v1/slides/{id}
            return self.stopping.is_set() or self.store.state(job_id) == "cancelling"

        try:
            # Resolved again now: a slide swapped for a link out of the root since it was submitted is
            # refused, and the job reads the resolved file, not the link.
            source = inside(source, self.roots, f"the slide of job {job_id} ({source.name})")
            cfg = replace(self.cfg, mpp=mpp)
            if self.cluster is not None:  # tiles classified by the cluster's workers
                from ..slide.cluster import predict_slide_on

                report = predict_slide_on(self.cluster, self.engine, source, self.store.out_dir(job_id), cfg,
                                          on_progress=progress, should_stop=should_stop)
            else:
                report = predict_slide(self.engine, source, self.store.out_dir(job_id), cfg,
                                       on_progress=progress, should_stop=should_stop)
        except Interrupted:
            if self.store.state(job_id) == "cancelling":
                self.store.update(job_id, state="cancelled")
                self.log(f"job {job_id}: cancelled")
            else:
                self.store.update(job_id, state="queued", progress=0)
                self.log(f"job {job_id}: stopped by shutdown; it resumes when the server starts again")
        except Refused as e:
            self.store.update(job_id, state="failed", error=e.message)
            self.log(f"job {job_id}: refused: {e.message}")
        except (SlideError, OSError, ValueError) as e:
            self.store.update(job_id, state="failed", error=str(e))
            self.log(f"job {job_id}: failed: {e}")
        except Exception as e:  # an unexpected error fails the job, never the worker
            self.store.update(job_id, state="failed", error=f"{type(e).__name__}: {e}")
            self.log(f"job {job_id}: failed unexpectedly: {type(e).__name__}: {e}")
        else:
            self.store.update(job_id, state="done", progress=1.0,
                              result={"call": report["call"], "tiles": report["tiles"], "mpp": report["mpp"],
                                      "seconds": report["seconds"]})
            self.log(f"job {job_id}: done")
