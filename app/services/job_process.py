"""Is a background job's process still there? One answer for retraining and allocation jobs.

A job row records the pid of its process (`app/jobs/runner.py`). The service closes a job whose
process died without reporting (crash, OOM kill, host restart) the next time anyone reads it,
so one dead process never blocks the queue. The pid check assumes one host (local backend).
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

# A queued job whose process was never launched (service died first) is given up after this.
LAUNCH_GRACE = timedelta(seconds=120)


def process_alive(pid: int, job_id: uuid.UUID) -> bool:
    """Is `pid` still this job's process? A reused pid running something else counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else: cannot tell more without /proc
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return True  # no procfs: the signal check above is all we have
    return state != "Z" and str(job_id) in cmdline


def dead_reason(
    pid: int | None, job_id: uuid.UUID, created_at: datetime, now: datetime
) -> str | None:
    """Why an in-progress job counts as dead, or None while its process may still report."""
    if pid is None:
        return "the job process never started" if now - created_at > LAUNCH_GRACE else None
    if process_alive(pid, job_id):
        return None
    return f"the job process (pid {pid}) ended without reporting a result"
