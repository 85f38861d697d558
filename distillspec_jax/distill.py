"""Where distillation sequences come from, and the DistillSpec loss.

  loss = E_{(x, y) ~ G} [ (1/|y|) sum_t D(p(. | x, y<t) || q(. | x, y<t)) ]

with the target p frozen (under stop_gradient) and no gradient through
sampling. The data source G is one of

  fixed     the batch's ground-truth y;
  teacher   y ~ target at `sample_temperature` (sequence-level KD);
  student   y ~ the current draft parameters (on-policy);
  mixture   per batch: with probability `mixture_lambda` student, else
            `mixture_other` (fixed or teacher), as GKD's lambda.

The objective is a divergence between the two models' distributions at every position
of those sequences, or `ce`: the draft's cross-entropy on the sequences' tokens (hard
labels). With teacher data, `ce` is response regeneration as draft-training frameworks
do it (the draft trained on the target's own answers to the training prompts; SeqKD
with the target's samples as labels); with fixed data it is supervised training.

Named recipes (DistillSpec paper, Table 1) fix the divergence and source:
SupervisedKD = FKL on fixed data, SeqKD = FKL on teacher data, ImitKD = FKL on
fixed + student data, f-Distill = TVD on teacher + student data, on-policy GKD
= generalized JSD on student data, and DistillSpec = any divergence and source.

Batches use the T5X feature names of `models.py`. For a decoder-only batch the
prompt of each row is the decoder input up to its first loss-weighted target.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from distillspec_jax import divergences, models, sampling

Array = jax.Array
Batch = dict[str, Array]

SOURCES = ("fixed", "teacher", "student", "mixture")
# Objectives: a divergence of divergences.DIVERGENCES, or the draft's cross-entropy on
# the distillation sequences' tokens.
HARD_LABELS = "ce"
OBJECTIVES = (*divergences.DIVERGENCES, HARD_LABELS)
# Branch order of the per-batch switch.
_BRANCHES = ("fixed", "teacher", "student")


def has_teacher_batches(source: str, mixture_other: str = "fixed") -> bool:
    """Whether a data source draws batches from the target: the sources whose target
    answers may be sampled ahead of the step (`DistillConfig.presampled`)."""
    return source == "teacher" or (source == "mixture" and mixture_other == "teacher")


RECIPES: dict[str, dict[str, Any]] = {
    "supervised_kd": dict(divergence="fkl", source="fixed"),
    "seq_kd": dict(divergence="fkl", source="teacher"),
    "imit_kd": dict(divergence="fkl", source="mixture", mixture_other="fixed"),
    "f_distill": dict(divergence="tvd", source="mixture", mixture_other="teacher"),
    "on_policy_gkd": dict(divergence="generalized_jsd", source="student"),
    "regenerated": dict(divergence="ce", source="teacher"),
    "distillspec": {},
}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """What the DistillSpec objective needs (hashable: it is a static jit argument)."""

    # Divergence name (OBJECTIVES: divergences.DIVERGENCES or 'ce') and its JSD beta.
    divergence: str = "fkl"
    beta: float = 0.5
    # Temperature applied to both models' logits inside the divergence.
    loss_temperature: float = 1.0
    # 'sequence' (token mean per sequence, then batch mean) or 'token'.
    reduction: str = "sequence"
    # Data source, see SOURCES.
    source: str = "student"
    # Mixture: probability of a student batch, and the source used otherwise.
    mixture_lambda: float = 0.5
    mixture_other: str = "fixed"
    # Sampling temperature of teacher / student generation (0 = greedy).
    sample_temperature: float = 1.0
    # End-of-sequence id, or a tuple of them: tokens after it are masked out of the loss.
    eos_id: int | tuple[int, ...] = 1
    # Teacher data sampled ahead of the step (distillspec_jax.teacher_data): the batch's
    # targets already are the target's samples, and the step reads them as given (a
    # mixture with the teacher draws its student batches from the same prompts).
    presampled: bool = False

    def __post_init__(self):
        if self.divergence not in OBJECTIVES:
            raise ValueError(f"Unknown divergence {self.divergence!r}; valid: {OBJECTIVES}")
        if self.source not in SOURCES:
            raise ValueError(f"Unknown data source {self.source!r}; valid: {SOURCES}")
        if self.mixture_other not in ("fixed", "teacher"):
            raise ValueError(
                f"mixture_other must be 'fixed' or 'teacher', got {self.mixture_other!r}"
            )
        if not 0.0 <= self.mixture_lambda <= 1.0:
            raise ValueError(f"mixture_lambda must lie in [0, 1], got {self.mixture_lambda}")
        if self.reduction not in divergences.REDUCTIONS:
            raise ValueError(
                f"Unknown reduction {self.reduction!r}; valid: {divergences.REDUCTIONS}"
            )
        if self.sample_temperature < 0 or self.loss_temperature <= 0:
            raise ValueError("sample_temperature must be >= 0 and loss_temperature > 0")
        if self.presampled and not has_teacher_batches(self.source, self.mixture_other):
            raise ValueError(
                f"Teacher data sampled ahead (distill.ahead_steps > 0) needs "
                f"source='teacher' (or a mixture with mixture_other='teacher'), got "
                f"source={self.source!r}, mixture_other={self.mixture_other!r}"
            )

    def source_probabilities(self) -> tuple[float, float, float]:
        """P(fixed), P(teacher), P(student) for one batch."""
        if self.source != "mixture":
            return tuple(float(b == self.source) for b in _BRANCHES)
        lam = self.mixture_lambda
        return (
            0.0 if self.mixture_other == "teacher" else 1.0 - lam,
            0.0 if self.mixture_other == "fixed" else 1.0 - lam,
            lam,
        )


def make_config(recipe: str = "distillspec", **overrides: Any) -> DistillConfig:
    """A DistillConfig from a named recipe plus overrides (overrides win)."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; valid: {sorted(RECIPES)}")
    return DistillConfig(**{**RECIPES[recipe], **overrides})


