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

import functools
import hashlib
import io
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from distillspec_jax import fs, models

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
    workdir: str, model: Any, vocab_path: str = "", config: Any = None, tokenizer: Any = None
) -> str:
    """Writes `workdir/model.json`: the architecture, vocabulary path and run config, and
    a model's own tokenizer with its special ids (`tokenizer.Tokenizer.describe`)."""

    record = {"model": models.describe(model), "vocab_path": vocab_path}
    if tokenizer is not None and not tokenizer.legacy:
        record["tokenizer"] = tokenizer.describe()
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

    record = read_model_description(workdir)
    return models.from_description(record["model"]) if record else None


# The dtypes a model's parameters may be restored into ('' = as stored): evaluate's
# param_dtype and train's target_param_dtype.
PARAM_DTYPES = ("", "float32", "bfloat16")


def abstract_params(model: Any, shardings: Any, dtype: str = "") -> Any:
    """The model's parameter shapes with `shardings` (one sharding, or a matching tree),
    floating ones in `dtype` ('' = the model's): restoring with them reads each array
    straight into its place and dtype, whatever sharding and dtype the checkpoint was
    written with."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree_util.tree_map(lambda _: shardings, shapes)

    def abstract(s, sharding):
        cast = dtype and jnp.issubdtype(s.dtype, jnp.floating)
        return jax.ShapeDtypeStruct(s.shape, dtype if cast else s.dtype, sharding=sharding)

    return jax.tree_util.tree_map(abstract, shapes, shardings)


def abstract_params_on_one_device(model: Any) -> Any:
    """The model's parameter shapes placed on one device (`abstract_params`)."""
    return abstract_params(model, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


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
                # A checkpoint of the other layer layout (scanned / unscanned) is
                # read in its own layout, then converted.
                as_saved = abstract_params
                if models.layers_scanned(saved) != models.layers_scanned(abstract_params):
                    as_saved = models.relayout(abstract_params, models.layers_scanned(saved))
                _check_same_tree(saved, as_saved, what, directory)
                restored = manager.restore(
                    candidate,
                    args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(as_saved)}),
                )
                if as_saved is not abstract_params:
                    restored = {PARAMS: _relayout_like(restored[PARAMS], abstract_params)}
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


def _relayout_like(params: Any, abstract_params: Any) -> Any:
    """`params` converted to the layer layout of `abstract_params`, placed on its shardings."""
    convert = functools.partial(models.relayout, scanned=models.layers_scanned(abstract_params))
    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_params)
    if any(s is None for s in jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: s is None)):
        return convert(params)
    return jax.jit(convert, out_shardings=shardings)(params)


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


# --------------------------------------------------------------------------
# Shipped checkpoints: parameters in bfloat16 with a manifest of checksums.
# --------------------------------------------------------------------------

MANIFEST_FILE = "MANIFEST.json"
RETRAIN_HINT = "pass --config.retrain=True to train every stage from scratch instead"


