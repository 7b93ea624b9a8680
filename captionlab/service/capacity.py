"""How many evaluations and trainings may run at once: one cap for both, a queue for the rest.

    max_active()        # $CAPTIONLAB_MAX_ACTIVE_JOBS, else 2
    slots()             # Slots(cap, trainings, evaluations, waiting): what is busy, what waits
    start_waiting()     # start the oldest waiting jobs and runs while a slot is free (the app's timers call it)

Each evaluation or training is its own process of several GB (six API calls at once took 3.3 GB on the embedded
model); without a cap, whoever can reach the app decides how many run. What the app starts beyond the cap
waits, oldest first, as `queued` with a message saying so. A run launched from a terminal is never held back
(the user there decides) but it takes a slot while it lives.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

MAX_ACTIVE_ENV = "CAPTIONLAB_MAX_ACTIVE_JOBS"
DEFAULT_MAX_ACTIVE = 2
# the app's timers (Train and Benchmarks tabs) and its Start buttons run in threads of one process: one at a time
# counts the slots and starts what fits, so no two of them start the same waiting job or overfill the cap
starting = threading.RLock()


@dataclass(frozen=True)
class Slots:
    cap: int
    trainings: int
    evaluations: int
    waiting: int

    @property
    def busy(self) -> int:
        return self.trainings + self.evaluations

    @property
    def free(self) -> int:
        return max(0, self.cap - self.busy)

    def describe(self) -> str:
        waiting = f"; {self.waiting} waiting for a slot" if self.waiting else ""
        return (f"{self.busy} of {self.cap} slots busy ({self.trainings} training, {self.evaluations} evaluation)"
                f"{waiting}; the cap is set by ${MAX_ACTIVE_ENV}")


def max_active() -> int:
    """The cap from the environment (a whole number, at least 1); a bad value is an error that says so."""
    text = os.environ.get(MAX_ACTIVE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_ACTIVE
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${MAX_ACTIVE_ENV} must be a whole number of at least 1, not {text!r}")
    return int(text)


def slots() -> Slots:
    from captionlab.service import jobs
    from captionlab.training import launcher

    launcher.refresh_runs()
    runs = launcher.runs_db.list_runs()
    trainings = sum(1 for row in runs if row["backend"] == "local" and row["state"] in launcher.ACTIVE_STATES
                    and not launcher.is_waiting(row))
    waiting_runs = sum(1 for row in runs if launcher.is_waiting(row))
    states = [job["state"] for job in jobs.job_records()]
    return Slots(max_active(), trainings, states.count("running"), waiting_runs + states.count("queued"))


def start_waiting() -> list[str]:
    """Start what waits, oldest first, while slots are free; returns the ids started."""
    from captionlab.service import jobs
    from captionlab.training import launcher

    with starting:
        return _start_waiting(jobs, launcher)


def _start_waiting(jobs, launcher) -> list[str]:
    started = []
    free = slots().free
    waiting = [(job["created"], "job", job["job"]) for job in jobs.job_records() if job["state"] == "queued"]
    waiting += [(row["created_at"], "run", row["run_id"]) for row in launcher.runs_db.list_runs()
                if launcher.is_waiting(row)]
    for _, kind, name in sorted(waiting)[:free]:
        try:
            if kind == "job":
                jobs.start_job(name)
            else:
                launcher.start_waiting_run(name)
        except (OSError, launcher.LaunchError):
            continue  # the job or run records why; the next one may still start
        started.append(name)
    return started
