r"""Per-device memory and compile plan of a config on its slice, without a slice.

  python -m distillspec_jax.plan --config configs/paper/t5.py:task=xsum,target=xxl,stage=distill
  python -m distillspec_jax.plan --config configs/paper/t5.py:task=xsum,target=xxl,stage=evaluate

builds the config's (data, model) mesh on N simulated CPU devices, then lowers
and compiles, on abstract arrays (nothing is allocated), what the run executes:
the train step (supervised, or DistillSpec's step including its on-policy
generation) and, for a distillation config, the speculative sampler of the
(target, draft) pair at the config's batch and lengths. For each it prints per
device: parameter, optimizer-state, frozen-target and KV-cache bytes (from the
shardings), XLA's own accounting of arguments, outputs and temporaries (its
memory analysis of the compiled SPMD program, which is per device), the
compile time, and whether the total fits a chip of the slice. An evaluation
config (`python -m distillspec_jax.evaluate`'s) is planned on one host of its
slice, as `evaluate` runs: its speculative sampler with the models split by
`mesh_shape` over that host's chips (`plan_evaluation`).

N and the chip come from `config.accelerator` (say 'v4-64': 32 v4 chips of 32
GiB), or --num_devices / --accelerator. The compiler is XLA's CPU backend: its
buffer assignment is not the TPU's, so read the totals as an estimate of the
same program, not as the TPU's exact peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

# HBM per chip (GiB) of the slice families a config may name.
CHIP_MEMORY_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0}
GIB = 1024**3


def parse_accelerator(name: str) -> tuple[str, int]:
    """(chip family, number of chips) of an accelerator type like 'v4-64'.

    v4 and v5p type names count TensorCores (two per chip); v5e
    ('v5litepod-16' or 'v5e-16') counts chips. JAX has one device per chip.
    """
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod)-(\d+)", name.strip())
    if not match:
        raise ValueError(
            f"Unknown accelerator {name!r}; expected v4-N, v5p-N, v5e-N or v5litepod-N"
        )
    family, count = match.group(1), int(match.group(2))
    if family == "v5litepod":
        family = "v5e"
    chips = count // 2 if family in ("v4", "v5p") else count
    if chips < 1:
        raise ValueError(f"Accelerator {name!r} has no whole chip")
    return family, chips


@dataclasses.dataclass
class PartPlan:
    """What one compiled program needs on each device (bytes)."""

    name: str
    compile_seconds: float
    params: int  # the trained (or, for the sampler, both) models' parameters.
    opt_state: int
    target_params: int
    kv_cache: int
    arguments: int  # XLA: every input buffer (parameters, state, batch).
    outputs: int
    aliased: int  # outputs written into donated inputs.
    temporaries: int
    resident: int = 0  # held beside the program: the drafts `evaluate` keeps loaded.

    @property
    def total(self) -> int:
        """Live at once per device: inputs, new outputs (not donated), temporaries (and
        what is resident beside them)."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _cache_bytes(cache_shapes: Any, mesh: Any) -> int:
    """Per-device bytes of a decoding cache: batch split over `data`, heads over
    `model` (the logical constraints the attention puts on it), where they divide."""
    import jax
    import numpy as np

    data, width = mesh.shape["data"], mesh.shape["model"]
    total = 0
    for leaf in jax.tree_util.tree_leaves(cache_shapes):
        shape = list(leaf.shape)
        if len(shape) >= 4:  # [(layers,) B, H, M, D]
            b, h = len(shape) - 4, len(shape) - 3
            shape[b] //= data if shape[b] % data == 0 else 1
            shape[h] //= width if shape[h] % width == 0 else 1
        elif shape and shape[0] % data == 0:  # encoder mask [B, Le]
            shape[0] //= data
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _batch(config: Any, model: Any, sharding: Any) -> dict[str, Any]:
    """The abstract global training batch of the config (T5X feature names)."""
    import jax
    import jax.numpy as jnp

    from distillspec_jax import models

    batch, data = config.batch_size, config.data
    if models.is_encoder_decoder(model):
        enc, dec = data.max_input_length, data.max_target_length
        shapes = {"encoder_input_tokens": (batch, enc)}
    else:  # Prompt and response in one sequence.
        dec = data.max_input_length + data.max_target_length
        shapes = {}
    shapes.update(
        decoder_input_tokens=(batch, dec),
        decoder_target_tokens=(batch, dec),
        decoder_loss_weights=(batch, dec),
    )
    return {
        k: jax.ShapeDtypeStruct(
            s, jnp.float32 if k == "decoder_loss_weights" else jnp.int32, sharding=sharding
        )
        for k, s in shapes.items()
    }


