"""Rollouts: sampling-time log-probs equal a teacher-forced forward, seeding, EOS cuts, k samples,
LoRA, and the vLLM backend's import guard (vLLM itself needs a GPU and is not run here)."""

import ast
import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from preftune.rollout import (
    RolloutBatch,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    load_backend,
    sample_responses,
)
from preftune.rollout.vllm_backend import engine_options, merged_weights

PACKAGE = Path(__file__).resolve().parents[2] / "preftune"
EOS_BIAS = 4.0
"""Added to the EOS logit: p(EOS) is about 0.1 per step, so in 8 steps some responses end and some do not."""


def _tiny_llama(tokenizer, eos_bias: float = EOS_BIAS) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32) whose LM head has a bias towards EOS."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        head = torch.nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = eos_bias
    model.lm_head = head
    return model.eval()


@pytest.fixture(scope="module")
def policy(tiny_tokenizer):
    return _tiny_llama(tiny_tokenizer)


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    """Three prompts of different lengths, so the batch is left-padded."""
    texts = ["hello", "what is two plus two", "the quick brown fox jumps over a lazy dog hello world"]
    ids = [tiny_tokenizer(t)["input_ids"] for t in texts]
    assert len({len(i) for i in ids}) == 3
    return ids


@torch.no_grad()
def teacher_forced_logps(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """(len(response),) log softmax(logits / temperature) of each response token, one unpadded forward."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # positions predicting the response
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def check_consistent(batch: RolloutBatch, eos: int, max_new_tokens: int) -> None:
    """The RolloutBatch contract: cut after the first EOS, ended, mask, lengths, zeros outside the mask."""
    assert batch.logps.dtype == torch.float32 and batch.mask.dtype == torch.bool
    assert batch.mask.shape[1] == max(len(r) for r in batch.response_ids)
    assert batch.lengths.tolist() == [len(r) for r in batch.response_ids]
    assert torch.all(batch.logps[~batch.mask] == 0)
    assert torch.all(batch.logps[batch.mask] < 0)
    for response, ended in zip(batch.response_ids, batch.ended.tolist(), strict=True):
        assert eos not in response[:-1]  # EOS, when present, is the last token
        assert ended == (response[-1] == eos)
        assert ended or len(response) == max_new_tokens


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(0.7, 1.0, 0), (0.7, 0.8, 20), (1.3, 1.0, 5), (0.0, 1.0, 0)],
)
def test_sampling_logps_equal_a_teacher_forced_forward(
    policy, tiny_tokenizer, prompts, temperature, top_p, top_k
):
    """Left-padded, chunked (5 sequences per call), some rows ended early: every recorded log-prob is
    log softmax(logits / T) of the full vocabulary at that token (T = 1 when greedy), even with top-p/k."""
    config = SamplingConfig(
        max_new_tokens=8, temperature=temperature, top_p=top_p, top_k=top_k, generation_batch_size=5
    )
    batch = TransformersBackend(policy, tiny_tokenizer).generate(prompts, config, seed=1, num_samples=3)
    check_consistent(batch, tiny_tokenizer.eos_token_id, 8)
    assert len(batch) == 9 and batch.ended.any()
    for i, (prompt, response) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=True)):
        expected = teacher_forced_logps(policy, prompt, response, temperature or 1.0)
        torch.testing.assert_close(batch.logps[i, : len(response)], expected, atol=1e-4, rtol=0)


def test_same_seed_same_samples_and_the_global_rng_is_untouched(policy, tiny_tokenizer, prompts):
    backend, config = TransformersBackend(policy, tiny_tokenizer), SamplingConfig(max_new_tokens=8)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = backend.generate(prompts, config, seed=3, num_samples=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)  # the global seed does not matter, only `seed`
    again = backend.generate(prompts, config, seed=3, num_samples=2)
    assert first.response_ids == again.response_ids
    torch.testing.assert_close(first.logps, again.logps)
    other = backend.generate(prompts, config, seed=4, num_samples=2)
    assert other.response_ids != first.response_ids


def test_responses_are_cut_after_the_first_eos(policy, tiny_tokenizer, prompts):
    eos = tiny_tokenizer.eos_token_id
    config = SamplingConfig(max_new_tokens=8, generation_batch_size=7)
    batch = TransformersBackend(policy, tiny_tokenizer).generate(prompts, config, seed=0, num_samples=8)
    check_consistent(batch, eos, 8)
    assert batch.ended.any() and not batch.ended.all(), "the EOS bias should give both kinds of rows"
    assert batch.lengths[~batch.ended].eq(8).all()
    assert batch.lengths[batch.ended].lt(8).any()  # some ended early, with pads after them in their chunk


def test_num_samples_repeats_each_prompt_consecutively(policy, tiny_tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=6)
    batch = TransformersBackend(policy, tiny_tokenizer).generate(prompts, config, seed=0, num_samples=4)
    assert batch.prompt_ids == [p for p in prompts for _ in range(4)]
    for start in range(0, 12, 4):
        samples = {tuple(r) for r in batch.response_ids[start : start + 4]}
        assert len(samples) == 4, "k samples of a prompt should differ"


def test_top_k_1_is_greedy(policy, tiny_tokenizer, prompts):
    backend = TransformersBackend(policy, tiny_tokenizer)
    greedy = backend.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=0), seed=0)
    top1 = backend.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=1), seed=5)
    assert top1.response_ids == greedy.response_ids
    assert (
        greedy.response_ids
        == backend.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=0), 9).response_ids
    )


def test_the_checkpoints_generation_config_does_not_change_the_samples(tiny_tokenizer, prompts):
    """A generation_config.json with repetition_penalty / top_k must not distort sampling or the log-probs,
    also under a LoRA wrapper (peft copies the generation config into the base model in generate())."""
    model = _tiny_llama(tiny_tokenizer)
    config = SamplingConfig(max_new_tokens=8, temperature=0.8)
    plain = TransformersBackend(model, tiny_tokenizer).generate(prompts, config, seed=2)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.top_k = 3
    model.generation_config.no_repeat_ngram_size = 1
    identity_lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0
    for policy in (model, identity_lora):
        tuned = TransformersBackend(policy, tiny_tokenizer).generate(prompts, config, seed=2)
        assert tuned.response_ids == plain.response_ids
        torch.testing.assert_close(tuned.logps, plain.logps)
    assert model.generation_config.repetition_penalty == 5.0  # restored
    assert identity_lora.get_base_model().generation_config.repetition_penalty == 5.0


def test_lora_model_in_training_mode(policy, tiny_tokenizer, prompts):
    """LoRA dropout is on in training mode: logps match an eval-mode forward only if generation ran in eval.
    Each module's mode is restored (including a submodule left in eval) and no gradient is recorded."""
    lora = get_peft_model(
        copy.deepcopy(policy),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.train()
    frozen = lora.get_base_model().model.layers[0].mlp
    frozen.eval()
    modes = {name: module.training for name, module in lora.named_modules()}
    config = SamplingConfig(max_new_tokens=6, temperature=0.9)
    batch = TransformersBackend(lora, tiny_tokenizer).generate(prompts, config, seed=0, num_samples=2)
    assert {name: module.training for name, module in lora.named_modules()} == modes
    assert not batch.logps.requires_grad
    assert all(p.grad is None for p in lora.parameters())
    lora.eval()
    base_logps = teacher_forced_logps(policy, batch.prompt_ids[0], batch.response_ids[0], 0.9)
    for i, (prompt, response) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=True)):
        expected = teacher_forced_logps(lora, prompt, response, 0.9)
        torch.testing.assert_close(batch.logps[i, : len(response)], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(batch.logps[0, : len(batch.response_ids[0])], base_logps)  # the adapter is used


def test_sample_responses_and_load_backend(policy, tiny_tokenizer, prompts):
    config = SamplingConfig(max_new_tokens=6)
    backend = load_backend("transformers", policy, tiny_tokenizer)
    assert (
        sample_responses(policy, tiny_tokenizer, prompts, config, seed=4)
        == backend.generate(prompts, config, 4).response_ids
    )
    with pytest.raises(ValueError, match="Unknown generation backend"):
        load_backend("sglang", policy, tiny_tokenizer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no options"):
        load_backend("transformers", policy, tiny_tokenizer, gpu_memory_utilization=0.5)


def test_concat_pads_and_validation():
    a = RolloutBatch.from_lists([[1]], [[5, 6, 2]], [[-1.0, -2.0, -0.5]], [True])
    b = RolloutBatch.from_lists([[1, 2], [3]], [[7], [8, 9]], [[-3.0], [-0.1, -0.2]], [False, False])
    both = RolloutBatch.concat([a, b])
    assert both.mask.shape == (3, 3) and both.lengths.tolist() == [3, 1, 2]
    torch.testing.assert_close(both.logps[1], torch.tensor([-3.0, 0.0, 0.0]))
    assert both.ended.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="mask must be True exactly"):
        RolloutBatch([[1]], [[5, 6]], torch.zeros(1, 2), torch.tensor([[True, False]]), torch.tensor([False]))
    with pytest.raises(ValueError, match="num_samples"):
        TransformersBackend.generate(None, [[1]], SamplingConfig(), seed=0, num_samples=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generation_batch_size"):
        SamplingConfig(generation_batch_size=0)


def test_merged_weights_equal_peft_merge_and_leave_the_model_unchanged(policy):
    lora = get_peft_model(
        copy.deepcopy(policy),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    merged = dict(merged_weights(lora))
    expected = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert merged.keys() == expected.keys() == policy.state_dict().keys()
    for name, value in expected.items():
        torch.testing.assert_close(merged[name], value)
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], policy.model.layers[0].self_attn.q_proj.weight
    )
    assert all(torch.equal(p, before[name]) for name, p in lora.named_parameters())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it(tiny_tokenizer):
    with pytest.raises(ImportError, match=r"pip install .*vllm.*CUDA GPU"):
        VLLMBackend("some/model", tiny_tokenizer)
    with pytest.raises(ImportError, match="pip install"):
        load_backend("vllm", "some/model", tiny_tokenizer)


def test_vllm_is_imported_only_inside_the_vllm_backend():
    """Importing preftune never imports vllm: no module-level vllm import anywhere in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "vllm" for n in names):
                found.append((path.name, node in tree.body))
    assert found and all(name == "vllm_backend.py" and not top_level for name, top_level in found), found


def test_prompt_keys_make_samples_independent_of_the_batch(policy, tiny_tokenizer, prompts):
    """Keyed rows draw from their own generators: the same (seed, key) gives the same sample whether the
    prompt is sampled with others, alone, in another chunking, or (as under several processes) split."""
    backend = TransformersBackend(policy, tiny_tokenizer)
    config = SamplingConfig(max_new_tokens=8, temperature=0.9, generation_batch_size=6)
    together = backend.generate(prompts, config, seed=5, num_samples=2, prompt_keys=[10, 11, 12])
    alone = backend.generate(prompts[2:], SamplingConfig(max_new_tokens=8, temperature=0.9, generation_batch_size=1),
                             seed=5, num_samples=2, prompt_keys=[12])  # fmt: skip
    assert together.response_ids[4:] == alone.response_ids
    torch.testing.assert_close(together.logps[4:, : alone.logps.shape[1]], alone.logps, atol=1e-5, rtol=0)
    assert together.response_ids[0] != together.response_ids[1]  # a prompt's samples differ
    other_key = backend.generate(prompts[2:], config, seed=5, num_samples=2, prompt_keys=[13])
    assert other_key.response_ids != alone.response_ids
    for row in range(len(together)):  # the recorded log-probs are still the policy's, at the temperature
        expected = teacher_forced_logps(policy, together.prompt_ids[row], together.response_ids[row], 0.9)
        torch.testing.assert_close(together.logps[row, : len(expected)], expected, atol=1e-4, rtol=0)


def test_keyed_sampling_follows_the_filtered_distribution(policy, tiny_tokenizer, prompts):
    backend = TransformersBackend(policy, tiny_tokenizer)
    greedy = backend.generate(prompts, SamplingConfig(max_new_tokens=6, temperature=0.0), seed=0)
    top1 = backend.generate(prompts, SamplingConfig(max_new_tokens=6, temperature=1.3, top_k=1), seed=3,
                            prompt_keys=[0, 1, 2])  # fmt: skip
    assert top1.response_ids == greedy.response_ids
    # first-token frequencies over many keyed draws match the softmax (Gumbel-max is exact)
    config = SamplingConfig(max_new_tokens=1, temperature=1.0, generation_batch_size=400)
    draws = backend.generate(prompts[:1] * 400, config, seed=1, prompt_keys=list(range(400)))
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompts[0]])).logits[0, -1].float()
    p = torch.softmax(logits, dim=-1)
    counts = torch.bincount(torch.tensor([r[0] for r in draws.response_ids]), minlength=p.numel()).float()
    top = p.topk(3).indices
    assert torch.allclose(counts[top] / 400, p[top], atol=0.06), (counts[top] / 400, p[top])


def _lowbias32(x: int) -> int:
    """Plain-Python reference of the mixer, with exact integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_keyed_uniform_is_a_well_spread_pure_function_of_seed_step_and_token():
    from preftune.rollout.generate import _hash32, keyed_uniform

    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1]
    assert _hash32(torch.tensor(values)).tolist() == [_lowbias32(v) for v in values]  # no int64 overflow
    seeds = torch.tensor([7, 8, 2**32 - 5])
    u = keyed_uniform(seeds, step=3, vocab_size=20_000)
    assert u.shape == (3, 20_000) and 0 < u.min() and u.max() < 1
    torch.testing.assert_close(keyed_uniform(seeds[1:2], 3, 20_000), u[1:2])  # a row ignores the others
    assert not torch.equal(keyed_uniform(seeds, 4, 20_000), u)  # the next step draws new numbers
    deciles = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    torch.testing.assert_close(deciles, torch.full((10,), 0.1), atol=0.005, rtol=0)
    assert abs(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1]) < 0.03  # rows are not correlated


