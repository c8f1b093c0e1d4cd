"""The method-independent training runner: recipe in, registered version out.

:func:`train` does, in order (everything that can fail cheaply fails before the model is loaded),
with only what its :class:`TrainingContext` gives it (base, registry, runs folder, platform):

1. **Plan** (:func:`plan_run`): validate the recipe; check it names this hub's base; load the base's
   tokenizer; gate its chat template; load, check and fingerprint the data; check LoRA targets
   against the base's layers; resolve the parent; let the method tokenize and gate the data.
2. **Model**: load a private copy of the frozen base (NF4 by default: QLoRA), attach a fresh LoRA
   (started as ``lora.init`` says), or the parent version's weights, trainable.
3. **Train**: the method builds its ``transformers.Trainer``; the runner adds the
   :class:`~adapterhub.training.callbacks.ProgressBridge` (events, step log, cancel), checkpoints
   under ``<home>/runs/<name>-<key>/`` and resumes from there with ``resume=True``.
4. **Measure**: eval loss/perplexity on the eval split; the forgetting check.
5. **Register** the adapter files and ``step_log.jsonl`` as the next version of ``recipe.name`` with
   method, resolved recipe, dataset fingerprint, parent, base fingerprint, template hash and
   metrics, then delete the run folder. A failed or cancelled run registers nothing, keeps its
   checkpoints for ``--resume`` and raises :class:`~adapterhub.errors.TrainingError` /
   :class:`~adapterhub.errors.TrainingCancelled` saying why.

With ``training.processes`` above 1, step 3 and 4 run on that many data-parallel ranks started
by :mod:`adapterhub.training.distributed`; this process plans, holds the lock and registers.

Design choices:

* **A private base copy.** Training prepares the base for k-bit training and injects LoRA layers;
  doing that on the hub's shared serving copy would change what concurrent ``generate`` calls see.
  The run loads its own frozen copy and drops it when done.
* **The run key** (hash of resolved recipe, data, base and parent) names the checkpoint folder, so
  ``--resume`` only ever continues the same run, never a different recipe's checkpoint.
* **One base for every version.** PiSSA and OLoRA train over a rewritten base (W - B0 A0); their
  start is saved before training and the version is converted at save to a plain rank-2r LoRA
  over W (PEFT's conversion), so it serves on the shared base like any other adapter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.core.progress import (
    STEP_LOG,
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)
from adapterhub.errors import AdapterHubError, ConfigError, TrainingCancelled, TrainingError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Version, ensure_compatible
from adapterhub.training.datasets import TrainingData, load_training_data
from adapterhub.training.distributed import Trained
from adapterhub.training.loading import load_recipe
from adapterhub.training.methods import Method, MethodContext, PrepareContext, get_method
from adapterhub.training.recipe import REWRITING_INITS, RecipeBase
from adapterhub.training.recipe import LoraConfig as LoraSettings
from adapterhub.training.templates import (
    RenderedExample,
    check_chat_template,
    end_of_turn_ids,
    example_segments,
    format_example,
)

if TYPE_CHECKING:
    from adapterhub.core.hardware import Platform
    from adapterhub.models.base import BaseInfo
    from adapterhub.registry import Registry

RecipeSource = str | Path | Mapping[str, Any] | RecipeBase


@dataclass(frozen=True)
class TrainingContext:
    """What a run uses of its hub; :class:`adapterhub.Hub` builds one for each run."""

    base: BaseInfo
    """The base trained on (its files, name, fingerprint and template hash)."""
    registry: Registry
    """Where the parent comes from and the trained version goes."""
    runs: Path
    """The folder of run folders (checkpoints, step log) until a run registers."""
    platform: Platform
    """Where and in which dtype to train, before the recipe's ``device``/``compute_dtype``."""


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before the model is loaded."""

    recipe: RecipeBase
    method: Method
    data: TrainingData
    tokenizer: Any
    eot_token_ids: tuple[int, ...]
    run_dir: Path
    parent: Version | None

    def prepare_context(self) -> PrepareContext:
        return PrepareContext(self.recipe, self.tokenizer, self.data, self.eot_token_ids)


@dataclass(frozen=True)
class ExampleView:
    """One training example as the trainer will see it, for ``--show-example``."""

    rendered: RenderedExample
    segments: list[tuple[str, bool]]  # (text, carries loss)
    text: str  # plain rendering with loss regions between ⟦ ⟧


def plan_run(
    context: TrainingContext, recipe: RecipeSource, overrides: Mapping[str, Any] | list[str] | None = None
) -> RunPlan:
    """Validate a recipe against this hub and its data; load nothing heavy.

    Raises:
        ConfigError: bad recipe, data, LoRA targets, parent or chat template (every problem the
            step found, at once).
    """
    from transformers import AutoTokenizer

    parsed, root = load_recipe(recipe, overrides)
    method = get_method(parsed.method)
    if parsed.training.processes > 1 and method.single_process:
        raise ConfigError(
            f"training.processes: {parsed.training.processes} is more than {method.name} supports: "
            f"{method.single_process}; set it to 1"
        )
    if parsed.training.processes > 1 and training_platform(parsed, context).is_cuda:
        import torch

        if parsed.training.processes > torch.cuda.device_count():
            raise ConfigError(f"training.processes: {parsed.training.processes} ranks need as many GPUs, one each; "
                              f"torch sees {torch.cuda.device_count()}: lower it (or CUDA_VISIBLE_DEVICES)")
    info = context.base
    if parsed.base is not None and parsed.base not in (info.name, info.fingerprint):
        raise ConfigError(
            f"base: the recipe is written for {parsed.base!r} but this hub's base is {info.name!r}; "
            f"run `adapterhub init --base {parsed.base}` or remove the recipe's base field"
        )
    missing = [t for t in parsed.training.report_to if importlib.util.find_spec(t) is None]
    if missing:
        raise ConfigError(f"training.report_to: {missing!r} are not installed; pip install {' '.join(missing)} "
                          "(trackio: adapterhub[tracking]) or remove them")
    targeted = _with_base_targets(parsed, info.path)
    parent = None
    if parsed.parent is not None:
        parent = context.registry.resolve(parsed.parent)
        ensure_compatible(parent, info.fingerprint, info.template_hash)
        parsed = _with_parent_lora(parsed, targeted.lora, context, parent)
    else:
        parsed = targeted
    tokenizer = AutoTokenizer.from_pretrained(info.path, local_files_only=True)
    eot = end_of_turn_ids(tokenizer, info.path)
    check_chat_template(tokenizer, eot)
    data = load_training_data(
        parsed.dataset, root=root, formats=method.formats, method=method.name, seed=parsed.seed
    )
    key = hashlib.sha256(
        json.dumps(
            [parsed.resolved(), data.fingerprint, info.fingerprint, parent.ref if parent else None],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    run_dir = context.runs / f"{parsed.name}-{key}"
    return RunPlan(parsed, method, data, tokenizer, eot, run_dir, parent)


def show_example(
    context: TrainingContext, recipe: RecipeSource, *, overrides: Mapping[str, Any] | list[str] | None = None, index: int = 0
) -> ExampleView:
    """Render training example ``index`` exactly as the trainer will see it, with its loss mask.

    Raises:
        ConfigError: bad recipe/data, a gate failed on this example, or ``index`` is out of range.
    """
    plan = plan_run(context, recipe, overrides)
    if plan.method.render_example is None:
        raise ConfigError(f"method {plan.method.name!r} has no example rendering; drop --show-example")
    if not 0 <= index < len(plan.data.train):
        raise ConfigError(f"example index {index!r} is out of range; the training set has {len(plan.data.train)}")
    rendered = plan.method.render_example(plan.prepare_context(), plan.data.train[index])
    return ExampleView(rendered, example_segments(rendered, plan.tokenizer), format_example(rendered, plan.tokenizer))


def train(
    context: TrainingContext,
    recipe: RecipeSource,
    *,
    overrides: Mapping[str, Any] | list[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> Version:
    """Run a recipe on the hub's base and register the trained adapter as a new version.

    Args:
        context: the base, registry, runs folder and platform the run uses.
        recipe: a recipe path, mapping or recipe object.
        overrides: ``--set`` style overrides (see :func:`adapterhub.training.loading.load_recipe`).
        progress: receives every :class:`~adapterhub.core.progress.ProgressEvent`.
        cancel: set it (from any thread) to stop at the next step boundary.
        resume: continue from this recipe's latest checkpoint if an earlier run left one.

    Returns:
        The registered version.

    Raises:
        ConfigError: the recipe, data or template failed a check (nothing was trained).
        TrainingCancelled: ``cancel`` was set; nothing registered, checkpoint kept for ``resume``.
        TrainingError: training failed; nothing registered.
    """
    emit = progress or no_progress
    plan = plan_run(context, recipe, overrides)
    recipe_obj = plan.recipe
    if cancel is not None and cancel.cancelled:
        raise TrainingCancelled(f"training {recipe_obj.name!r} was cancelled before it started; nothing registered")
    prepared = plan.method.prepare(plan.prepare_context()) if plan.method.prepare else None
    with _exclusive(plan.run_dir):
        checkpoint = _open_run_dir(plan, emit, resume)
        if recipe_obj.training.processes > 1:
            trained = _train_on_processes(context, plan, recipe, overrides, checkpoint, emit, cancel)
        else:
            trained = train_here(context, plan, prepared, emit, cancel, checkpoint)
        assert trained is not None  # the main process always gets its result
        try:
            version = _register(context, plan, trained)
        except AdapterHubError as e:
            emit(ProgressEvent("failed", message=str(e)))
            raise
        except Exception as e:
            message = f"training {recipe_obj.name!r} finished but could not be registered: {type(e).__name__}: {e}"
            emit(ProgressEvent("failed", message=message))
            raise TrainingError(message) from e
    if "trackio" in recipe_obj.training.report_to:
        _link_trackio_run(recipe_obj.training.project, plan.run_dir.name, version)
    emit(ProgressEvent(
        "done", step=trained.steps, total_steps=trained.max_steps, loss=version.metrics.get("train_loss"),
        message=f"registered {version.ref}", version_ref=version.ref,
    ))
    shutil.rmtree(plan.run_dir, ignore_errors=True)
    return version


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>.lock`` so two processes never train the same run (same checkpoints) at once.

    Raises:
        TrainingError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_name(run_dir.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"this recipe is already training in another process (lock {lock.name!r}); "
                "wait for it, or cancel it, before starting it again"
            ) from None
        try:
            yield
        finally:  # remove before unlocking: a process that opens it later makes a fresh one
            Path(lock.name).unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_run_dir(plan: RunPlan, emit: ProgressCallback, resume: bool) -> str | None:
    """Make the run folder ready; returns the checkpoint to resume from (``resume`` and one exists)."""
    from transformers.trainer_utils import get_last_checkpoint

    from adapterhub.training.callbacks import trim_step_log

    checkpoints = plan.run_dir / "checkpoints"
    checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if checkpoint and not resume:
        emit(ProgressEvent("message", message=(
            f"an interrupted run of this recipe left {Path(checkpoint).name}; starting over "
            "(pass --resume to continue it)")))
        shutil.rmtree(plan.run_dir)
        checkpoint = None
    elif resume and not checkpoint:
        emit(ProgressEvent("message", message="no checkpoint of this recipe to resume; starting from step 0"))
        shutil.rmtree(plan.run_dir, ignore_errors=True)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        trim_step_log(plan.run_dir / STEP_LOG, int(Path(checkpoint).name.rsplit("-", 1)[-1]))
    return checkpoint


def _train_on_processes(
    context: TrainingContext,
    plan: RunPlan,
    recipe: RecipeSource,
    overrides: Mapping[str, Any] | list[str] | None,
    checkpoint: str | None,
    emit: ProgressCallback,
    cancel: CancelToken | None,
) -> Trained:
    """:func:`train_here` on ``training.processes`` ranks (see :mod:`adapterhub.training.distributed`)."""
    from adapterhub.training.distributed import Job, portable, train_on_processes

    if plan.parent is not None:
        _export_parent(context, plan)  # once, here: the ranks only read it
    platform = context.platform
    job = Job(
        recipe=portable(recipe),
        overrides=dict(overrides) if isinstance(overrides, Mapping) else overrides,
        base=str(context.base.path),
        runs=str(context.runs),
        device=platform.device,
        compute_dtype=platform.compute_dtype,
        nf4=platform.nf4,
        checkpoint=checkpoint,
        run_dir=str(plan.run_dir),
        launcher_pid=os.getpid(),
    )
    return train_on_processes(job, plan.recipe.training.processes, context.registry.location, emit, cancel)


def train_here(
    context: TrainingContext,
    plan: RunPlan,
    prepared: Any,
    emit: ProgressCallback,
    cancel: CancelToken | None,
    checkpoint: str | None,
    *,
    rank: int = 0,
    callbacks: tuple[Any, ...] = (),
) -> Trained | None:
    """Load, train and measure in this process, and save the adapter in the run folder.

    With several processes every rank runs this (``rank`` and the ranks' shared ``callbacks`` set);
    only rank 0 reports progress, writes the step log, checks forgetting and saves, and only it
    returns the result.

    Raises:
        TrainingCancelled: ``cancel`` was set; the checkpoint is kept for ``resume``.
        TrainingError: training failed.
    """
    from adapterhub.training.callbacks import ProgressBridge

    recipe_obj = plan.recipe
    main = rank == 0
    checkpoints = plan.run_dir / "checkpoints"
    bridge = ProgressBridge(emit if main else no_progress, plan.run_dir / STEP_LOG if main else None, cancel)
    bridge.message(
        f"{plan.method.name} {recipe_obj.name!r}: {len(plan.data.train)} train / "
        f"{len(plan.data.eval) if plan.data.eval is not None else 0} eval examples, "
        f"base in {recipe_obj.training.precision}"
        + (f", {recipe_obj.training.processes} processes" if recipe_obj.training.processes > 1 else "")
    )

    started = time.monotonic()
    trainer: Any = None
    try:
        base, model = _load_model(context, plan)
        bridge.message(base.summary())
        ctx = MethodContext(
            recipe=recipe_obj,
            model=model,
            tokenizer=plan.tokenizer,
            base=base,
            data=plan.data,
            prepared=prepared,
            args=training_arguments(recipe_obj, checkpoints, base.platform),
            callbacks=(*callbacks, bridge),
            registry=context.registry,
            run_dir=plan.run_dir,
            say=bridge.message,
            parent=plan.parent,
            parent_dir=plan.run_dir / "parent" if plan.parent else None,
        )
        trainer = plan.method.build_trainer(ctx)
        _quiet(trainer)
        if recipe_obj.lora.plus_lr_ratio is not None:
            trainer.optimizer = loraplus_optimizer(model, recipe_obj)  # the Trainer keeps one it is given
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except AdapterHubError as e:
        bridge.finish(ProgressEvent("failed", message=str(e)))
        raise
    except Exception as e:  # anything from torch/TRL/transformers: report it as ours
        message = (
            f"training {recipe_obj.name!r} failed at "
            f"{'step ' + str(trainer.state.global_step) if trainer is not None else 'setup'}: "
            f"{type(e).__name__}: {e}; "
            f"nothing registered. Checkpoints (if any) are in {str(checkpoints)!r}: "
            "rerun with --resume to continue"
        )
        bridge.finish(ProgressEvent("failed", message=message))
        raise TrainingError(message) from e
    except KeyboardInterrupt:
        bridge.finish(ProgressEvent("cancelled", message="interrupted"))
        raise
    if bridge.cancelled:
        step = trainer.state.global_step
        message = (
            f"training {recipe_obj.name!r} was cancelled at step {step}; nothing registered. "
            f"Resume with `adapterhub train ... --resume` (checkpoint in {str(checkpoints)!r})"
        )
        bridge.finish(ProgressEvent("cancelled", step=step, total_steps=trainer.state.max_steps, message=message))
        raise TrainingCancelled(message)

    try:
        return _measure(context, plan, trainer, model, output, bridge, started, main=main)
    except AdapterHubError as e:
        bridge.finish(ProgressEvent("failed", message=str(e)))
        raise
    except Exception as e:
        message = f"training {recipe_obj.name!r} finished but could not be measured: {type(e).__name__}: {e}"
        bridge.finish(ProgressEvent("failed", message=message))
        raise TrainingError(message) from e


def _link_trackio_run(project: str, run: str, version: Version) -> None:
    """Record the registered version in the trackio run that logged its training (local files):
    the run's config gains ``adapterhub_version`` and one last point logs the version number."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    config = SQLiteStorage.get_run_config(project, run) or {}
    trackio.init(project=project, name=run, resume="must",
                 config={**{k: v for k, v in config.items() if not k.startswith("_")}, "adapterhub_version": version.ref})
    trackio.log({"adapterhub/version": version.number})
    trackio.finish()


def _quiet(trainer: Any) -> None:
    """Our bridge reports progress; drop transformers' own printer and tqdm callbacks."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# --------------------------------------------------------------------------- model


def _load_model(context: TrainingContext, plan: RunPlan) -> tuple[Any, Any]:
    """A private frozen base in the recipe's precision with the adapter attached, trainable."""
    import torch
    from peft import (
        LoraConfig,
        PeftModel,
        TaskType,
        get_peft_model,
        prepare_model_for_kbit_training,
    )

    from adapterhub.models.base import load_base

    recipe = plan.recipe
    torch.manual_seed(recipe.seed)
    base = load_base(
        context.base.path, recipe.training.precision, for_training=True, platform=training_platform(recipe, context)
    )
    model = base.model
    if recipe.training.precision in ("nf4", "int8") and not base.dequantized_bytes:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing
        )
    if plan.method.task_type == "SEQ_CLS":  # reward model: LoRA + score head over the same trunk
        from adapterhub.training.reward_model import attach_score_lora

        parent_dir = _export_parent(context, plan) if plan.parent else None
        return base, attach_score_lora(model, recipe.lora, parent_dir=parent_dir)
    if plan.parent is not None:
        model = PeftModel.from_pretrained(model, _export_parent(context, plan), is_trainable=True)
    else:
        lora = recipe.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,  # type: ignore[arg-type]  # PEFT annotates int; floats work
                lora_dropout=lora.dropout,
                target_modules=lora.modules,
                use_rslora=lora.use_rslora,
                use_dora=lora.use_dora,
                init_lora_weights=PEFT_INITS[lora.init],  # type: ignore[arg-type]
                bias="none",
                task_type=TaskType.CAUSAL_LM,
            ),
        )
        if lora.init in REWRITING_INITS:
            _save_start(model, _start_dir(plan))
        elif lora.init == "loftq":
            _loftq_start(model, context.base.path)
    return base, model