def _compile(fn: Any, *args: Any, mesh: Any, rules: Any, **kwargs: Any) -> tuple[Any, float]:
    from distillspec_jax import partitioning

    start = time.perf_counter()
    with partitioning.activate(mesh, rules):
        compiled = fn.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


def _memory(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    return {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
    }


def _sampler_part(
    name: str,
    target_model: Any,
    abstract_target: Any,
    draft_model: Any,
    draft_params: Any,
    mesh: Any,
    rules: Any,
    rows: int,
    input_length: int,
    gamma: int,
    max_new_tokens: int,
    greedy: bool,
) -> PartPlan:
    """The speculative sampler of (target, draft) on `mesh`, `rows` prompts of
    `input_length` tokens (the encoder's, or the decoder prompt's), compiled."""
    import jax
    import jax.numpy as jnp

    from distillspec_jax import models, partitioning, sampling

    data_size = mesh.shape["data"]
    row_sharding = (
        partitioning.data_sharding(mesh) if rows % data_size == 0 else partitioning.replicated(mesh)
    )
    encoder = models.is_encoder_decoder(draft_model)
    prompt_len = 1 if encoder else max(int(input_length), 1)
    enc = (
        jax.ShapeDtypeStruct((rows, input_length), jnp.int32, sharding=row_sharding)
        if encoder
        else None
    )
    cache_length = sampling.speculative_cache_length(prompt_len, max_new_tokens, gamma)
    cache_bytes = 0
    for m, p in ((target_model, abstract_target), (draft_model, draft_params)):
        shapes = jax.eval_shape(lambda p, e, m=m: m.init_cache(p, rows, cache_length, e), p, enc)
        cache_bytes += _cache_bytes(shapes, mesh)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=partitioning.replicated(mesh))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioning.replicated(mesh))
    target_model, draft_model = models.paired(target_model, draft_model)
    compiled, seconds = _compile(
        sampling.speculative_jit,
        target_model,
        draft_model,
        abstract_target,
        draft_params,
        jax.ShapeDtypeStruct((rows, prompt_len), jnp.int32, sharding=row_sharding),
        jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=row_sharding),
        key,
        enc,
        scalar,
        scalar,
        mesh=mesh,
        rules=rules,
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        lenience="none",
        eos_id=1,
        cache_length=cache_length,
    )
    return PartPlan(
        name=name,
        compile_seconds=seconds,
        params=_per_device_bytes(draft_params),
        opt_state=0,
        target_params=_per_device_bytes(abstract_target),
        kv_cache=cache_bytes,
        **_memory(compiled),
    )


def plan(config: Any, devices: list[Any]) -> dict[str, Any]:
    """Compiles the config's programs on `devices`; returns the plan (JSON-able)."""
    import jax

    from distillspec_jax import checkpoints, models, partitioning, trainer
    from distillspec_jax import train as train_lib

    check_training_config(config)
    mesh = partitioning.create_mesh(config.mesh_shape, devices=devices)
    # As train: the gin file, else the architecture init / target checkpoint names (a
    # Hugging Face directory's config.json; weights are not read).
    vocab = config.data.model_vocab_size or config.data.vocab_size
    model = train_lib.configured_model(config, "model", vocab)
    rules = partitioning.config_rules(config)
    opt_cfg = config.optimizer
    trainer.check_batch_size(config.batch_size, mesh, opt_cfg.microbatches)

    target_model = abstract_target = None
    if config.mode == "distill":
        target_model = train_lib.configured_model(config, "target", vocab)
    train, target_shardings = train_lib.make_trainer(config, model, mesh, target_model)
    if target_model is not None:
        abstract_target = checkpoints.abstract_params(
            target_model, target_shardings, config.get("target_param_dtype", "")
        )
    state = train.abstract_state()
    batch = _batch(config, model, train.batch_sharding)
    compiled, seconds = _compile(
        train.train_step_jit, state, batch, abstract_target, mesh=mesh, rules=rules
    )
    target_bytes = _per_device_bytes(abstract_target) if abstract_target is not None else 0
    parts = [
        PartPlan(
            name="distill step" if config.mode == "distill" else "train step",
            compile_seconds=seconds,
            params=_per_device_bytes(state.params),
            opt_state=_per_device_bytes(state.opt_state),
            target_params=target_bytes,
            kv_cache=0,
            **_memory(compiled),
        )
    ]

    if config.mode == "distill":
        spec = config.speculative_eval
        parts.append(
            _sampler_part(
                "speculative sampler",
                target_model,
                abstract_target,
                model,
                state.params,
                mesh,
                rules,
                config.batch_size,
                config.data.max_input_length,
                int(spec.gamma),
                int(spec.max_new_tokens),
                float(spec.temperature) == 0.0,
            )  # fmt: skip
        )
    return {
        "mesh": dict(mesh.shape),
        "num_devices": len(devices),
        "batch_size": int(config.batch_size),
        "models": {
            "trained": models.describe(model)["config"],
            **({"target": models.describe(target_model)["config"]} if target_model else {}),
        },
        "parameters": {
            "trained": models.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0))),
            **(
                {"target": models.count_params(abstract_target)}
                if abstract_target is not None
                else {}
            ),
        },
        "parts": [{**dataclasses.asdict(p), "total": p.total} for p in parts],
    }


