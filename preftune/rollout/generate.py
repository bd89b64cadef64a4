"""Rollouts: batched KV-cache sampling that records each sampled token's log-probability.

`TransformersBackend` samples with transformers' `generate` (prompts left-padded, KV cache,
`generation_batch_size` sequences per call) and returns a `RolloutBatch`: the responses cut
after their first EOS and, per response token, the policy's log-probability at sampling time,
log softmax(logits / temperature) over the full vocabulary. That is the quantity a training
forward computes (`preftune.ops.logprobs.gather_token_logps`), so a trainer can log the gap
between the two. With top_p < 1 or top_k > 0 the tokens are drawn from the truncated
distribution while these log-probs are the full one's: the samples are then slightly
off-policy with respect to them (RL trainers warn about it, see rollout/rl_setup.py).

The optional vLLM engine is in rollout/vllm_backend.py; rollout/backends.py picks one by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from peft import PeftModel
from torch import Tensor
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from preftune.models.loading import token_id
from preftune.rollout.config import SamplingConfig


@dataclass
class RolloutBatch:
    """N sampled responses and their sampling-time token log-probs (tensors on the CPU).

    With k samples per prompt, the k samples of a prompt are consecutive: p0, p0, ..., p1, p1, ...
    """

    prompt_ids: list[list[int]]
    """(N,) the prompt of each response."""
    response_ids: list[list[int]]
    """(N,) response tokens, cut right after the first EOS (kept); without EOS when cut at max_new_tokens."""
    logps: Tensor
    """(N, T) float32 log-prob of each response token under the policy at sampling time, from
    logits / temperature over the full vocabulary (temperature 1 when greedy); 0 where mask is False."""
    mask: Tensor
    """(N, T) bool, True at response tokens (EOS included). T = the longest response (>= 1)."""
    ended: Tensor
    """(N,) bool, True when the response ended with EOS (False: cut at max_new_tokens)."""

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        if len(self.response_ids) != n or self.ended.shape != (n,) or self.logps.shape != self.mask.shape:
            raise ValueError(
                f"RolloutBatch fields disagree: {n} prompts, {len(self.response_ids)} responses, "
                f"ended {tuple(self.ended.shape)}, logps {tuple(self.logps.shape)}, mask {tuple(self.mask.shape)}."
            )
        if self.mask.dim() != 2 or self.mask.shape[0] != n or self.mask.shape[1] < 1:
            raise ValueError(f"mask must be (N={n}, T >= 1), got {tuple(self.mask.shape)}.")
        if (
            self.mask.dtype != torch.bool
            or self.ended.dtype != torch.bool
            or self.logps.dtype != torch.float32
        ):
            raise ValueError(
                f"mask and ended must be bool and logps float32, got {self.mask.dtype}, {self.ended.dtype}, "
                f"{self.logps.dtype}."
            )
        lengths = torch.tensor([len(r) for r in self.response_ids], device=self.mask.device)
        if not torch.equal(
            self.mask, torch.arange(self.mask.shape[1], device=self.mask.device) < lengths[:, None]
        ):
            raise ValueError(
                "mask must be True exactly at the first len(response_ids[i]) positions of row i."
            )

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> Tensor:
        """(N,) long, the number of response tokens (EOS included)."""
        return self.mask.sum(dim=-1)

    @staticmethod
    def concat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """The batches one after the other, T padded to the longest."""
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch.")
        width = max(b.mask.shape[1] for b in batches)
        return RolloutBatch(
            prompt_ids=[p for b in batches for p in b.prompt_ids],
            response_ids=[r for b in batches for r in b.response_ids],
            logps=torch.cat([_pad_columns(b.logps, width, 0.0) for b in batches]),
            mask=torch.cat([_pad_columns(b.mask, width, False) for b in batches]),
            ended=torch.cat([b.ended for b in batches]),
        )

    @staticmethod
    def from_lists(
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        token_logps: list[list[float]],
        ended: list[bool],
    ) -> RolloutBatch:
        """A batch from per-response lists (token_logps[i] has one value per token of response_ids[i])."""
        width = max([1] + [len(r) for r in response_ids])
        logps = torch.zeros((len(response_ids), width), dtype=torch.float32)
        for row, (response, values) in enumerate(zip(response_ids, token_logps, strict=True)):
            if len(values) != len(response):
                raise ValueError(f"Response {row} has {len(response)} tokens but {len(values)} log-probs.")
            logps[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in response_ids], dtype=torch.long)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            logps=logps,
            mask=torch.arange(width) < lengths[:, None],
            ended=torch.tensor(ended, dtype=torch.bool),
        )


def _pad_columns(values: Tensor, width: int, fill: float | bool) -> Tensor:
    """(N, t) -> (N, width), filled with `fill` on the right."""
    out = values.new_full((values.shape[0], width), fill)
    out[:, : values.shape[1]] = values
    return out


def check_rollout_request(prompts: list[list[int]], seed: int, num_samples: int) -> None:
    """The checks every backend's generate() runs on its arguments."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate() needs at least one prompt and every prompt needs at least one token.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids and attention mask with the prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