def file_sha256(path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest()


def _flat(params: Any) -> dict[str, np.ndarray]:
    from flax import traverse_util

    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def write_pretrained(
    out_dir: str,
    stage_dirs: dict[str, str],
    vocab_path: str,
    stage_info: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the newest checkpoint of each stage as `out_dir/STAGE.npz` (bfloat16,
    stored as uint16 bits), the vocabulary as `spm.model` and `MANIFEST.json`: per
    stage its step, architecture and `stage_info[stage]` (its "recipe": the config
    fields `install_pretrained` checks; training time, final metrics), and the
    sha256 of every file.

    Returns:
      The manifest.
    """

    fs.makedirs(out_dir)
    manifest: dict[str, Any] = {"stages": {}, "files": {}, **(extra or {})}
    for stage, stage_dir in stage_dirs.items():
        model = recorded_model(stage_dir)
        if model is None:
            raise CheckpointError(f"{stage_dir} records no architecture ({MODEL_FILE})")
        params, step = restore_params_at(
            stage_dir, abstract_params_on_one_device(model), stage, fallback=False
        )
        arrays = {
            name: np.asarray(value, jnp.bfloat16).view(np.uint16)
            for name, value in _flat(params).items()
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        fs.write_bytes(os.path.join(out_dir, f"{stage}.npz"), buffer.getvalue())
        manifest["stages"][stage] = {
            "step": int(step),
            "params": models.count_params(params),
            "model": models.describe(model),
            **stage_info[stage],
        }
    fs.write_bytes(os.path.join(out_dir, "spm.model"), fs.read_bytes(vocab_path))
    for name in [f"{stage}.npz" for stage in stage_dirs] + ["spm.model"]:
        manifest["files"][name] = file_sha256(os.path.join(out_dir, name))
    fs.write_json(os.path.join(out_dir, MANIFEST_FILE), manifest, indent=2, default=str)
    return manifest


def read_pretrained_manifest(pretrained_dir: str) -> dict[str, Any]:
    path = os.path.join(pretrained_dir, MANIFEST_FILE)
    if not fs.exists(path):
        raise CheckpointError(
            f"No shipped checkpoints at {pretrained_dir} ({path} is missing); {RETRAIN_HINT}"
        )
    return fs.read_json(path)


def verified_pretrained_file(pretrained_dir: str, name: str) -> str:
    """The path of a shipped file after checking its sha256 against the manifest."""
    manifest = read_pretrained_manifest(pretrained_dir)
    path = os.path.join(pretrained_dir, name)
    expected = manifest["files"].get(name)
    if expected is None or not fs.exists(path):
        raise CheckpointError(f"Shipped checkpoint file {path} is missing; {RETRAIN_HINT}")
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"Shipped checkpoint file {path} is corrupt (sha256 {actual[:12]}..., manifest "
            f"says {expected[:12]}...); restore it with git checkout, or {RETRAIN_HINT}"
        )
    return path


def recipe_differences(shipped: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Dotted names of the fields where two (nested) recipes differ."""
    out = []
    for key in sorted(set(shipped) | set(wanted)):
        a, b = shipped.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{sub}" for sub in recipe_differences(a, b)]
        elif a != b and not (isinstance(a, list | tuple) and list(a) == list(b or ())):
            out.append(key)
    return out


def load_pretrained(pretrained_dir: str, stage: str) -> tuple[Any, Any]:
    """(model, float32 parameters) of a shipped checkpoint, verified by its checksum."""
    from flax import traverse_util

    entry = read_pretrained_manifest(pretrained_dir)["stages"].get(stage)
    if entry is None:
        raise CheckpointError(f"{pretrained_dir} ships no {stage!r} checkpoint; {RETRAIN_HINT}")
    path = verified_pretrained_file(pretrained_dir, f"{stage}.npz")
    with np.load(io.BytesIO(fs.read_bytes(path))) as stored:
        flat = {name: stored[name].view(jnp.bfloat16).astype(np.float32) for name in stored.files}
    params = traverse_util.unflatten_dict(flat, sep="/")
    model = models.from_description(entry["model"])
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    _check_same_tree(params, expected, stage, pretrained_dir)
    return model, params


def install_pretrained(
    pretrained_dir: str, stage: str, stage_dir: str, recipe: dict[str, Any], vocab_path: str
) -> dict[str, Any]:
    """Makes `stage_dir` a finished stage from the shipped checkpoint of `stage`.

    The file is verified against its checksum, and the stage's training recipe
    must be the one that made it (else the error names the differing fields);
    the parameters are written as an ordinary float32 checkpoint at the shipped
    step with the workdir's `model.json`, so everything downstream reads it like
    a stage trained here.

    Returns:
      The stage's manifest entry.
    """

    manifest = read_pretrained_manifest(pretrained_dir)
    entry = manifest["stages"].get(stage)
    if entry is None:
        raise CheckpointError(f"{pretrained_dir} ships no {stage!r} checkpoint; {RETRAIN_HINT}")
    differ = recipe_differences(entry["recipe"], recipe)
    if differ:
        raise CheckpointError(
            f"The {stage} stage's config differs from the recipe of the shipped checkpoint "
            f"in {', '.join(differ)}; {RETRAIN_HINT}"
        )
    model, params = load_pretrained(pretrained_dir, stage)
    checkpointer = Checkpointer(checkpoint_dir(stage_dir), async_save=False)
    checkpointer.save(entry["step"], params, None, meta={"pretrained": pretrained_dir}, force=True)
    checkpointer.close()
    write_model_description(stage_dir, model, vocab_path)
    return entry
