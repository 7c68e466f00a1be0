"""The ablation's note on what IUIM's and ICIM's inputs can tell about the label (bench.data.stats)."""
import numpy as np
import pytest

from bench.data.stats import field_signal, input_signal_note


def test_a_field_shared_by_a_positive_and_its_negative_has_no_signal():
    rng = np.random.default_rng(0)
    ctx = np.repeat(rng.integers(0, 7, 500), 2)  # each impression: one positive, one negative, same context
    label = np.tile([1.0, 0.0], 500)
    assert field_signal(ctx, label, ctx[::-1].copy(), label[::-1].copy()) == pytest.approx(0.5)


def test_a_field_that_decides_the_label_has_auc_one_and_unseen_values_get_the_overall_rate():
    values = np.array([1, 1, 2, 2, 3, 3])
    label = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert field_signal(values, label, np.array([1, 2]), np.array([1.0, 0.0])) == 1.0
    # value 9 is unseen in train: scored at the train positive rate 0.5, between value 1 (1.0) and 2 (0.0)
    auc = field_signal(values, label, np.array([9, 2, 1, 9]), np.array([1.0, 0.0, 1.0, 0.0]))
    assert auc == pytest.approx(0.875)  # pairs: (1 vs 2) 1, (1 vs 9) 1, (9 vs 2) 1, (9 vs 9) 0.5


def test_the_note_names_the_consequences_only_when_there_is_nothing_to_learn():
    none = input_signal_note({"user": {"user_id": 0.5}, "context": {"gap": 0.5, "position": 0.501},
                              "balanced_user_context": 1.0})
    assert "(J = 1)" in none and "identically 1" in none and "No context field predicts the label alone" in none
    assert "only help through its interaction with the candidate item" in none
    unpaired = input_signal_note({"user": {"user_id": 0.5}, "context": {"gap": 0.5}, "balanced_user_context": 0.4})
    assert "No context field predicts" in unpaired and "interaction" not in unpaired  # no marginal signal only
    some = input_signal_note({"user": {"user_id": 0.52, "age": 0.54}, "context": {"hour": 0.547, "weekday": 0.468}})
    assert "(J = 2)" in some and "identically 1" not in some and "no label signal" not in some
    assert "hour 0.547" in some and "weekday 0.468" in some  # below 0.5 is signal too (inverse)


def test_the_claims_report_carries_the_note_of_the_committed_signal_file(tmp_path):
    import json

    from bench.report.claims import _signal_notes

    assert _signal_notes(tmp_path) == []
    (tmp_path / "input_signal.json").write_text(json.dumps({"user": {"user_id": 0.5}, "context": {"gap": 0.5},
                                                            "balanced_user_context": 1.0}))
    [note] = _signal_notes(tmp_path)
    assert "'w/o ICIM' tests that interaction, not a context signal" in note


def test_the_main_table_states_each_models_mlp_activation_and_whose_choice_it_is():
    from bench.report import activation_note

    def rec(model, act):
        return {"model": model, "config": {"model": {"mlp_activation": act}}}

    note = activation_note([rec("din", "dice"), rec("dcn", "relu"), rec("mian", "relu"), {"model": "lr", "config": {"model": {}}}],
                           ["lr", "dcn", "din", "mian"])
    assert "Deep&Cross relu (its paper)" in note and "DIN dice (its paper, Sec. 4.4)" in note
    assert "MIAN relu (not stated by the MIAN paper" in note and note.endswith("LR has no MLP.")
    # a run set away from its paper's activation says so
    assert "DIN prelu (set for these runs; its paper, Sec. 4.4: dice)" in activation_note([rec("din", "prelu")], ["din"])
    assert activation_note([{"model": "lr", "config": {"model": {}}}], ["lr"]) is None


def test_balanced_share_finds_positives_paired_with_negatives_of_the_same_user_and_context():
    from bench.data.stats import balanced_share

    users = np.array([1, 1, 2, 2, 3, 3, 3])
    ctx = np.array([[0], [0], [5], [6], [1], [1], [1]])
    label = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    # user 1: one group, balanced; user 2: two groups of one sample each; user 3: 1 positive vs 2 negatives
    assert balanced_share(users, ctx, label) == pytest.approx(2 / 7)
    assert balanced_share(users[:2], ctx[:2], label[:2]) == 1.0