# --------------------------------------------------------------------------
# Building batches from generated sequences.
# --------------------------------------------------------------------------


def generate(
    model: models.BaseModel,
    params: Any,
    batch: Batch,
    rng: Array,
    temperature: float,
    eos_id: int | tuple[int, ...] | None,
) -> Batch:
    """A copy of `batch` whose targets are sampled from `model` (no gradient).

    Encoder-decoder: y ~ model(. | encoder inputs), up to the batch's target
    length. Decoder-only: each row's prompt is kept and the response after it
    is sampled, up to the batch's length. Loss weights cover the generated
    tokens up to and including EOS.
    """
    params = jax.lax.stop_gradient(params)
    batch_size, length = batch["decoder_target_tokens"].shape
    idx = jnp.arange(length)[None, :]
    if models.is_encoder_decoder(model):
        out = sampling.autoregressive_sample(
            model,
            params,
            jnp.zeros((batch_size, 1), jnp.int32),
            jnp.ones((batch_size,), jnp.int32),
            rng,
            max_new_tokens=length,
            temperature=temperature,
            eos_id=eos_id,
            encoder_inputs=batch["encoder_input_tokens"],
        )
        targets = out.sequences[:, 1 : length + 1]
        weights = idx < out.num_generated[:, None]
        inputs = out.sequences[:, :length]
    else:
        prompt_lengths = models.decoder_only_prompt_lengths(batch)
        out = sampling.autoregressive_sample(
            model,
            params,
            batch["decoder_input_tokens"],
            prompt_lengths,
            rng,
            max_new_tokens=length,
            temperature=temperature,
            eos_id=eos_id,
        )
        inputs = out.sequences[:, :length]
        targets = out.sequences[:, 1 : length + 1]
        start = prompt_lengths[:, None] - 1  # first response position in targets.
        weights = (idx >= start) & (idx < start + out.num_generated[:, None])
    targets = jnp.where(weights, targets, 0)
    # The batch's own dtypes (seqio gives int32 loss weights): a mixture switches
    # between this and the fixed batch, whose types must match.
    return {
        **batch,
        "decoder_input_tokens": inputs.astype(batch["decoder_input_tokens"].dtype),
        "decoder_target_tokens": targets.astype(batch["decoder_target_tokens"].dtype),
        "decoder_loss_weights": weights.astype(batch["decoder_loss_weights"].dtype),
    }


# --------------------------------------------------------------------------
# The objective.
# --------------------------------------------------------------------------


