"""`preftune demo` (the README's first command) end to end: every tuned method beats SFT on gold reward,
and the deliberate reward-hacking case is flagged."""

import json
import shutil
import subprocess

import pytest

from preftune.cli import main


@pytest.mark.slow
def test_demo_tunes_evaluates_and_flags_the_hacking_case(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "true", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    methods = summary["methods"]
    assert set(methods) == {"base", "sft", "dpo", "ppo", "rloo", "bon"}
    for name, row in methods.items():
        low, high = row["gold_reward_ci"]
        assert low <= row["gold_reward"] <= high, name
    assert methods["sft"]["gold_reward"] > methods["base"]["gold_reward"] + 0.5, summary
    for name in ("dpo", "ppo", "rloo", "bon"):  # preference tuning beats the SFT policy it started from
        assert methods[name]["gold_reward"] > methods["sft"]["gold_reward"], (name, methods[name])
    for name in ("dpo", "ppo", "rloo"):
        assert methods[name]["kl"] > 0 and methods[name]["win_rate_vs_sft"] > 0.5, (name, methods[name])
    assert methods["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert summary["hacking"]["flagged"] is True, summary["hacking"]
    assert "held-out gold score fell" in summary["hacking"]["evidence"]
    assert "Reward hacking" in capsys.readouterr().out  # the table and the verdict are printed
    report = (out / "report.md").read_text()
    assert "| ppo (proxy RM) |" in report and "**flagged**" in report
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3  # self-contained: the plots are embedded
    for name in ("gold_reward.png", "reward_kl.png", "hacking.png"):
        assert (out / name).stat().st_size > 5_000, name
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium to render report.html (apt-get install chromium)")
    rendered = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert 'data-rendered="3"' in rendered.stdout  # the browser decoded all three plots
