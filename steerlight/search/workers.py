"""Several search workers on one Optuna study: storage, heartbeats, a shared lock, a trial budget.

Every `python -m steerlight.search` process is a worker. Workers on one machine may share the
default SQLite file; workers on several machines share a PostgreSQL URL. Optuna does the
sharing (trials, sampling, pruning); this module adds what it leaves to the caller:

- heartbeats, so the RUNNING trial of a worker that died is failed and retried with the same
  parameters instead of staying RUNNING forever;
- a lock held by one worker at a time (a PostgreSQL advisory lock, or a file lock beside a
  SQLite database), around the few steps that must not interleave: registering a worker,
  enqueueing the baseline, and checking the budget just before Optuna creates a trial;
- `--max-trials`, a budget for the whole study that all workers together fill exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from steerlight.errors import SteerlightError

log = logging.getLogger("steerlight.search")

MAX_RETRY = 3
"""How often the trial of a dead worker is retried with the same parameters."""


def worker_id() -> str:
    """This process as the study records it: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_database_error(err: BaseException) -> bool:
    """SQLAlchemy and DB-API errors (an unreachable server, a refused login, a locked file)."""
    import optuna

    if isinstance(err, optuna.exceptions.StorageInternalError):
        return True
    return type(err).__module__.split(".")[0] in {"sqlalchemy", "psycopg2", "psycopg", "sqlite3"}


def open_storage(url: str, heartbeat_interval: int):
    """An Optuna RDBStorage for `url` whose trials send heartbeats.

    A RUNNING trial without a heartbeat for twice `heartbeat_interval` seconds belongs to a
    worker that died: the next worker to start a trial marks it FAIL and enqueues a copy with
    the same parameters (at most `MAX_RETRY` times).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if heartbeat_interval < 1:
        raise SteerlightError(
            f"--heartbeat-interval {heartbeat_interval} is invalid: use a whole number of "
            "seconds, 1 or more"
        )
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise SteerlightError(
            f"--storage {url!r} is not a database URL: use e.g. sqlite:///study.db or "
            "postgresql+psycopg2://user:password@host/database"
        ) from None
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = 60  # heartbeats of several workers write to one file
        _check_writable(make_url(url).database)
    elif backend == "postgresql":
        connect_args["connect_timeout"] = 10  # an unreachable host fails fast, not in minutes
    try:
        return _rdb_storage(url, connect_args, heartbeat_interval)
    except ImportError as err:
        raise SteerlightError(
            f"cannot open Optuna storage {_redact(url)!r}: its database driver is not installed "
            f"({err}); for PostgreSQL: pip install psycopg2-binary"
        ) from None
    except Exception as err:
        if not _is_database_error(err):
            raise
        reason = " ".join(str(getattr(err, "orig", None) or err).split())
        raise SteerlightError(
            f"cannot open Optuna storage {_redact(url)!r}: {reason[:300]}; check that the "
            "database server runs and the URL's host, port, user and database are right"
        ) from None


def _check_writable(database: str | None) -> None:
    """A study file that exists must be writable: SQLite would only fail at the first write,
    deep inside Optuna, with "attempt to write a readonly database"."""
    if not database or database == ":memory:" or not os.path.exists(database):
        return
    try:
        with open(database, "ab"):
            pass
    except OSError as err:
        raise SteerlightError(
            f"study file {database} is read-only ({err.strerror}): make it writable, or pass "
            "another --root or --storage for a new study"
        ) from None


def _rdb_storage(url: str, connect_args: dict[str, Any], heartbeat_interval: int, tries: int = 5):
    """RDBStorage, tried again when workers starting together race to create Optuna's tables."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, tries + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": connect_args},
                    heartbeat_interval=heartbeat_interval,
                    **_retry_callback(),
                )
        # e.g. PostgreSQL's duplicate key on "pg_type_typname_nsp_index": another worker
        # created the schema between this one's check and its CREATE
        except (IntegrityError, ProgrammingError):
            if attempt == tries:
                raise
            time.sleep(random.uniform(0.2, 1.0))
    raise AssertionError("unreachable")


def _retry_callback() -> dict[str, Any]:
    """RDBStorage's argument that re-enqueues a dead worker's trial (renamed in Optuna 4.9)."""
    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        return {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(MAX_RETRY)}
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback

        return {"failed_trial_callback": RetryFailedTrialCallback(MAX_RETRY)}


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