def _loftq_start(model: Any, base_path: Path) -> None:
    """LoftQ's start over the shared quantised base: each adapted layer's B, A begin as the best
    rank-r approximation of what quantisation lost, scaling * B @ A = SVD_r(W - dequant(Q(W))).

    This is LoftQ (Li et al. 2023) with the quantised weight kept, as PEFT's
    ``replace_lora_weights_loftq`` does it (that function runs its SVD on CUDA only, and ignores
    the LoRA scaling); the base is not rewritten, so the version is a plain LoRA over the same
    NF4 base every adapter is served on. W comes from the base's own safetensors files.

    Raises:
        TrainingError: an adapted layer's full-precision weight is not in the base's files.
    """
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight
    from safetensors import safe_open

    where = {}
    for file in sorted(Path(base_path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            where.update(dict.fromkeys(f.keys(), file))
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
                continue
            key = name.removeprefix("base_model.model.") + ".weight"
            if key not in where:
                raise TrainingError(f"lora.init: 'loftq' needs the full-precision weight {key!r}, which is not in "
                                    f"the base's files in {str(base_path)!r}; use lora.init: default")
            with safe_open(str(where[key]), framework="pt") as f:
                full = f.get_tensor(key).float()  # [out, in]
            lost = full - dequantize_module_weight(module.get_base_layer()).float().cpu()
            u, s, vh = torch.linalg.svd(lost, full_matrices=False)
            r, scaling = module.r["default"], module.scaling["default"]
            root = torch.sqrt(s[:r] / scaling)  # [r]
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            a.copy_((root[:, None] * vh[:r]).to(a))  # [r, in]
            b.copy_((u[:, :r] * root).to(b))  # [out, r]


PEFT_INITS: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora",
                                     "loftq": True}
"""``lora.init`` -> PEFT's ``init_lora_weights`` (LoftQ's start replaces the default one, see
:func:`_loftq_start`)."""


def _start_dir(plan: RunPlan) -> Path:
    """Where this process keeps a rewriting init's starting adapter (B0, A0) until it saves."""
    return plan.run_dir / f"start-{os.getpid()}"


def _save_start(model: Any, folder: Path) -> None:
    """Save the adapter as PiSSA/OLoRA initialised it, for the conversion at the end.

    Its config (and every checkpoint's after it) says ``init_lora_weights: true``: loading it, or
    resuming from a checkpoint, must not decompose the already rewritten base a second time
    (PEFT's own recipe for the conversion). A resumed run recomputes the same start: the
    decomposition of the same base weights is deterministic.
    """
    model.peft_config["default"].init_lora_weights = True
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)


