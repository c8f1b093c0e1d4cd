"""Job routes: training, evaluation, push and pull as jobs, each in its own process.

``POST /admin/jobs`` queues one (checked first: a bad recipe is a 400 naming the field, not a
failed job); ``GET /admin/jobs`` and ``GET /admin/jobs/{id}`` read them; ``DELETE`` cancels one
(training stops at the next step with a checkpoint and registers nothing);
``GET /admin/jobs/{id}/events`` streams its progress as Server-Sent Events from the first event
(``event: progress``, the CLI's events) and ends with ``event: job``, the finished job. The queue
is the library's :class:`adapterhub.jobs.JobQueue`; jobs survive a client hanging up, and a
restarted server lists them.

These routes are the ``jobs`` route group (an admin key, or a key with ``routes: [jobs]``). A key
with an adapter allowlist may queue a job only over its adapters: a parent or ref outside the
list is the same 404 as an unknown one, a recipe ``name`` (or pull ``name``) outside it is 403
(:mod:`adapterhub_server.tenants`); such a key sees only the jobs it queued (another's job id is
the same 404 as an unknown id). Every job records the name of the key that queued it (``owner``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import StreamingResponse

from adapterhub.core.progress import EventFollower
from adapterhub.errors import JobNotFoundError
from adapterhub.jobs import JobQueue
from adapterhub.protocol import FINAL_JOB_STATES, JobInfo, JobList, JobRequest
from adapterhub_server.auth import Caller
from adapterhub_server.deps import JobsCaller
from adapterhub_server.schemas import ERROR_RESPONSES
from adapterhub_server.tenants import check_new_name, check_ref

router = APIRouter(tags=["jobs"], responses={**ERROR_RESPONSES, 403: ERROR_RESPONSES[401] | {
    "description": "A key without the jobs route group"}})
_POLL_S = 0.25


def get_jobs(request: Request) -> JobQueue:
    jobs: JobQueue = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobQueue, Depends(get_jobs)]


@router.post("/admin/jobs", status_code=201, response_model=JobInfo, summary="Queue a job")
async def submit(caller: JobsCaller, jobs: JobsDep, body: Annotated[JobRequest, Body()]) -> JobInfo:
    check = None if not caller.is_restricted else functools.partial(_check_name, caller)
    return await anyio.to_thread.run_sync(lambda: jobs.submit(body, check_names=check, owner=caller.name))


def _check_name(caller: Caller, name: str | None, registers: bool) -> None:
    """A ref a job reads outside the list is unknown (404); a name it registers is refused (403)."""
    if registers:
        check_new_name(caller, name, "name")
    elif name is not None:
        check_ref(caller, name)


@router.get("/admin/jobs", response_model=JobList, summary="Every job, newest first")
async def list_jobs(caller: JobsCaller, jobs: JobsDep) -> JobList:
    listed = await anyio.to_thread.run_sync(jobs.list)
    return JobList(jobs=[job for job in listed if _may_see(caller, job)])


@router.get("/admin/jobs/{job_id}", response_model=JobInfo, summary="One job")
async def get_job(caller: JobsCaller, jobs: JobsDep, job_id: str) -> JobInfo:
    return await anyio.to_thread.run_sync(_get, caller, jobs, job_id)


@router.delete("/admin/jobs/{job_id}", response_model=JobInfo, summary="Cancel a job")
async def cancel_job(caller: JobsCaller, jobs: JobsDep, job_id: str) -> JobInfo:
    def cancel() -> JobInfo:
        _get(caller, jobs, job_id)
        return jobs.cancel(job_id)

    return await anyio.to_thread.run_sync(cancel)


def _may_see(caller: Caller, job: JobInfo) -> bool:
    return not caller.is_restricted or job.owner == caller.name


def _get(caller: Caller, jobs: JobQueue, job_id: str) -> JobInfo:
    """The job, if ``caller`` may see it; else the same error as for an unknown id."""
    job = jobs.get(job_id)
    if not _may_see(caller, job):
        raise JobNotFoundError(f"no job {job_id!r}; GET /admin/jobs lists them")
    return job


@router.get("/admin/jobs/{job_id}/events", summary="A job's progress as Server-Sent Events",
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(caller: JobsCaller, jobs: JobsDep, job_id: str) -> StreamingResponse:
    await anyio.to_thread.run_sync(_get, caller, jobs, job_id)
    follower = EventFollower(jobs.events_file(job_id), from_start=True)  # an unknown id is a 404 here

    async def stream() -> AsyncIterator[str]:
        while True:
            job = await anyio.to_thread.run_sync(jobs.get, job_id)
            for event in await anyio.to_thread.run_sync(follower.read):
                yield f"event: progress\ndata: {json.dumps(event.to_dict(), separators=(',', ':'))}\n\n"
            if job.state in FINAL_JOB_STATES:  # everything it wrote is read: it wrote before it ended
                yield f"event: job\ndata: {job.model_dump_json()}\n\n"
                return
            await anyio.sleep(_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