class _SampledTokenLogps(LogitsProcessor):
    """Records log p(sampled token) at each step, keeping one (B, V) tensor instead of (steps, B, V).

    transformers (checked in 5.24, generation/utils.py `_get_logits_processor`) runs the processors
    passed to generate() before its temperature / top-k / top-p warpers, so `scores` here are the
    model's logits (the generation config is otherwise empty, see `_rollout_mode`). Call t stores
    log softmax(logits_t / temperature); call t+1 reads the token sampled at step t, the last of
    `input_ids`, and gathers its log-prob. The last step's token is gathered by `token_logps`.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: Tensor | None = None  # (B, V) log-probs of the latest step
        self.picked: list[Tensor] = []  # one (B,) per step whose token is known

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.picked.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def token_logps(self, tokens: Tensor) -> Tensor:
        """(B, S) log-probs of the S generated `tokens` (B, S)."""
        steps = tokens.shape[1]
        if len(self.picked) < steps:  # the last step ran no further call (generation may run past it)
            assert self.previous is not None and len(self.picked) == steps - 1
            self.picked.append(self.previous.gather(-1, tokens[:, -1:]).squeeze(-1))
        return torch.stack(self.picked[:steps], dim=1)


def request_seed(seed: int, key: int) -> int:
    """A well-mixed 32-bit seed for the prompt with `key` in a call seeded `seed`."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """x * constant mod 2**32 for int64 `x` in [0, 2**32), without int64 overflow (16-bit halves)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (the "lowbias32" mixer) of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(seeds: Tensor, step: int, vocab_size: int) -> Tensor:
    """(B, V) float64 uniforms in (0, 1), a pure function of (row seed, step, token id).

    A counter-based generator: no state, computed on the seeds' device in one batched call, and
    a row's numbers never depend on the other rows.
    """
    counter = _hash32((seeds[:, None] + _hash32(torch.tensor(step & _MASK32, device=seeds.device))) & _MASK32)
    tokens = torch.arange(vocab_size, device=seeds.device)[None, :]  # (1, V)
    bits = _hash32((counter + _hash32(tokens)) & _MASK32)  # (B, V)
    return (bits.double() + 0.5) / 2**32