def _export_parent(context: TrainingContext, plan: RunPlan) -> Path:
    """The parent version as a PEFT folder in the run folder, pointing at the local base.

    Written once, into a temporary folder renamed into place, so every reader (the ranks of a
    multi-process run, which the launcher exports for before they start) sees it whole or not at all.

    The registry stores the base's Hub name in ``base_model_name_or_path``; left there, PEFT looks
    the name up online at every save (warning when offline). The registered result gets the name
    back in :func:`_measure`.
    """
    assert plan.parent is not None
    folder = plan.run_dir / "parent"
    if folder.is_dir():
        return folder
    staging = plan.run_dir / f"parent.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    context.registry.export(plan.parent, staging)
    _name_base(staging, str(context.base.path))
    os.replace(staging, folder)
    return folder


def _name_base(folder: Path, base: str) -> None:
    """Set ``base_model_name_or_path`` in the PEFT folder's adapter config."""
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _with_base_targets(recipe: RecipeBase, base_path: Path) -> RecipeBase:
    """The recipe with its LoRA targets named for this base: the family's attention projections
    by default, every linear layer for ``all-linear``, the family's MLP with ``mlp``.

    Raises:
        ConfigError: a named target is not a linear layer of the base.
    """
    import torch

    from adapterhub.engine.families import FAMILIES, Family
    from adapterhub.models.base import load_skeleton

    skeleton = load_skeleton(base_path)
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    family = FAMILIES.get(getattr(skeleton.config, "model_type", ""), Family())
    lora = recipe.lora.resolved_for(sorted(linear), family.attention_targets, family.mlp_targets)
    missing = [m for m in lora.modules if m not in linear]
    if missing:
        raise ConfigError(
            f"lora.target_modules: {missing!r} are not linear layers of this base; "
            f"choose from {', '.join(sorted(linear))} (or 'all-linear')"
        )
    return recipe.model_copy(update={"lora": lora})