class StudyLock:
    """A lock shared by every worker of one study, held for milliseconds at a time.

    PostgreSQL: a session advisory lock (released by the server if the worker dies). SQLite:
    an flock on a file beside the database (released by the kernel if the worker dies). Other
    databases get no lock: a warning says that `--max-trials` is then approximate.
    """

    def __init__(self, storage, study_name: str) -> None:
        self.backend = storage.engine.url.get_backend_name()
        self.held = False
        self._key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big") >> 1
        self._conn = None
        self._file = None
        if self.backend == "postgresql":
            self._conn = storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        elif self.backend == "sqlite":
            database = storage.engine.url.database
            if database and database != ":memory:":
                self._file = open(f"{database}.lock", "a+b")  # noqa: SIM115 (held for the run)

    @property
    def exact(self) -> bool:
        """Whether the lock really excludes other workers."""
        return self._conn is not None or self._file is not None

    def acquire(self) -> None:
        if self.held:
            return
        if self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        if self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StudyWorker:
    """This process as one worker of a study: the study lock, its place among the workers and
    its budget gate. `with` it (or an error while it joins) closes the lock."""

    def __init__(self, storage, study_name: str) -> None:
        self.name = study_name
        self.lock = StudyLock(storage, study_name)
        self.gate: TrialGate | None = None

    def join(self, study, seed: int, check: Callable[[Any], None]) -> tuple[int, int]:
        """Under the lock, `check(study)` (a resumed study's settings) and FAIL the trials of
        this machine's dead workers; then record this worker: its index and sampler seed."""
        with self.lock:
            check(study)
            for number in fail_orphaned_trials(study):
                log.info(f"[{self.name}] trial {number}: its worker is gone, marked FAIL")
        return register_worker(study, self.lock, seed)

    def enqueue_once(self, study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
        """Enqueue `params` in an empty study: one baseline, however many workers start on it."""
        with self.lock:
            if not study.get_trials(deepcopy=False):
                study.enqueue_trial(params, user_attrs=user_attrs)

    def open_gate(self, max_trials: int | None) -> TrialGate:
        """The budget gate of this worker's trials (`TrialGate`)."""
        self.gate = TrialGate(self.lock, max_trials)
        return self.gate

    def close(self) -> None:
        self.lock.close()

    def __enter__(self) -> StudyWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_worker(study, lock: StudyLock, seed: int) -> tuple[int, int]:
    """Record this worker in the study and return its index and its sampler's seed.

    Workers (and resumed runs) of one study must not share a sampler seed: the same seed
    would draw the same configurations in every worker. Worker k seeds its sampler with
    `seed + k`, so a study run by one worker is still reproducible from `--seed`.
    """
    with lock:
        workers = list(study.user_attrs.get("workers", []))
        index = len(workers)
        workers.append(
            {
                "worker": worker_id(),
                "index": index,
                "seed": seed + index,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        study.set_user_attr("workers", workers)
    return index, seed + index


def counted_trials(study) -> int:
    """Trials that use up the study's budget: all of them, except the failed trials of dead
    workers that were retried (their retry, a WAITING or later trial, counts instead)."""
    trials = study.get_trials(deepcopy=False)
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.number not in replaced for t in trials)


def fail_orphaned_trials(study) -> list[int]:
    """FAIL (and retry, as for a stale heartbeat) the RUNNING trials of workers on this
    machine whose process is gone.

    A killed worker's trial is RUNNING until its heartbeat goes stale (two heartbeat
    intervals); a rerun on the same machine sees at once that the process is gone, so its
    trial ends as FAIL ("interrupted") instead of waiting, on every storage.
    """
    import optuna

    host = socket.gethostname()
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get("worker", ""))
        name, _, pid = owner.rpartition(":")
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            storage = study._storage  # Optuna's public Study API cannot touch another's trial
            storage.set_trial_user_attr(
                trial._trial_id, "error", f"interrupted: its worker (pid {pid}) is gone"
            )
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            retry = next(iter(_retry_callback().values()))
            retry(study, study._storage.get_trial(trial._trial_id))  # a WAITING copy
            orphans.append(trial.number)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fail_stale_trials(study) -> None:
    """Optuna's own check: RUNNING trials whose worker stopped sending heartbeats become FAIL
    and, through the storage's retry callback, a WAITING copy with the same parameters."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class TrialGate:
    """The budget check before each trial, atomic with Optuna's creation of that trial.

    `study.optimize` creates a trial (`study.ask`) right after the previous trial's callbacks,
    and then calls the objective. So the gate takes the study lock in `admit` (before the
    first trial, and as the last callback after each trial), and the objective calls
    `admitted` as its first step, once its trial exists. Two workers can therefore never both
    see room for one more trial and both start one. Without `max_trials` it only checks for
    stale trials and takes no lock.
    """

    def __init__(self, lock: StudyLock, max_trials: int | None) -> None:
        self.lock = lock
        self.max_trials = max_trials
        if max_trials is not None and not lock.exact:
            warnings.warn(
                f"no lock for {lock.backend} storage: workers running at the same time may "
                f"start a few more than --max-trials {max_trials} trials",
                stacklevel=2,
            )

    def admit(self, study) -> bool:
        """Whether another trial may start; if so the lock stays held until `admitted`."""
        import optuna

        if self.max_trials is None:
            return True
        self.lock.acquire()
        fail_stale_trials(study)  # a dead worker's trial is retried within the budget
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        # A WAITING trial (the baseline, a retry) is already counted: running it adds nothing.
        if waiting or counted_trials(study) < self.max_trials:
            return True
        self.lock.release()
        return False

    def admitted(self) -> None:
        """Called by the objective: Optuna created the trial, other workers may go on."""
        self.lock.release()

    def __call__(self, study, trial) -> None:
        """An `optimize` callback: stop this worker when the study's budget is spent."""
        if not self.admit(study):
            study.stop()