class _RowSeededSampler(LogitsProcessor):
    """Samples each row from its own random stream: Gumbel-max over the warped logits.

    argmax(logits / temperature, top-k and top-p filtered, + Gumbel noise) is an exact draw from the
    filtered softmax, so generate() runs greedily on these scores. The noise of row r at step t is
    `keyed_uniform` of (its seed, t): its tokens depend only on its own seed and prefix, never on
    the other rows of the batch.
    """

    def __init__(self, seeds: list[int], config: SamplingConfig) -> None:
        self.seeds = torch.tensor([seed & _MASK32 for seed in seeds], dtype=torch.long)
        self.step = 0
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(config.temperature)]
        if config.top_k > 0:
            warpers.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1:
            warpers.append(TopPLogitsWarper(config.top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = self.warpers(input_ids, scores.float())  # (B, V)
        uniform = keyed_uniform(self.seeds.to(warped.device), self.step, warped.shape[-1])
        self.step += 1
        gumbel = -torch.log(-torch.log(uniform))  # (B, V) float64
        return cast(torch.FloatTensor, warped + gumbel.to(warped.dtype))


def stop_token_ids(model: PreTrainedModel | PeftModel, eos_token_id: int) -> list[int]:
    """The tokenizer's EOS and every end token of the checkpoint's generation config (chat models end a
    turn with their own token, e.g. <|im_end|> or <|eot_id|>): a response ends at the first of them."""
    configured = _causal_lm(model).generation_config.eos_token_id
    extra = configured if isinstance(configured, list) else [] if configured is None else [configured]
    return [eos_token_id, *(i for i in extra if i != eos_token_id)]


def _causal_lm(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    assert isinstance(base, PreTrainedModel)
    return base


@contextlib.contextmanager
def _rollout_mode(model: PreTrainedModel | PeftModel) -> Iterator[None]:
    """Eval mode (dropout off) and an empty generation config for the duration; both restored after.

    The checkpoint's generation_config.json (repetition_penalty, top_k, ...) would otherwise fill
    every setting SamplingConfig leaves unset and change the logits before they are recorded.
    """
    lm = _causal_lm(model)
    modes = [(module, module.training) for module in model.modules()]
    saved_config = lm.generation_config
    model.eval()
    lm.generation_config = GenerationConfig()
    try:
        yield
    finally:
        lm.generation_config = saved_config
        for module, training in modes:
            module.training = training


class TransformersBackend:
    """Sampling with transformers' `generate` on any device; the model may be a LoRA `PeftModel`.

    The model can be in training mode: generation runs in eval mode without gradients and restores
    each module's mode. The global torch RNG state is unchanged afterwards.
    """

    def __init__(self, model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.eos_token_id = token_id(tokenizer, "eos")
        self.stop_token_ids = stop_token_ids(model, self.eos_token_id)
        self.pad_token_id = token_id(tokenizer, "pad")

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        config: SamplingConfig,
        seed: int,
        num_samples: int = 1,
        prompt_keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """`num_samples` responses per prompt (a prompt's samples consecutive); the same seed gives
        the same samples for the same prompts, config and generation_batch_size.

        With `prompt_keys` (one int per prompt, e.g. its position in the global batch), each row draws
        from its own generator seeded by (seed, key, sample index): a prompt's samples then do not
        depend on the batch around it, on generation_batch_size or on the process that samples it.
        """
        check_rollout_request(prompts, seed, num_samples)
        repeated = [p for p in prompts for _ in range(num_samples)]
        row_seeds: list[int] | None = None
        if prompt_keys is not None:
            if len(prompt_keys) != len(prompts):
                raise ValueError(f"Got {len(prompt_keys)} prompt_keys for {len(prompts)} prompts.")
            row_seeds = [
                request_seed(seed, key * num_samples + j) for key in prompt_keys for j in range(num_samples)
            ]
        size = config.generation_batch_size
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), _rollout_mode(self.model):
            torch.manual_seed(seed)  # generate() samples with the global RNG; fork_rng restores it
            chunks = [
                self._generate_chunk(
                    repeated[i : i + size], config, None if row_seeds is None else row_seeds[i : i + size]
                )
                for i in range(0, len(repeated), size)
            ]
        return RolloutBatch.concat(chunks)

    def _generate_chunk(
        self, prompts: list[list[int]], config: SamplingConfig, row_seeds: list[int] | None
    ) -> RolloutBatch:
        greedy = config.temperature == 0
        recorder = _SampledTokenLogps(1.0 if greedy else config.temperature)
        processors: list[LogitsProcessor] = [recorder]
        sample = not greedy
        if row_seeds is not None and not greedy:  # the sampler draws the tokens; generate() takes its argmax
            processors.append(_RowSeededSampler(row_seeds, config))
            sample = False
        settings = GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=sample,
            temperature=config.temperature if sample else None,
            top_p=config.top_p if sample else None,
            top_k=config.top_k if sample else None,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
        )
        ids, attention = left_pad(prompts, self.pad_token_id)  # (B, P)
        device = _causal_lm(self.model).device
        # PeftModel forwards generate to its base model; pyright cannot see GenerationMixin.generate.
        generate = cast(GenerationMixin, self.model).generate  # pyright: ignore[reportAttributeAccessIssue]
        out = generate(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            generation_config=settings,
            logits_processor=LogitsProcessorList(processors),
        )
        tokens = out[:, ids.shape[1] :]  # (B, S) generated tokens; pads after a row's EOS
        is_eos = torch.isin(tokens, torch.tensor(self.stop_token_ids, device=tokens.device))
        ended = is_eos.any(dim=-1)  # (B,)
        lengths = torch.where(ended, is_eos.int().argmax(dim=-1) + 1, tokens.shape[1])  # up to the first EOS
        width = int(lengths.max())
        mask = torch.arange(width, device=tokens.device) < lengths[:, None]  # (B, T)
        logps = recorder.token_logps(tokens)[:, :width].masked_fill(~mask, 0.0)
        return RolloutBatch(
            prompt_ids=prompts,
            response_ids=[row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)],
            logps=logps.cpu(),
            mask=mask.cpu(),
            ended=ended.cpu(),
        )


def sample_responses(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    config: SamplingConfig,
    seed: int = 0,
) -> list[list[int]]:
    """Response token ids per prompt, cut after the first EOS (EOS kept when generated)."""
    return TransformersBackend(model, tokenizer).generate(prompts, config, seed).response_ids
