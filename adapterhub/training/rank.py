"""One rank of a multi-process run: ``python -m adapterhub.training.rank JOB`` under torchrun.

The rank plans the launcher's run again from its job file (:class:`~.distributed.Job`), checks it
planned the same run, and trains it with :func:`~adapterhub.training.run.train_here`; its outcome
goes to ``outcome-rank<R>.json`` (see :mod:`adapterhub.training.distributed`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from adapterhub.core.progress import CancelToken, no_progress
from adapterhub.errors import AdapterHubError, TrainingCancelled, TrainingError
from adapterhub.training.distributed import CANCEL_FILE, Job, write_outcome
from adapterhub.training.run import TrainingContext, plan_run, train_here


def context_of(job: Job, local_rank: int) -> TrainingContext:
    """This rank's view of the launcher's hub: the same base, registry (from the environment the
    launcher set) and runs folder, on GPU ``local_rank`` when the launcher trains on CUDA."""
    from adapterhub.core.hardware import detect_platform
    from adapterhub.models.base import BaseInfo
    from adapterhub.registry import Registry

    device = f"cuda:{local_rank}" if job.device.startswith("cuda") else job.device
    platform = detect_platform(device=device, compute_dtype=job.compute_dtype, nf4=job.nf4)
    return TrainingContext(BaseInfo.read(Path(job.base)), Registry(), Path(job.runs), platform)


def run_rank(job_path: Path) -> int:
    """Train this rank's share of the job; the process's exit code."""
    from adapterhub.training.callbacks import StopTogether

    job = Job.read(job_path)
    rank = int(os.environ["RANK"])
    run_dir = Path(job.run_dir)
    token = CancelToken()
    try:
        context = context_of(job, int(os.environ.get("LOCAL_RANK", rank)))
        plan = plan_run(context, job.recipe, job.overrides)
        if plan.run_dir != run_dir:
            raise TrainingError(f"rank {rank} planned another run ({plan.run_dir.name}, not {run_dir.name}); "
                                "did the recipe or its data change while it started?")
        prepared = plan.method.prepare(plan.prepare_context()) if plan.method.prepare else None
        stop = StopTogether(run_dir / CANCEL_FILE, job.launcher_pid, token)
        trained = train_here(context, plan, prepared, no_progress, token, job.checkpoint, rank=rank, callbacks=(stop,))
    except TrainingCancelled as e:
        write_outcome(run_dir, rank, {"status": "cancelled", "message": str(e)})
        return 0
    except AdapterHubError as e:
        write_outcome(run_dir, rank, {"status": "failed", "error": type(e).__name__, "message": str(e)})
        return 1
    except BaseException as e:
        write_outcome(run_dir, rank, {"status": "failed", "error": type(e).__name__, "message": f"{type(e).__name__}: {e}"})
        raise
    if trained is not None:
        write_outcome(run_dir, rank, {
            "status": "done", "adapter_dir": str(trained.adapter_dir), "metrics": trained.metrics,
            "steps": trained.steps, "max_steps": trained.max_steps,
        })
    return 0


if __name__ == "__main__":
    sys.exit(run_rank(Path(sys.argv[1])))
