"""The state DB's schema: every version's statements, applied in order by
:class:`upp_grid.grid.state.StateDB` (the version history is in that module's docstring)."""

from __future__ import annotations

_V1 = (
    """CREATE TABLE IF NOT EXISTS submissions (
        tag TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        config_path TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        user TEXT NOT NULL,
        sandbox TEXT NOT NULL,
        work_dir TEXT,
        store_dir TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tasks (
        id INTEGER PRIMARY KEY,
        tag TEXT NOT NULL REFERENCES submissions(tag),
        container TEXT NOT NULL,
        samples TEXT NOT NULL,
        out_ds TEXT NOT NULL,
        outputs TEXT NOT NULL,
        command TEXT NOT NULL,
        status TEXT NOT NULL,
        backend_status TEXT,
        jedi_task_id INTEGER,
        n_files INTEGER,
        n_files_finished INTEGER,
        n_files_failed INTEGER,
        attempt INTEGER NOT NULL DEFAULT 1,
        task_params TEXT,
        submitted_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (tag, container))""",
    """CREATE TABLE IF NOT EXISTS jobs (
        task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        job_index INTEGER NOT NULL,
        input TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error TEXT,
        log_path TEXT,
        pid INTEGER,
        proc_start TEXT,
        started_at TEXT,
        finished_at TEXT,
        PRIMARY KEY (task_id, job_index))""",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        tag TEXT NOT NULL,
        container TEXT,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT)""",
    "CREATE INDEX IF NOT EXISTS events_by_tag ON events (tag, id)",
)
# IF NOT EXISTS: a file written by an older download may have the table already, same columns
_V2 = (
    """CREATE TABLE IF NOT EXISTS download_files (
        tag TEXT NOT NULL,
        did TEXT NOT NULL,
        container TEXT NOT NULL,
        out_ds TEXT NOT NULL,
        sample TEXT NOT NULL,
        output TEXT NOT NULL,
        serial TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        adler32 TEXT NOT NULL,
        dest TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('listed', 'verified', 'failed')),
        fetches INTEGER NOT NULL DEFAULT 0,
        mtime_ns INTEGER,
        error TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (tag, did))""",
    "CREATE INDEX IF NOT EXISTS download_files_dest ON download_files (tag, dest)",
    "DROP TABLE IF EXISTS download_meta",
)
_V3 = (
    """CREATE TABLE IF NOT EXISTS task_attempts (
        tag TEXT NOT NULL,
        container TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        out_ds TEXT NOT NULL,
        jedi_task_id INTEGER,
        config_hash TEXT,
        runtime TEXT,
        outcome TEXT NOT NULL,
        detail TEXT,
        at TEXT NOT NULL,
        PRIMARY KEY (tag, container, attempt))""",
    "ALTER TABLE tasks ADD COLUMN runtime TEXT",
    "ALTER TABLE tasks ADD COLUMN error_dialog TEXT",
    """INSERT OR IGNORE INTO task_attempts (tag, container, attempt, out_ds, jedi_task_id,
           config_hash, runtime, outcome, detail, at)
       SELECT t.tag, t.container, t.attempt, t.out_ds, t.jedi_task_id, s.config_hash, NULL,
           'submitted', 'recorded before schema 3', t.submitted_at
       FROM tasks t JOIN submissions s ON s.tag = t.tag""",
)
_V4 = (
    # the job's platform and container image as columns of their own, so a reviewer (or a
    # query) sees what every task and every attempt ran on without parsing the runtime JSON
    "ALTER TABLE tasks ADD COLUMN platform TEXT",
    "ALTER TABLE tasks ADD COLUMN container_image TEXT",
    "ALTER TABLE task_attempts ADD COLUMN platform TEXT",
    "ALTER TABLE task_attempts ADD COLUMN container_image TEXT",
    # the sha256 of the sandbox a tag was submitted with: the local backend runs nothing from
    # a tarball that differs from it (replaced after submit)
    "ALTER TABLE submissions ADD COLUMN sandbox_sha256 TEXT",
    # replication rules made by `upp-grid replicate`, one per output container and RSE
    """CREATE TABLE IF NOT EXISTS rules (
        tag TEXT NOT NULL,
        container TEXT NOT NULL,
        rse TEXT NOT NULL,
        rule_id TEXT NOT NULL,
        lifetime_days REAL,
        created INTEGER NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (tag, container, rse))""",
    # the files of each input container as rucio listed them at download: what every job's
    # provenance must cover (kept for `download --no-download`)
    """CREATE TABLE IF NOT EXISTS input_files (
        tag TEXT NOT NULL,
        in_ds TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (tag, in_ds, name))""",
    """UPDATE tasks SET platform = json_extract(runtime, '$.platform'),
           container_image = json_extract(runtime, '$.image') WHERE runtime IS NOT NULL""",
    """UPDATE task_attempts SET platform = json_extract(runtime, '$.platform'),
           container_image = json_extract(runtime, '$.image') WHERE runtime IS NOT NULL""",
)
#: ``MIGRATIONS[v]``: the statements that take a file from version ``v - 1`` to ``v``.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}
SCHEMA_VERSION = max(MIGRATIONS)
