"""Jobs: recipes (and evaluations) queued on the controller and run in worker processes.

``JobStore`` (store.py) keeps the jobs table; ``JobManager`` (manager.py) runs the queue;
files.py lays out a job's directory and receives its uploads; specs.py is where the queue
meets the pipeline's recipe format.
"""

from controller.jobs.files import MAX_FILES_BYTES, Event, EventLog, JobFiles, Upload
from controller.jobs.manager import JobManager, ShuttingDown, Submission
from controller.jobs.store import ACTIVE, STATUSES, TERMINAL, JobRecord, JobStore, check_job_id

__all__ = ["ACTIVE", "MAX_FILES_BYTES", "STATUSES", "TERMINAL", "Event", "EventLog", "JobFiles",
           "JobManager", "JobRecord", "JobStore", "ShuttingDown", "Submission", "Upload",
           "check_job_id"]
