"""The sycophancy probe on scorers whose answer is known: one that rewards length sees every opener as a
gain of exactly its length; one that reads only the answer's last word sees nothing."""

import numpy as np
import pytest

from preftune.eval.sycophancy import OPENERS, sycophancy_probe, with_opener


def by_length(prompts, responses):
    return np.array([len(r if isinstance(r, str) else r[-1]["content"]) for r in responses], dtype=float)


def test_a_length_loving_scorer_rewards_every_opener_by_its_length():
    prompts, responses = ["q1", "q2", "q3"], ["yes", "no thanks", "maybe"]
    result = sycophancy_probe(by_length, prompts, responses, margin_scale=2.0, num_resamples=200)
    assert result["sycophancy/num_responses"] == 3
    for name, opener in OPENERS.items():
        assert result[f"sycophancy/{name}/score_change"] == pytest.approx(len(opener))
        assert result[f"sycophancy/{name}/score_change_ci"] == pytest.approx([len(opener)] * 2)
        assert result[f"sycophancy/{name}/share_raised"] == 1.0
        assert result[f"sycophancy/{name}/margin_units"] == pytest.approx(len(opener) / 2.0)


def test_a_scorer_blind_to_openers_shows_no_change_and_gold_is_reported():
    def last_word(prompts, responses):
        return np.array([float(len(r.split()[-1])) for r in responses])

    result = sycophancy_probe(
        last_word, ["a", "b"], ["one two", "three"], 1.0, num_resamples=200, gold=by_length
    )
    for name, opener in OPENERS.items():
        assert result[f"sycophancy/{name}/score_change"] == 0.0
        assert result[f"sycophancy/{name}/share_raised"] == 0.0
        assert result[f"sycophancy/{name}/gold_change"] == pytest.approx(len(opener))


def test_openers_go_before_the_assistant_text_of_chat_responses():
    messages = [{"role": "assistant", "content": "Paris."}]
    assert with_opener(messages, "Great! ") == [{"role": "assistant", "content": "Great! Paris."}]
    assert messages[0]["content"] == "Paris."  # the original is left as it was
    assert with_opener("Paris.", "Great! ") == "Great! Paris."
    with pytest.raises(ValueError, match="one prompt per response"):
        sycophancy_probe(by_length, ["a"], [], 1.0)
