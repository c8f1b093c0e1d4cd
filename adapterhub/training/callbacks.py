"""The bridge from a ``transformers.Trainer`` to adapterhub's progress events, step log and cancel.

Every TRL trainer (and our own loops, which subclass ``transformers.Trainer``) reports through
``TrainerCallback`` hooks. :class:`ProgressBridge` is the one callback the runner adds: it turns
each log into a :class:`~adapterhub.core.progress.ProgressEvent` for the caller (CLI bar, TUI curves,
server stream), appends the same event to the step log (JSONL), and checks the
:class:`~adapterhub.core.progress.CancelToken` after every optimizer step.

Design choices:

* **Standard fields are lifted, everything else is a metric.** ``loss``, ``learning_rate``,
  ``epoch`` become event fields; every other numeric log value (``mean_token_accuracy``, DPO's
  ``rewards/margins``…) goes to ``metrics`` under its own name, so a new method needs no change here.
* **Tokens/s and ETA are measured here**, from the trainer's token counter and wall time since this
  session began (a resumed run does not count the steps it skipped).
* **Cancel stops at a step boundary and saves a checkpoint**, so a cancelled run can be resumed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adapterhub.core.processes import alive
from adapterhub.core.progress import CancelToken, ProgressCallback, ProgressEvent

_LIFTED = {"loss", "learning_rate", "epoch", "grad_norm"}
_SKIPPED = {
    "total_flos",
    "num_input_tokens_seen",
    "num_tokens",
    "step",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
}


class ProgressBridge(TrainerCallback):  # type: ignore[misc]
    """Emits progress events, writes the step log and honours the cancel token.

    Args:
        emit: receives every event.
        step_log: JSONL file the events are appended to (None: emitted only, as on the ranks
            of a multi-process run other than the first).
        cancel: checked after each optimizer step; when set, training stops (with a checkpoint).
    """

    def __init__(self, emit: ProgressCallback, step_log: Path | None, cancel: CancelToken | None = None) -> None:
        self.emit = emit
        self.step_log = Path(step_log) if step_log is not None else None
        self.cancel = cancel
        self.cancelled = False
        self.last_metrics: dict[str, float] = {}
        self.last_loss: float | None = None
        self._started = time.monotonic()
        self._start_step = 0
        self._start_tokens = 0
        self._last_time = self._started
        self._last_tokens = 0

    def _send(self, event: ProgressEvent) -> None:
        if self.step_log is not None:
            with open(self.step_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
        self.emit(event)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = self._last_time = time.monotonic()
        self._start_step = state.global_step
        self._start_tokens = self._last_tokens = int(state.num_input_tokens_seen or 0)
        message = f"resumed at step {state.global_step}" if state.global_step else "training"
        self._send(ProgressEvent("start", step=state.global_step, total_steps=state.max_steps, message=message))

    def _check_cancel(self, control: Any) -> None:
        if self.cancel is not None and self.cancel.cancelled and not self.cancelled:
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True  # keep a checkpoint so the run can be resumed

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check_cancel(control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        if "train_loss" in logs:  # the trainer's end-of-training summary, not a step
            return
        is_eval = any(k.startswith("eval_") for k in logs)
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen or 0)
        tokens_per_s = None
        if tokens > self._last_tokens and now > self._last_time:
            tokens_per_s = (tokens - self._last_tokens) / (now - self._last_time)
        if not is_eval:
            self._last_time, self._last_tokens = now, tokens
        done = state.global_step - self._start_step
        eta = None
        if done > 0 and state.max_steps:
            eta = (now - self._started) / done * max(0, state.max_steps - state.global_step)
        metrics = {
            k: float(v)
            for k, v in logs.items()
            if k not in _LIFTED | _SKIPPED and isinstance(v, int | float) and math.isfinite(v)
        }
        if "grad_norm" in logs and isinstance(logs["grad_norm"], int | float):
            metrics["grad_norm"] = float(logs["grad_norm"])
        loss = logs.get("eval_loss" if is_eval else "loss")
        if not is_eval:
            self.last_metrics.update(metrics)
            if loss is not None:
                self.last_loss = float(loss)
        self._send(
            ProgressEvent(
                "eval" if is_eval else "step",
                step=state.global_step,
                total_steps=state.max_steps,
                loss=float(loss) if loss is not None else None,
                learning_rate=logs.get("learning_rate"),
                tokens_per_s=tokens_per_s if not is_eval else None,
                eta_s=eta,
                epoch=logs.get("epoch", state.epoch),
                metrics=metrics,
            )
        )
        # Logging comes after on_step_end: a cancel requested while handling this step's event
        # still stops here, before the next step, and the checkpoint is saved right after.
        self._check_cancel(control)

    def message(self, text: str, **fields: Any) -> None:
        """Emit and log a one-line message event."""
        self._send(ProgressEvent("message", message=text, **fields))

    def finish(self, event: ProgressEvent) -> None:
        """Emit and log the final event (done, failed or cancelled)."""
        self._send(event)


class StopTogether(TrainerCallback):  # type: ignore[misc]
    """Stops every rank of a multi-process run at the same step.

    After each optimizer step the ranks all-reduce whether any of them was asked to stop (the
    ``cancel_file`` exists, or the launcher ``launcher_pid`` is gone) and, if so, set ``token``,
    which each rank's :class:`ProgressBridge` honours. A rank that stopped alone would leave the
    others waiting for it in DDP's next gradient all-reduce.
    """

    def __init__(self, cancel_file: Path, launcher_pid: int, token: CancelToken) -> None:
        self.cancel_file = cancel_file
        self.launcher_pid = launcher_pid
        self.token = token

    def _asked(self) -> bool:
        return self.cancel_file.exists() or not alive(self.launcher_pid)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self._asked() else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.token.cancel()


def trim_step_log(step_log: Path, after_step: int) -> None:
    """Drop step/eval events past ``after_step`` (work a resumed run will redo)."""
    path = Path(step_log)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if event.get("kind") in ("step", "eval") and event.get("step", 0) > after_step:
            continue
        kept.append(line)
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