def _with_parent_lora(recipe: RecipeBase, targeted: LoraSettings, context: TrainingContext, parent: Version) -> RecipeBase:
    """The recipe with the parent's LoRA shape; refuses an explicit different shape.

    ``targeted`` is the recipe's own LoRA with its targets named for the base.
    """
    config = json.loads(context.registry.read_file(parent, CONFIG_FILE))
    targets = config.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [targets]
    parent_lora = {
        "r": config.get("r"),
        "alpha": float(config.get("lora_alpha", config.get("r"))),
        "target_modules": targets,
        "mlp": False,
        "use_rslora": bool(config.get("use_rslora", False)),
        "use_dora": bool(config.get("use_dora", False)),
    }
    if "lora" in recipe.model_fields_set:
        mine = recipe.lora
        explicit = {f: getattr(mine, f) for f in mine.model_fields_set if f in parent_lora}
        if "target_modules" in explicit or mine.mlp:
            explicit["target_modules"] = sorted(targeted.modules)
            explicit.pop("mlp", None)
        clash = [f"lora.{k}={v!r} (parent has {parent_lora[k]!r})" for k, v in explicit.items() if v != parent_lora[k]]
        if clash:
            raise ConfigError(
                [f"{c}: a run that continues from {parent.ref} keeps the parent's LoRA shape; "
                 "remove it from the recipe" for c in clash]
            )
    lora = {**parent_lora, "dropout": recipe.lora.dropout, "plus_lr_ratio": recipe.lora.plus_lr_ratio}  # how to train it
    return type(recipe).model_validate({**recipe.model_dump(), "lora": lora})


