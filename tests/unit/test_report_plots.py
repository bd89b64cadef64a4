"""The report's plots: every method and every line is named in a legend (no overlapping text labels)."""

from preftune.eval.report import hacking_plot, reward_kl_plot


def test_reward_kl_plot_names_each_method_in_a_legend_not_in_text_beside_its_point():
    methods = {
        "sft": {"kl": 0.0, "gold_reward": 0.1},
        "ppo": {"kl": 1.80, "gold_reward": 0.88},
        "bon": {"kl": 1.84, "gold_reward": 0.79},  # close to ppo: text labels overlapped here
        "base": {"kl": None, "gold_reward": -1.0},  # no KL: not plotted
    }
    axes = reward_kl_plot(methods).axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["sft", "ppo", "bon"]
    assert len(axes.texts) == 0  # no annotations that can collide
    colours = {tuple(collection.get_facecolor()[0]) for collection in axes.collections}
    assert len(colours) == 3


def test_hacking_plot_legend_has_the_length_line_of_the_second_axis():
    history = [
        {"step": s, "eval/reward": 0.1 * s, "eval/gold_reward": -0.1 * s, "eval/length": 10 + s}
        for s in range(3)
    ]
    figure = hacking_plot(history)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["proxy reward (optimised)", "gold reward (held out)", "length"]
