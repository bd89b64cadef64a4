"""Constitutions (format and errors) and the critique -> revision -> pairs steps of `preftune cai`."""

from types import SimpleNamespace

import pytest

from preftune.pipelines.cai import critique_and_revise, critique_pairs, revision_pairs
from preftune.pipelines.config import CAIConfig
from preftune.pipelines.constitution import Constitution, Principle, load_constitution
from preftune.tasks import get_task

TASK = get_task("kindness")


def test_builtin_constitutions_load():
    kindness = load_constitution()  # the default
    assert kindness.name == "kindness" and [p.name for p in kindness.principles] == ["kind-words"]
    assert kindness.principles[0].critique.format(response="the garden is dull .") == TASK.critique_prompt(
        "the garden is dull ."
    )  # the instruction the synthetic SFT data teaches
    assert kindness.principles[0].revision.format(response="x") == TASK.revise_prompt("x")
    assert TASK.critique("the garden is kind .").startswith(kindness.principles[0].no_issue)
    assert len(load_constitution("assistant").principles) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "non-empty 'principles'"),
        ("principles: [{critique: 'C {response}', revision: 'R {response}', tone: x}]", "unknown keys"),
        ("principles: [{critique: 'C {answer}', revision: 'R {response}'}]", "unknown placeholders"),
        ("principles: [{critique: 'C {prompt}', revision: 'R {response}'}]", "must contain {response}"),
        (
            "principles: [{critique: 'C {critique} {response}', revision: 'R {response}'}]",
            "unknown placeholders",
        ),
        ("principles: [{critique: 'C {response', revision: 'R {response}'}]", "not a valid template"),
        ("principles: [{critique: 'C {response}'}]", "revision must be a non-empty"),
        (
            "principles: [{name: a, critique: 'C {response}', revision: 'R {response}'},"
            " {name: a, critique: 'C {response}', revision: 'R {response}'}]",
            "unique",
        ),
    ],
)
def test_bad_constitutions_are_refused_with_the_place(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_constitution(str(path))
    assert str(path) in str(error.value)


def test_unknown_constitution_names_the_builtins():
    with pytest.raises(ValueError, match="assistant, harmless, kindness"):
        load_constitution("no-such-constitution")


class _Scripted:
    """A generator that answers from the task's own skills: the corpus for answers, the exact critique and
    revision for instructions (what a perfectly trained model would do)."""

    def __init__(self):
        self.config = SimpleNamespace(temperature=1.0)
        self.calls = []

    def __call__(self, prompts, temperature, seed, num_samples=1):
        self.calls.append(list(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            if prompt.startswith("Critique"):
                out.append(TASK.critique(prompt.split("Reply: ", 1)[1]))
            elif prompt.startswith("Revise"):
                out.append(TASK.revise(prompt.split("Reply: ", 1)[1].strip()))
            else:
                bad = (i + seed) % 2 == 0
                out += [
                    "the garden is dull ." if bad and j == 0 else "the garden is kind ."
                    for j in range(num_samples)
                ]
        return out


def test_critique_and_revise_skips_answers_without_issue():
    generate = _Scripted()
    records = critique_and_revise(generate, ["Describe the garden.\n"] * 4, load_constitution(), seed=0)
    assert [r["response"] for r in records] == ["the garden is dull .", "the garden is kind ."] * 2
    assert [r["critique"] for r in records] == ["the word dull is unkind .", "no unkind words ."] * 2
    assert [r["revision"] for r in records] == ["the garden is bright .", "the garden is kind ."] * 2
    assert [r["changed"] for r in records] == [True, False, True, False]
    assert [r["revision_request"] is None for r in records] == [False, True, False, True]
    assert len(generate.calls[-1]) == 2  # only the two answers with an issue were revised
    pairs, left_out = revision_pairs(records)
    assert left_out == {"unchanged": 2, "empty": 0}
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("the garden is bright .", "the garden is dull .")
    ] * 2
    for record in records:  # revision never lowers the gold reward here
        assert TASK.gold_reward(record["prompt"], record["revision"]) >= TASK.gold_reward(
            record["prompt"], record["response"]
        )


def test_principles_are_sampled_reproducibly():
    principles = tuple(Principle(n, "", "C{response}", "R{response}") for n in ("a", "b", "c"))
    constitution = Constitution("x", principles, "<memory>")
    first = critique_and_revise(_Scripted(), ["p"] * 30, constitution, seed=3)
    again = critique_and_revise(_Scripted(), ["p"] * 30, constitution, seed=3)
    names = [r["principle"] for r in first]
    assert names == [r["principle"] for r in again] and set(names) == {"a", "b", "c"}


def test_critique_pairs_prefer_the_sample_the_critic_finds_no_issue_with():
    critic = _Scripted()
    policy = _Scripted()
    pairs, left_out = critique_pairs(
        critic, policy, ["Describe the garden.\n"] * 4, load_constitution(), 1.0, seed=1
    )
    assert left_out == {"both_no_issue": 0, "both_issue": 0, "identical": 2, "empty": 0}
    # the policy's first sample of every other prompt is unkind; the others are pairs of equal samples
    assert len(pairs) == 2
    for pair in pairs:
        assert (pair["chosen"], pair["rejected"]) == ("the garden is kind .", "the garden is dull .")
        assert pair["chosen_critique"] == "no unkind words ." and pair["label_source"] == "critique"


def test_preference_auto_and_flag_checks(tmp_path):
    from preftune.data import DataConfig
    from preftune.engine import TrainConfig
    from preftune.models.loading import ModelConfig

    def config(**fields):
        return CAIConfig(model=ModelConfig(model="m"), data=DataConfig(dataset="d"),
                         train=TrainConfig(output_dir=str(tmp_path)), **fields)  # fmt: skip

    assert config().preference == "critique"  # kindness has no_issue verdicts
    assert config(constitution="assistant").preference == "revision"
    with pytest.raises(ValueError, match="no_issue"):
        config(constitution="assistant", preference="critique")
    with pytest.raises(ValueError, match="needs --judge"):
        config(preference="judge")
    with pytest.raises(ValueError, match="only used with --preference judge"):
        config(judge="llm:x")


def test_loop_and_cai_reach_every_dpo_objective_flag(tmp_path):
    """Their DPO stage is the DPOObjective group, so every flag of `preftune dpo`'s objective reaches it."""
    import dataclasses

    from preftune.config import flat_field_names, parse_config
    from preftune.pipelines.config import LoopConfig
    from preftune.trainers.dpo_config import DPOObjective

    objective = [f.name for f in dataclasses.fields(DPOObjective)]
    for config_cls in (LoopConfig, CAIConfig):
        assert set(objective) <= set(flat_field_names(config_cls))
    required = ["--model", "m", "--dataset", "d", "--judge", "gold", "--output_dir", str(tmp_path)]
    argv = [*required, "--loss_type", "simpo", "--gamma", "1.5", "--beta", "2.0"]
    loop = parse_config(LoopConfig, argv, prog="preftune loop")
    dpo = loop.dpo_config("policy", "pairs.jsonl", None, tmp_path / "round-1")
    assert (dpo.loss_type, dpo.gamma, dpo.beta) == (["simpo"], 1.5, 2.0)
    defaults = {
        cls: next(f for f in dataclasses.fields(cls) if f.name == "dpo").default_factory()
        for cls in (LoopConfig, CAIConfig)
    }
    assert defaults[LoopConfig].beta == 0.3 and defaults[CAIConfig].loss_type == ["sigmoid", "sft"]
    with pytest.raises(SystemExit):  # the objective's checks run when the loop's flags are parsed
        parse_config(LoopConfig, [*required, "--loss_type", "ipo", "--label_smoothing", "0.1"], prog="p")
