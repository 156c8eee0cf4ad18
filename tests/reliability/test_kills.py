"""compute SIGKILLed at each point of an attempt: before it uploads, after it uploaded but
before it completed the job, and after it completed the job but before it replied. Each
time the job ends completed exactly once, with one set of objects, the one it names."""

from __future__ import annotations

import uuid

import pytest
import urllib3

from shared.contracts import JobAccepted
from shared.dev.stack import wait_until
from tests.reliability.conftest import Figures
from tests.stack import Stack

POINTS = ("before_upload", "after_upload", "after_complete")
DAYS = {"before_upload": "2024-03-05", "after_upload": "2024-03-06", "after_complete": "2024-03-07"}


def kill_compute_at(stack: Stack, point: str) -> None:
    """Restart compute so that its next attempt kills it at `point`."""
    compute = stack.supervisor.services["compute"]
    compute.env["TEST_FAULT_KILL_AT"] = point
    stack.supervisor.restart("compute")


def submit(stack: Stack, day: str) -> uuid.UUID:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": day, "device_id": "phone1"}, retries=False
    )
    assert reply.status == 202, reply.data
    return JobAccepted.model_validate_json(reply.data).job.job_id


@pytest.mark.parametrize("point", POINTS)
def test_compute_killed_at(reliable_stack: Stack, point: str, score: Figures) -> None:
    stack = reliable_stack
    compute = stack.supervisor.services["compute"]
    kill_compute_at(stack, point)
    try:
        job_id = submit(stack, DAYS[point])
        assert compute.process is not None
        compute.process.wait(timeout=60)
    finally:
        del compute.env["TEST_FAULT_KILL_AT"]
    stack.supervisor.restart("compute")

    job = stack.wait_finished(job_id, timeout=90)
    assert job.status == "completed", job.error_message
    # Killed after completing, the job needs no second attempt; before, exactly one more.
    assert job.attempts == (1 if point == "after_complete" else 2)
    objects = [key for key in stack.objects() if str(job_id) in key]
    assert job.csv_key in objects
    folders = {key.rsplit("/", 1)[0] for key in objects}
    assert folders == {job.csv_key.rsplit("/", 1)[0]}, objects  # one object set: the job's
    score.jobs, score.lost, score.duplicates = 1, 0, len(folders) - 1
    score.note = f"{job.attempts} attempt(s), {len(objects)} objects"


def test_a_cancel_while_the_attempt_lies_killed_leaves_no_objects(
    reliable_stack: Stack, score: Figures
) -> None:
    """compute dies after uploading; the caller cancels meanwhile. The job stays cancelled
    (no later attempt completes it) and the dead attempt's objects are removed."""
    stack = reliable_stack
    compute = stack.supervisor.services["compute"]
    kill_compute_at(stack, "after_upload")
    try:
        job_id = submit(stack, "2024-03-08")
        assert compute.process is not None
        compute.process.wait(timeout=60)
    finally:
        del compute.env["TEST_FAULT_KILL_AT"]
    assert [key for key in stack.objects() if str(job_id) in key]  # it did upload
    cancel = urllib3.request("DELETE", f"{stack.url('submit')}/jobs/{job_id}", retries=False)
    assert cancel.status == 200, cancel.data
    stack.supervisor.restart("compute")
    # The broker retries the delivery the kill cut off; that one finds the job cancelled.
    wait_until(
        lambda: not [key for key in stack.objects() if str(job_id) in key],
        60,
        "the dead attempt's objects removed",
    )
    job = stack.job(job_id)
    assert (job.status, job.csv_key, job.attempts) == ("cancelled", None, 1)
    score.jobs, score.lost, score.duplicates = 1, 0, 0
    score.note = "cancelled, 0 objects left"