# --------------------------------------------------------------------------- trainer settings


def loraplus_optimizer(model: Any, recipe: RecipeBase) -> Any:
    """AdamW with every LoRA B (and embedding) weight at ``lora.plus_lr_ratio`` times the recipe's
    learning rate (PEFT's LoRA+ optimizer), the rest at the learning rate."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    t = recipe.training
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=t.learning_rate,
                                     loraplus_lr_ratio=recipe.lora.plus_lr_ratio, weight_decay=t.weight_decay)


def training_platform(recipe: RecipeBase, context: TrainingContext) -> Platform:
    """The context's platform with the recipe's ``device`` and ``compute_dtype`` on top."""
    t = recipe.training
    return context.platform.with_overrides(
        device=None if t.device == "auto" else t.device,
        compute_dtype=None if t.compute_dtype == "auto" else t.compute_dtype,
    )


def training_arguments(recipe: RecipeBase, output_dir: Path, platform: Platform) -> dict[str, Any]:
    """The ``transformers.TrainingArguments`` keywords every method shares, from ``recipe.training``.

    Mixed precision follows the platform's compute dtype: autocast to bf16 (or fp16 on older
    GPUs) where it is native, plain fp32 elsewhere.
    """
    t = recipe.training
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": "adamw_torch",
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.keep_checkpoints,
        "eval_strategy": "steps" if t.eval_steps else "no",
        "eval_steps": t.eval_steps,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "bf16": t.precision != "fp32" and platform.compute_dtype == "bfloat16",
        "fp16": t.precision != "fp32" and platform.compute_dtype == "float16",
        "use_cpu": not platform.is_cuda,
        "activation_checkpointing": t.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",
        # every LoRA weight takes part in every step: DDP need not search the graph for unused ones
        "ddp_find_unused_parameters": False if t.processes > 1 else None,
        "report_to": list(t.report_to) or "none",
        "run_name": output_dir.parent.name,  # <name>-<run key>, as the run folder
        "project": t.project,
        "trackio_static_space_id": False,  # local logging only: never a Space on the Hub
        "disable_tqdm": True,
        "log_level": "warning",
    }


# --------------------------------------------------------------------------- finish


def _measure(
    context: TrainingContext, plan: RunPlan, trainer: Any, model: Any, output: Any, bridge: Any, started: float,
    *, main: bool = True,
) -> Trained | None:
    """Evaluate (every rank takes part), check forgetting and save the adapter (rank 0 alone)."""
    import math

    from adapterhub.training.forgetting import forgetting_metrics

    recipe = plan.recipe
    t = recipe.training
    state = trainer.state
    # PiSSA/OLoRA: with the adapter off the model is W - B0 A0; this start adapter puts W back
    start = _start_dir(plan) if recipe.lora.init in REWRITING_INITS and plan.method.task_type == "CAUSAL_LM" else None
    metrics: dict[str, Any] = {
        "train_loss": round(float(output.training_loss), 6),
        "train_loss_last": bridge.last_loss,
        "train_steps": state.global_step,
        "train_epochs": round(float(state.epoch or 0), 4),
        "train_tokens": int(state.num_input_tokens_seen or 0),
        "train_runtime_s": round(float(output.metrics["train_runtime"]), 2),  # the training loop alone
        "processes": t.processes,
        "effective_batch_size": t.batch_size * t.grad_accum * t.processes,  # examples per optimizer step
    }
    metrics["train_tokens_per_s"] = round(metrics["train_tokens"] / max(1e-9, metrics["train_runtime_s"]), 1)
    metrics.update({f"train/{k}": round(v, 6) for k, v in bridge.last_metrics.items()})
    if trainer.eval_dataset is not None:
        bridge.message("evaluating")
        for key, value in trainer.evaluate().items():
            # eval_num_tokens is TRL's running count of *training* tokens: not an eval metric.
            if isinstance(value, int | float) and key.startswith("eval_") and not key.endswith(
                ("runtime", "per_second", "num_tokens")
            ):
                metrics[key] = round(float(value), 6)
        if "eval_loss" in metrics and plan.method.name == "sft":  # other losses are not token NLL
            metrics["eval_perplexity"] = round(math.exp(min(50.0, metrics["eval_loss"])), 4)
    if not main:
        return None
    if recipe.forgetting_check and plan.method.task_type != "CAUSAL_LM":
        bridge.message("forgetting check skipped: a reward model's score head does not generate text")
    elif recipe.forgetting_check:
        bridge.message("forgetting check: general-text perplexity with and without the adapter")
        metrics.update(forgetting_metrics(model, plan.tokenizer, base_adapter=start))
    metrics["run_wall_s"] = round(time.monotonic() - started, 2)  # model load to saved adapter
    metrics["data"] = plan.data.summary
    if t.report_to:
        metrics["tracking"] = {"report_to": list(t.report_to), "project": t.project, "run": plan.run_dir.name}
    metrics["lora"] = {"r": recipe.lora.r, "alpha": recipe.lora.alpha, "target_modules": recipe.lora.modules,
                       "init": recipe.lora.init}
    adapter_dir = plan.run_dir / "adapter"
    if start is None:
        model.save_pretrained(adapter_dir, safe_serialization=True)
    else:  # trained as B A over W - B0 A0: registered as [B, -B0] [A; A0] over W, rank 2r
        bridge.message(f"converting the {recipe.lora.init} adapter to a plain LoRA of rank {2 * recipe.lora.r} "
                       f"over the original base: serve it with max_lora_rank >= {2 * recipe.lora.r}")
        model.save_pretrained(adapter_dir, safe_serialization=True, path_initial_model_for_weight_conversion=str(start))
        metrics["lora"]["registered_r"] = 2 * recipe.lora.r
    _name_base(adapter_dir, context.base.name)  # not the local path it was loaded from
    return Trained(adapter_dir, metrics, state.global_step, state.max_steps)


def _register(context: TrainingContext, plan: RunPlan, trained: Trained) -> Version:
    """The saved adapter and the run's step log as the next version of the recipe's name."""
    info = context.base
    return context.registry.register(
        plan.recipe.name,
        {
            CONFIG_FILE: trained.adapter_dir / CONFIG_FILE,
            WEIGHTS_FILE: trained.adapter_dir / WEIGHTS_FILE,
            STEP_LOG: plan.run_dir / STEP_LOG,
        },
        base_fingerprint=info.fingerprint,
        template_hash=info.template_hash,
        method=plan.method.name,
        recipe=plan.recipe.resolved(),
        dataset_fingerprint=plan.data.fingerprint,
        parent=plan.parent.ref if plan.parent else None,
        metrics=trained.metrics,
    )