def format_plan(result: dict[str, Any]) -> str:
    """The plan as a table (GiB per device; MiB when every total is under 1 GiB)."""
    small = max(part["total"] for part in result["parts"]) < GIB
    unit, scale = ("MiB", 1024**2) if small else ("GiB", GIB)

    def _gib(n: int) -> str:
        return f"{n / scale:.2f}"

    chip, memory = result.get("chip"), result.get("chip_memory_gib")
    mesh = ", ".join(f"{k}={v}" for k, v in result["mesh"].items())
    head = (
        f"{result.get('config', '')}: {result['num_devices']} devices, mesh ({mesh}), "
        f"batch {result['batch_size']}" + (f", {chip} ({memory:g} GiB per chip)" if chip else "")
    )
    columns = ("compile s", "params", "opt state", "target", "kv cache", "temp", "total", "fits")
    lines = [head, f"{unit + ' per device':<20}" + "".join(f"{c:>11}" for c in columns)]
    for part in result["parts"]:
        fits = "-" if memory is None else ("yes" if part["total"] <= memory * GIB else "NO")
        cells = (
            f"{part['compile_seconds']:.1f}",
            _gib(part["params"]),
            _gib(part["opt_state"]),
            _gib(part["target_params"]),
            _gib(part["kv_cache"]),
            _gib(part["temporaries"]),
            _gib(part["total"]),
            fits,
        )
        lines.append(f"{part['name']:<20}" + "".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def _simulate_devices(num_devices: int) -> list[Any]:
    """`num_devices` CPU devices: simulated here unless JAX already started."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not _backend_started():
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
        )
    import jax

    devices = jax.devices("cpu")
    if len(devices) < num_devices:
        raise ValueError(
            f"JAX already runs with {len(devices)} CPU devices, fewer than {num_devices}: "
            f"run the plan in a fresh process"
        )
    return devices[:num_devices]


def _backend_started() -> bool:
    """Whether JAX has created its devices (then the device count is fixed)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return started() if started is not None else bool(getattr(xla_bridge, "_backends", True))


def is_evaluation_config(config: Any) -> bool:
    """A `python -m distillspec_jax.evaluate` config (a target and drafts, no mode)."""
    return "drafts" in config and "target" in config and "mode" not in config


def check_training_config(config: Any) -> None:
    if config.get("mode") not in ("supervised", "distill"):
        raise ValueError(
            "plan takes a training config (mode 'supervised' or 'distill') or an evaluation "
            "config (a target and drafts)"
        )


# Chips of one host (evaluate runs on one host, worker 0: launch.sh).
HOST_CHIPS = {"v4": 4, "v5p": 4, "v5e": 8}


def _evaluated_model(source: Any, config: Any, what: str) -> Any:
    """A model source's architecture for the plan (`interop.resolve_model`): its gin
    file with the config's bindings when set (the paper configs set them: their
    workdirs may be buckets), else what the directory holds."""
    from distillspec_jax import fs, interop

    vocab = config.data.model_vocab_size or config.data.vocab_size
    if not source.gin_file and (fs.is_remote(source.path) or not fs.exists(source.path)):
        raise ValueError(
            f"plan cannot read {what}.path={source.path}: set {what}.gin_file (and the "
            f"config's gin_bindings) to plan it"
        )
    return interop.resolve_model(
        "" if source.gin_file else source.path,
        source.gin_file,
        bindings=config.gin_bindings,
        vocab_size=vocab,
        what=f"{what}.path",
        hint=f"; set {what}.gin_file to the gin file it was trained with",
    )


def plan_evaluation(config: Any, devices: list[Any]) -> dict[str, Any]:
    """The evaluation's speculative sampler on one host's `devices` (config.mesh_shape
    over them, as `evaluate` builds it) at its batch, input length, largest gamma and
    budget, sampled if any temperature is > 0: per draft architecture, with every
    model's parameters loaded (the other drafts' are resident beside the program)."""

    from distillspec_jax import checkpoints, evaluate, models, partitioning

    evaluate.validate(config)
    mesh = evaluate.evaluation_mesh(config, devices) or partitioning.create_mesh(
        (1, 1), devices=devices[:1]
    )
    target = _evaluated_model(config.target, config, "target")
    drafts = {
        name: _evaluated_model(source, config, f"drafts.{name}")
        for name, source in config.drafts.items()
    }

    def abstract(model):  # What evaluate.load_params restores.
        shardings = partitioning.param_shardings(model, mesh)
        return checkpoints.abstract_params(model, shardings, config.param_dtype)

    abstract_target = abstract(target)
    abstract_drafts = {name: abstract(m) for name, m in drafts.items()}
    draft_bytes = {name: _per_device_bytes(p) for name, p in abstract_drafts.items()}
    parts, seen = [], {}
    for name, model in drafts.items():
        key = json.dumps(models.describe(model), sort_keys=True)
        if key in seen:
            continue
        seen[key] = name
        part = _sampler_part(
            f"evaluate, {name}", target, abstract_target, model, abstract_drafts[name],
            mesh, partitioning.LOGICAL_AXIS_RULES, int(config.batch_size),
            int(config.data.max_input_length), max(int(g) for g in config.gammas),
            int(config.max_new_tokens), max(config.temperatures) == 0.0,
        )  # fmt: skip
        part.resident = sum(b for n, b in draft_bytes.items() if n != name)
        parts.append(part)
    return {
        "mesh": dict(mesh.shape),
        "num_devices": len(devices),
        "batch_size": int(config.batch_size),
        "models": {
            "target": models.describe(target)["config"],
            **{f"draft {name}": models.describe(m)["config"] for name, m in drafts.items()},
        },
        "parameters": {
            "target": models.count_params(abstract_target),
            **{f"draft {name}": models.count_params(p) for name, p in abstract_drafts.items()},
        },
        "parts": [{**dataclasses.asdict(p), "total": p.total} for p in parts],
    }


def run(config: Any, num_devices: int = 0, accelerator: str = "") -> dict[str, Any]:
    """The plan of `config` on its slice (or `num_devices` / `accelerator`); of an
    evaluation config, on one host of it."""
    accelerator = accelerator or config.get("accelerator", "") or ""
    chip, chips = parse_accelerator(accelerator) if accelerator else (None, 0)
    if is_evaluation_config(config):
        num_devices = num_devices or (min(HOST_CHIPS[chip], chips) if chip else 0)
        if not num_devices:
            raise ValueError(
                "an evaluation runs on one host: pass --num_devices (its chips) or "
                "--accelerator (or set config.accelerator)"
            )
        result = plan_evaluation(config, _simulate_devices(num_devices))
        result.update(accelerator=accelerator, chip=chip)
        result["chip_memory_gib"] = CHIP_MEMORY_GIB[chip] if chip else None
        return result
    check_training_config(config)  # Before the device count, which a study config lacks.
    num_devices = num_devices or chips
    if not num_devices:
        shape = [int(s) for s in config.mesh_shape]
        if -1 in shape:
            raise ValueError(
                f"mesh_shape {tuple(shape)} leaves the device count open: pass --num_devices "
                f"or --accelerator (or set config.accelerator)"
            )
        num_devices = 1
        for s in shape:
            num_devices *= s
    result = plan(config, _simulate_devices(num_devices))
    result["accelerator"] = accelerator
    result["chip"] = chip
    result["chip_memory_gib"] = CHIP_MEMORY_GIB[chip] if chip else None
    return result


def main(argv: list[str] | None = None) -> None:
    from absl import flags

    from distillspec_jax import cli, evaluate

    def define_flags():
        flags.DEFINE_integer("num_devices", 0, "Simulated devices (default: config.accelerator's).")
        flags.DEFINE_string("accelerator", "", "Slice type, e.g. v4-64 (default: config's).")
        flags.DEFINE_string("json", "", "Also write the plan as JSON to this file.")

    def plan_and_print(values):
        result = run(values.config, values.num_devices, values.accelerator)
        result["config"] = _config_name(argv or sys.argv)
        print(format_plan(result))
        if values.json:
            with open(values.json, "w") as f:
                json.dump(result, f, indent=2)

    cli.run(
        "plan",
        plan_and_print,
        config_help="Training or evaluation config file.",
        define_flags=define_flags,
        reads_data=lambda config: False,
        errors=(evaluate.EvaluationError,),
        argv=argv,
    )


def _config_name(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


if __name__ == "__main__":
    main()
