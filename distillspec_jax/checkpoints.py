"""orbax checkpoints: save every N steps, keep K, resume from the latest readable one.

A checkpoint step directory holds the train state (step, params, optimizer
state) of the model being trained. In distill mode that is the draft only: the
frozen target is read from its own checkpoint (`restore_params`) and never
written. orbax writes each step to a temporary directory and renames it when
complete (on gs://, which has no atomic rename, it marks a finished step with a
commit file instead), so a run killed mid-save leaves no partial step behind; a
step that is present but unreadable is skipped with a warning and the one
before is used. Directories may be local paths or gs:// URIs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from distillspec_jax import fs

# Items of one checkpoint step: the parameters and optimizer state are saved
# apart so that a frozen target can be read without its optimizer state.
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not match what the config expects."""


class Checkpointer:
    """Saves and restores train states in `directory` (one sub-directory per step)."""

    def __init__(
        self,
        directory: str,
        save_interval_steps: int = 1000,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        self.directory = fs.absolute(directory)  # gs:// stays a URI
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        meta: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves at `step` if the save interval says so (or `force`).

        `opt_state=None` writes parameters only (an imported checkpoint that
        serves as init_checkpoint / target_checkpoint).
        """
        items = {
            PARAMS: ocp.args.StandardSave(params),
            META: ocp.args.JsonSave({"step": int(step), **(meta or {})}),
        }
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardSave(opt_state)
        return self.manager.save(step, force=force, args=ocp.args.Composite(**items))

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def restore_latest(
        self, abstract_params: Any, abstract_opt_state: Any
    ) -> tuple[Any, Any, dict[str, Any]] | None:
        """(params, opt_state, meta) of the newest readable step, or None.

        The abstract trees (jax.ShapeDtypeStruct with shardings) say where the
        arrays go. Unreadable steps are skipped with a warning.
        """
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        **{
                            PARAMS: ocp.args.StandardRestore(abstract_params),
                            OPT_STATE: ocp.args.StandardRestore(abstract_opt_state),
                            META: ocp.args.JsonRestore(),
                        }
                    ),
                )
                return restored[PARAMS], restored[OPT_STATE], dict(restored[META])
            except Exception as error:  # noqa: BLE001 - any unreadable step is skipped.
                logging.warning(
                    "Skipping unreadable checkpoint at step %d in %s: %s",
                    step,
                    self.directory,
                    error,
                )
        return None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


# Workdirs describe themselves: the architecture, the vocabulary and the run config.
MODEL_FILE = "model.json"


def write_model_description(
    workdir: str, model: Any, vocab_path: str = "", config: Any = None
) -> str:
    """Writes `workdir/model.json`: the architecture, vocabulary path and run config."""
    from distillspec_jax import models

    record = {"model": models.describe(model), "vocab_path": vocab_path}
    if config is not None:
        record["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    path = os.path.join(workdir, MODEL_FILE)
    fs.write_json(path, record, indent=2, default=str)
    return path


def read_model_description(workdir: str) -> dict[str, Any] | None:
    """The `model.json` record of a workdir, or None when it has none."""
    path = os.path.join(workdir, MODEL_FILE)
    return fs.read_json(path) if workdir and fs.exists(path) else None


def recorded_model(workdir: str) -> Any:
    """The model whose architecture a workdir records (model.json), or None."""
    from distillspec_jax import models

    record = read_model_description(workdir)
    return models.from_description(record["model"]) if record else None


def restore_params(directory: str, abstract_params: Any, what: str = "target") -> Any:
    """Parameters from the newest readable checkpoint in `directory`.

    `directory` is a training workdir (its `checkpoints/` is used) or a
    checkpoint directory. The saved parameter tree must match
    `abstract_params` (same paths and shapes), else CheckpointError says what
    differs (a vocabulary or architecture mismatch, say).
    """
    return restore_params_at(directory, abstract_params, what)[0]


def restore_params_at(
    directory: str,
    abstract_params: Any,
    what: str = "target",
    step: int | None = None,
    fallback: bool = True,
) -> tuple[Any, int]:
    """(parameters, step): of `step`, else of the newest readable checkpoint.

    With `fallback=False` an unreadable newest checkpoint is an error naming the
    step (an export must not silently write an older model); with `step` set,
    only that step is read.
    """
    if not directory:
        raise CheckpointError(f"No {what} checkpoint path is configured")
    if fs.isdir(checkpoint_dir(directory)):
        directory = checkpoint_dir(directory)
    if not fs.isdir(directory):
        raise CheckpointError(f"The {what} checkpoint directory does not exist: {directory}")
    manager = ocp.CheckpointManager(
        fs.absolute(directory),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={
            PARAMS: ocp.StandardCheckpointHandler(),
            OPT_STATE: ocp.StandardCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        },
    )
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"No {what} checkpoint found in {directory}")
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"No {what} checkpoint at step {step} in {directory}; it has {sorted(steps)}"
                )
            steps, fallback = [step], False
        for candidate in steps:
            try:
                saved = manager.item_metadata(candidate)[PARAMS]
                _check_same_tree(saved, abstract_params, what, directory)
                restored = manager.restore(
                    candidate,
                    args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params)}),
                )
            except CheckpointError:
                raise
            except Exception as error:  # noqa: BLE001
                first_line = str(error).strip().splitlines()[0][:200] if str(error) else ""
                if not fallback:
                    older = [s for s in sorted(manager.all_steps()) if s < candidate]
                    hint = f"; pass --step {older[-1]} to use an older one" if older else ""
                    raise CheckpointError(
                        f"The {what} checkpoint at step {candidate} in {directory} is "
                        f"unreadable ({type(error).__name__}: {first_line}){hint}"
                    ) from None
                logging.warning(
                    "Skipping unreadable %s checkpoint step %d: %s", what, candidate, first_line
                )
                continue
            logging.info("Restored %s parameters from %s step %d", what, directory, candidate)
            return restored[PARAMS], candidate
        raise CheckpointError(f"No readable {what} checkpoint in {directory}")
    finally:
        manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def _check_same_tree(saved: Any, expected: Any, what: str, directory: str) -> None:
    saved_shapes, expected_shapes = _shapes(saved), _shapes(expected)
    missing = sorted(set(expected_shapes) - set(saved_shapes))
    extra = sorted(set(saved_shapes) - set(expected_shapes))
    wrong = sorted(
        k for k in set(saved_shapes) & set(expected_shapes) if saved_shapes[k] != expected_shapes[k]
    )
    if missing or extra or wrong:
        details = [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {extra[:5]}" if extra else "",
            "shape mismatch "
            + ", ".join(
                f"{k}: saved {saved_shapes[k]} vs config {expected_shapes[k]}" for k in wrong[:5]
            )
            if wrong
            else "",
        ]
        raise CheckpointError(
            f"The {what} checkpoint in {directory} does not match the configured "
            f"architecture (vocabulary or sizes differ): " + "; ".join(d for d in details if d)
        )
