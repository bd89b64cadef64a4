"""`run_audit` end to end: on the synthetic world's panel ratings and on the real HH-RLHF pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.feedback.audit import run_audit
from preftune.feedback.config import AuditConfig
from preftune.tasks import PanelConfig, SynthConfig, write_task

HH_RLHF = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless" / "train.jsonl.gz"


def _synth(tmp_path: Path, panel: PanelConfig, num_pairs: int = 1500) -> dict[str, Path]:
    config = SynthConfig(out=str(tmp_path / "synth"), num_sft=10, num_pairs=num_pairs, num_eval_pairs=100,
                         num_prompts=10, num_eval_prompts=10, panel=panel)  # fmt: skip
    return write_task(config)


def test_audit_on_the_synthetic_panel(tmp_path):
    paths = _synth(
        tmp_path, PanelConfig(temperature=0.1, flip_rate=0.02, position_bias=1.5, fatigue=0.3, overlap=0.5)
    )
    out = tmp_path / "audit"
    audit = run_audit(AuditConfig(dataset=str(paths["pairs"]), eval_dataset=str(paths["eval_pairs"]),
                                  output_dir=str(out), num_bootstrap=200))  # fmt: skip
    assert json.loads((out / "audit.json").read_text()) == audit
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Preference data audit" in html
    for key in ("dataset/num_rows", "dataset/exact_duplicates", "dataset/eval_prompt_overlap_rows",
                "length_bias/share_chosen_longer", "length_bias/prefer_longer_accuracy",
                "position_bias/share_chose_first", "agreement/krippendorff_alpha", "fatigue/pooled_slope",
                "group_divergence/p_value", "groups/A/length_bias", "groups/B/agreement_with_other_groups"):  # fmt: skip
        assert key in audit, key
    for annotator in [f"a{j:02d}" for j in range(12)]:
        for name in ("n", "agreement", "flip_rate", "fatigue_slope", "length_bias"):
            assert f"annotators/{annotator}/{name}" in audit
    assert audit["dataset/eval_prompt_overlap_rows"] == 0  # held-out prompts are disjoint by construction
    assert all(set(flag) == {"finding", "evidence", "severity"} for flag in audit["flags"])
    warnings = [flag["finding"] for flag in audit["flags"] if flag["severity"] == "warning"]
    assert "Position bias: raters favour the response shown first" in warnings
    assert any(finding.startswith("The panel as a whole tires") for finding in warnings)
    assert audit["fatigue/pooled_ci"][1] < 0


def test_audit_on_a_clean_synthetic_panel(tmp_path):
    """No position bias, fatigue or length bias, one group: no warning about the raters."""
    gold = {"sentiment": 1.0, "relevance": 0.5, "length": 1.0, "repetition": 1.0, "format": 1.0}
    panel = PanelConfig(
        position_bias=0.0, fatigue=0.0, length_bias=0.0, groups={"A": gold}, group_shares={"A": 1.0}
    )
    paths = _synth(tmp_path, panel)
    audit = run_audit(
        AuditConfig(dataset=str(paths["pairs"]), output_dir=str(tmp_path / "audit"), num_bootstrap=200)
    )
    rater_warnings = [
        flag for flag in audit["flags"]
        if flag["severity"] == "warning" and not flag["finding"].startswith(("Exact", "Near", "Contradictory"))
    ]  # fmt: skip
    assert rater_warnings == []
    assert "groups/A/n" not in audit  # one group: nothing to compare


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs ../shared/data/hh-rlhf-harmless")
def test_audit_on_hh_rlhf(tmp_path):
    """Real pairs without rating metadata: hygiene and length bias only; the last 300 rows as held out."""
    audit = run_audit(AuditConfig(dataset=str(HH_RLHF), dataset_split="train[:1500]", eval_dataset=str(HH_RLHF),
                                  eval_dataset_split="train[1500:]", output_dir=str(tmp_path)))  # fmt: skip
    assert audit["dataset/num_rows"] == 1500 and audit["dataset/has_annotators"] is False
    assert audit["dataset/empty_responses"] >= 1
    assert 0.3 < audit["length_bias/prefer_longer_accuracy"] < 0.7
    assert not any(key.startswith(("annotators/", "groups/")) for key in audit)
    assert (tmp_path / "report.html").exists()