class Distiller:
    """DistillSpec objective for one (target, draft) pair and DistillConfig."""

    def __init__(
        self, target_model: models.BaseModel, draft_model: models.BaseModel, config: DistillConfig
    ):
        # Embeddings of two sizes (one tokenizer padded differently) are compared, and
        # sampled from, on the ids both have.
        target_model, draft_model = models.paired(target_model, draft_model)
        self.target_model = target_model
        self.draft_model = draft_model
        self.config = config

    def choose_source(self, rng: Array) -> Array:
        """Index into (fixed, teacher, student) for one batch."""
        probs = jnp.asarray(self.config.source_probabilities())
        return jax.random.choice(rng, 3, p=probs).astype(jnp.int32)

    def distillation_batch(
        self, draft_params: Any, target_params: Any, batch: Batch, rng: Array
    ) -> tuple[Batch, Array]:
        """The batch the loss is computed on, and the source index used."""
        cfg = self.config
        key_source, key_sample = jax.random.split(rng)
        probs = cfg.source_probabilities()
        branches = {
            "fixed": lambda: dict(batch),
            "teacher": lambda: generate(
                self.target_model,
                target_params,
                batch,
                key_sample,
                cfg.sample_temperature,
                cfg.eos_id,
            ),
            "student": lambda: generate(
                self.draft_model,
                draft_params,
                batch,
                key_sample,
                cfg.sample_temperature,
                cfg.eos_id,
            ),
        }
        if cfg.presampled:  # The batch's targets already are the target's samples.
            branches["teacher"] = lambda: dict(batch)
        used = [name for name, p in zip(_BRANCHES, probs, strict=True) if p > 0]
        if len(used) == 1:  # A single source: trace only that branch.
            return branches[used[0]](), jnp.int32(_BRANCHES.index(used[0]))
        source = self.choose_source(key_source)
        fns = [branches[name] for name in _BRANCHES]
        return jax.lax.switch(source, fns), source

    def loss(
        self,
        draft_params: Any,
        target_params: Any,
        batch: Batch,
        rng: Array,
        dropout_rng: Array | None = None,
        target_metrics: bool = True,
    ) -> tuple[Array, dict[str, Array]]:
        """The distillation loss (differentiable in draft_params only) and metrics.

        With hard labels (`ce`) the loss does not read the target's logits; they are
        computed only for the `token_tvd` metric, which `target_metrics=False` leaves out
        (a train step's cost is then the draft's alone)."""
        cfg = self.config
        data, source = self.distillation_batch(draft_params, target_params, batch, rng)
        data = jax.lax.stop_gradient(data)
        draft_logits = self.draft_model.logits(
            draft_params, data, deterministic=dropout_rng is None, dropout_rng=dropout_rng
        )
        target_logits = None
        if cfg.divergence != HARD_LABELS or target_metrics:
            target_logits = jax.lax.stop_gradient(
                self.target_model.logits(jax.lax.stop_gradient(target_params), data)
            )
        mask = data["decoder_loss_weights"]
        if cfg.divergence == HARD_LABELS:
            token_div = divergences.token_cross_entropy(draft_logits, data["decoder_target_tokens"])
        else:
            token_div = divergences.token_divergence(
                cfg.divergence, target_logits, draft_logits, cfg.loss_temperature, cfg.beta
            )
        loss = divergences.reduce(token_div, mask, cfg.reduction)
        ce = divergences.cross_entropy(draft_logits, data["decoder_target_tokens"], mask)
        metrics = {
            "loss": loss,
            "divergence": loss,
            "draft_cross_entropy": jax.lax.stop_gradient(ce.mean()),
            "num_tokens": mask.sum(),
        }
        if target_logits is not None:
            tvd = divergences.token_tvd(target_logits, draft_logits, cfg.loss_temperature)
            metrics["token_tvd"] = jax.lax.stop_gradient(divergences.reduce(tvd, mask, "token"))
        for i, name in enumerate(_BRANCHES):
            metrics[f"source_fraction/{name}"] = (source == i).astype(jnp.float32)
        return loss, metrics


def distill_loss(
    draft_params: Any,
    target_params: Any,
    batch: Batch,
    rng: Array,
    config: DistillConfig,
    target_model: models.BaseModel,
    draft_model: models.BaseModel,
) -> tuple[Array, dict[str, Array]]:
    """Functional form of `Distiller(target_model, draft_model, config).loss`."""
    return Distiller(target_model, draft_model, config).loss(
        draft_params, target_params, batch, rng
    )