def test_a_checkpoints_own_end_tokens_also_end_a_response(tiny_tokenizer, prompts):
    """Chat checkpoints end a turn with their own token (generation_config.eos_token_id lists it)."""
    model = _tiny_llama(tiny_tokenizer, eos_bias=0.0)
    end_of_turn = tiny_tokenizer.convert_tokens_to_ids("world")
    with torch.no_grad():
        model.lm_head.bias[end_of_turn] = 4.0  # about 0.1 per step, as EOS_BIAS does for EOS
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, end_of_turn]
    batch = TransformersBackend(model, tiny_tokenizer).generate(
        prompts * 4, SamplingConfig(max_new_tokens=8, temperature=1.0), seed=0
    )
    ended_rows = batch.ended.nonzero()[:, 0].tolist()
    assert ended_rows, "some responses should end within 8 tokens"
    for row in ended_rows:
        assert batch.response_ids[row][-1] == end_of_turn
        assert end_of_turn not in batch.response_ids[row][:-1]
    assert model.generation_config.eos_token_id == [tiny_tokenizer.eos_token_id, end_of_turn]  # restored


def test_vllm_engine_options_follow_the_training_run():
    """One engine per process, in the training precision, sized for --max_length unless told otherwise."""
    sampling = SamplingConfig(generation_backend="vllm", vllm_gpu_memory_utilization=0.3)
    one = engine_options(sampling, 320, "bf16", torch.float32, process_index=0, num_processes=1)
    assert one == {"dtype": "bfloat16", "gpu_memory_utilization": 0.3, "max_model_len": 320, "seed": 0}
    longer = SamplingConfig(generation_backend="vllm", vllm_max_model_len=1024)
    two = engine_options(longer, 320, "no", torch.float32, process_index=1, num_processes=2)
    assert two == {"dtype": "float32", "gpu_memory_utilization": 0.5, "max_model_len": 1024, "seed": 1,
                   "distributed_executor_backend": "external_launcher"}  # fmt: skip
    assert engine_options(sampling, 64, "fp16", torch.float32, 0, 1)["dtype"] == "float16"
    # without mixed precision, a policy loaded in bf16 (--dtype bfloat16) samples in bf16
    assert engine_options(sampling, 64, "no", torch.bfloat16, 0, 1)["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="Unknown mixed precision 'fp8'"):
        engine_options(sampling, 64, "fp8", torch.float32, 0, 1)


def test_vllm_settings_without_the_vllm_backend_are_refused():
    with pytest.raises(
        ValueError, match=r"--vllm_max_model_len set the vLLM engine.*--generation_backend vllm"
    ):
        SamplingConfig(vllm_max_model_len=512)
    with pytest.raises(ValueError, match=r"vllm_gpu_memory_utilization must be in \(0, 1\]"):
        SamplingConfig(generation_backend="vllm", vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="vllm_max_model_len must be >= 2"):
        SamplingConfig(generation_backend="vllm", vllm_max_model_len=1)
