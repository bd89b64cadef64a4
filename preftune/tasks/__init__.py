"""The built-in synthetic world: prompts, a programmatic gold reward and simulated annotators.

The embedded default of preftune (see DESIGN.md section 3): a tiny model learns the
"kindness" task in about a minute on CPU, and preference tuning can then raise its
deterministic gold reward, the stand-in for "what people really prefer".

    from preftune.tasks import SynthConfig, get_task, write_task
    task = get_task("kindness")
    task.gold_reward("Describe the garden.\\n", "the garden is warm and kind .")  # 1.0
    write_task(SynthConfig(out="data/kindness"))  # sft, pairs, prompts, eval_prompts, task.json
"""

from preftune.tasks.kindness import GoldWeights, KindnessTask, ParsedResponse, parse_response, render_response
from preftune.tasks.panel import PanelConfig, choice_probability, flip_probability, rate_pairs
from preftune.tasks.registry import TASKS, Task, detect_task, get_task
from preftune.tasks.synth import SynthConfig, write_task

__all__ = [
    "TASKS",
    "GoldWeights",
    "KindnessTask",
    "PanelConfig",
    "ParsedResponse",
    "SynthConfig",
    "Task",
    "choice_probability",
    "detect_task",
    "flip_probability",
    "get_task",
    "parse_response",
    "rate_pairs",
    "render_response",
    "write_task",
]
