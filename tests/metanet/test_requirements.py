"""Requirements (data minimisation, bias mitigation), composition, baselines and German credit, on real
populations of MLPs trained on UCI Adult and German credit."""

from __future__ import annotations

import statistics

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_edit.data import GermanCreditDataModule
from lightning_edit.metanet import (
    BiasMitigation,
    DataMinimisation,
    MetanetworkEditor,
    ModelZooDataModule,
    compose,
    fairness_differences,
    fairness_surrogate,
    make_mlp,
    measure,
)
from lightning_edit.metanet.baselines import (
    drop_inputs,
    finetune,
    fit_group_thresholds,
    magnitude_prune,
    pareto_plot,
    results_table,
    select_inputs_by_norm,
)


def trainer(tmp_path, epochs):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp_path))


def held_out(zoo, editor, requirement=None):
    xs, ys, ss = zoo.data.test_set.tensors
    rows = [measure(requirement or editor.requirement, editor.edit(zoo.models[i]) if editor else zoo.models[i], xs, ys, ss)
            for i in zoo.test_idx]
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]}


# ---------------------------------------------------------------- fairness metrics
def test_fairness_differences_match_a_hand_computed_case():
    probs = torch.tensor([0.9, 0.2, 0.7, 0.6, 0.1, 0.8])
    y = torch.tensor([1, 0, 1, 0, 0, 1])
    s = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0 decides [1,0,1]: selection 2/3, TPR 1, FPR 0; group 1 decides [1,0,1]: selection 2/3, TPR 1, FPR 1/2
    d = fairness_differences(probs, y, s)
    assert float(d["dp_difference"]) == pytest.approx(0.0)
    assert float(d["eo_difference"]) == pytest.approx(0.5)
    s2 = torch.tensor([0, 0, 1, 1, 1, 1])  # group 1 decides [1,1,0,1] for y [1,0,0,1]
    # selection 1/2 vs 3/4 -> DP 1/4; TPR 1 vs 1, FPR 0 vs 1/2 -> EO 1/2
    d2 = fairness_differences(probs, y, s2)
    assert float(d2["dp_difference"]) == pytest.approx(0.25)
    assert float(d2["eo_difference"]) == pytest.approx(0.5)


def test_fairness_differences_agree_with_fairlearn_and_the_surrogate_is_exact_on_hard_decisions():
    fairlearn = pytest.importorskip("fairlearn.metrics")
    g = torch.Generator().manual_seed(0)
    y, s = torch.randint(0, 2, (500,), generator=g), torch.randint(0, 2, (500,), generator=g)
    probs = (torch.rand(500, generator=g) + 0.3 * y + 0.2 * s).clamp(0, 1)
    d = fairness_differences(probs, y, s)
    pred = (probs > 0.5).long().numpy()
    assert float(d["dp_difference"]) == pytest.approx(
        fairlearn.demographic_parity_difference(y.numpy(), pred, sensitive_features=s.numpy()), abs=1e-6)
    assert float(d["eo_difference"]) == pytest.approx(
        fairlearn.equalized_odds_difference(y.numpy(), pred, sensitive_features=s.numpy()), abs=1e-6)
    hard = (probs > 0.5).float()
    assert float(fairness_surrogate(hard, y, s, "demographic_parity")) == pytest.approx(float(d["dp_difference"]), abs=1e-6)
    assert float(fairness_surrogate(hard, y, s, "equalized_odds")) == pytest.approx(float(d["eo_difference"]), abs=1e-6)


# ---------------------------------------------------------------- data minimisation
def test_dropped_inputs_have_exactly_zero_influence_after_an_edit(zoo):
    torch.manual_seed(0)
    editor = MetanetworkEditor("data_minimisation", {"k": 3}, hidden=16, num_layers=1)
    editor.requirement.setup(zoo.data)
    model = zoo.models[zoo.test_idx[0]]
    edited = editor.edit(model)
    xs = zoo.data.test_set.tensors[0][:1000]
    used = edited[0].weight.ne(0).any(0)
    groups = zoo.data.feature_groups
    used_attributes = [a for a, cols in groups.items() if used[cols].any()]
    assert len(used_attributes) == 3
    assert all(used[groups[a]].all() for a in used_attributes)  # an attribute's columns are kept together
    noisy = torch.where(used, xs, 100 * torch.randn_like(xs))
    with torch.no_grad():
        assert torch.equal(edited(xs), edited(noisy))
        assert not torch.equal(model(xs), model(noisy))
    row = measure(editor.requirement, edited, xs, *(t[:1000] for t in zoo.data.test_set.tensors[1:]))
    assert row["units_used"] == 3 and row["dropped_influence"] == 0.0

    named = MetanetworkEditor("data_minimisation", {"drop": ["sex", "race"]}, hidden=16, num_layers=1)
    named.requirement.setup(zoo.data)
    w = named.edit(model)[0].weight
    cols = groups["sex"] + groups["race"]
    assert torch.all(w[:, cols] == 0) and torch.all(w.ne(0).sum(0)[[c for c in range(w.shape[1]) if c not in cols]] > 0)


def test_training_improves_data_minimisation_on_held_out_networks(zoo, tmp_path):
    L.seed_everything(0)
    editor = MetanetworkEditor("data_minimisation", {"k": 4}, hidden=16, num_layers=2, lr=3e-3)
    editor.requirement.setup(zoo.data)
    before = held_out(zoo, editor)
    trainer(tmp_path, 15).fit(editor, zoo)
    after = held_out(zoo, editor)
    assert after["units_used"] == before["units_used"] == 4
    assert after["dropped_influence"] == 0.0
    assert after["accuracy"] > before["accuracy"] + 0.01, (before, after)


def test_checkpoint_round_trip_keeps_the_requirement_state(zoo, tmp_path):
    L.seed_everything(0)
    editor = MetanetworkEditor("data_minimisation", {"k": 2}, hidden=8, num_layers=1)
    t = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=str(tmp_path))
    t.fit(editor, zoo)
    t.save_checkpoint(tmp_path / "editor.ckpt")
    loaded = MetanetworkEditor.load_from_checkpoint(tmp_path / "editor.ckpt")
    assert loaded.requirement == editor.requirement and loaded.requirement.unit_names == editor.requirement.unit_names
    model = zoo.models[zoo.test_idx[0]]
    for p, q in zip(editor.edit(model).parameters(), loaded.edit(model).parameters()):
        assert torch.equal(p, q)


def test_pruning_checkpoint_keeps_its_layer_floor_and_older_ones_reload_without_one(tmp_path):
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.8}, hidden=8, num_layers=1)
    assert editor.requirement.min_layer_density == pytest.approx(0.1)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.strategy.connect(editor)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    assert MetanetworkEditor.load_from_checkpoint(tmp_path / "new.ckpt").requirement.min_layer_density == pytest.approx(0.1)
    old = torch.load(tmp_path / "new.ckpt", weights_only=False)
    del old["hyper_parameters"]["requirement_args"]["min_layer_density"]  # as saved before the floor existed
    torch.save(old, tmp_path / "old.ckpt")
    assert MetanetworkEditor.load_from_checkpoint(tmp_path / "old.ckpt").requirement.min_layer_density == 0.0


# ---------------------------------------------------------------- bias mitigation
def test_training_lowers_equalized_odds_on_held_out_networks(zoo_large_batches, tmp_path):
    zoo = zoo_large_batches
    L.seed_everything(0)
    editor = MetanetworkEditor("bias_mitigation", {"metric": "equalized_odds"}, hidden=16, num_layers=2, lr=3e-3,
                               requirement_weight=0.3)
    original = held_out(zoo, None, editor.requirement)
    trainer(tmp_path, 30).fit(editor, zoo)
    after = held_out(zoo, editor)
    assert after["eo_difference"] < 0.75 * original["eo_difference"], (original, after)
    base_rate = 1 - float(zoo.data.test_set.tensors[1].float().mean())
    assert after["accuracy"] > base_rate + 0.02  # not (close to) the constant classifier


# ---------------------------------------------------------------- composition
def test_composition_applies_both_requirements(zoo):
    torch.manual_seed(0)
    minimise = MetanetworkEditor("data_minimisation", {"k": 3}, hidden=8, num_layers=1)
    minimise.requirement.setup(zoo.data)
    prune = MetanetworkEditor("weight_pruning", {"sparsity": 0.5}, hidden=8, num_layers=1)
    fair = MetanetworkEditor("bias_mitigation", hidden=8, num_layers=1)
    model = zoo.models[zoo.test_idx[0]]
    xs, ys, ss = zoo.data.test_set.tensors
    both = compose(model, [minimise, prune])
    assert measure(minimise.requirement, both, xs, ys, ss)["units_used"] <= 3
    assert measure(prune.requirement, both, xs, ys, ss)["sparsity"] >= 0.5
    kept = compose(model, [minimise, fair], keep_zeros=True)
    revived = compose(model, [minimise, fair], keep_zeros=False)
    assert measure(minimise.requirement, kept, xs, ys, ss)["units_used"] == 3
    assert measure(minimise.requirement, revived, xs, ys, ss)["units_used"] > 3  # residual edits revive dropped inputs


# ---------------------------------------------------------------- baselines
def test_baselines_enforce_their_requirement(zoo, tmp_path):
    model = zoo.models[zoo.test_idx[0]]
    (xt, yt, _), (xv, yv, sv) = zoo.data.train_set.tensors, zoo.data.val_set.tensors
    pruned, masks = magnitude_prune(model, 0.6)
    weights = torch.cat([m.weight.flatten() for m in pruned if isinstance(m, torch.nn.Linear)])
    assert int(weights.eq(0).sum()) == round(0.6 * len(weights))
    tuned = finetune(pruned, xt[:2048], yt[:2048], None, DataMinimisation(k=1, unit="feature"), masks)
    for name, m in masks.items():
        assert torch.all(tuned.get_parameter(name)[m == 0] == 0)
    req = DataMinimisation(k=3)
    req.setup(zoo.data)
    keep = select_inputs_by_norm(model, req)
    dropped, _ = drop_inputs(model, keep)
    assert measure(req, dropped, xv, yv, sv)["units_used"] == 3
    fair = BiasMitigation()
    level = measure(fair, model, xv, yv, sv)["eo_difference"] / 2
    clf = fit_group_thresholds(model, xv, yv, sv, fair, level)
    with torch.no_grad():
        gap = fairness_differences(clf(xv, sv).softmax(-1)[:, 1], yv, sv)["eo_difference"]
    assert float(gap) <= level + 1e-6
    rows = [{"method": "metanetwork", "accuracy": 0.8, "level": 0.1, "ms_per_edit": 10.0},
            {"method": "retrain", "accuracy": 0.82, "level": 0.12, "ms_per_edit": 1000.0, "levels": [0.1], "accuracies": [0.8]}]
    assert "| retrain | 82.00 | 0.120 | 1000.00 | 100.0× |" in results_table(rows, "eo_difference")
    assert pareto_plot(rows, tmp_path / "pareto.png", "eo_difference").stat().st_size > 0


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(zoo, tmp_path):
    with pytest.raises(ValueError, match="Unknown requirement 'sparsify'; choose one of"):
        MetanetworkEditor("sparsify")
    with pytest.raises(ValueError, match="accepts"):
        MetanetworkEditor("data_minimisation", {"k": 2, "features": 3})
    with pytest.raises(ValueError, match="exactly one of k"):
        DataMinimisation()
    with pytest.raises(ValueError, match="k=200 exceeds the 14 input attributes"):
        DataMinimisation(k=200).setup(zoo.data)
    with pytest.raises(ValueError, match="k=200 exceeds the 108 input features"):
        DataMinimisation(k=200, unit="feature").setup(zoo.data)
    with pytest.raises(ValueError, match=r"Unknown attributes in drop: \['gender'\]"):
        DataMinimisation(drop=["gender"]).setup(zoo.data)
    editor = MetanetworkEditor("data_minimisation", {"k": 200}, hidden=8, num_layers=1)
    with pytest.raises(ValueError, match="k=200 exceeds"):  # at setup, before any training step
        trainer(tmp_path, 1).fit(editor, zoo)

    class NoSensitive:  # a tabular datamodule whose batches are (x, y)
        train_set = TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
        sensitive = None

    with pytest.raises(ValueError, match="needs a sensitive attribute"):
        BiasMitigation().setup(NoSensitive())
    with pytest.raises(ValueError, match=r"target .* must be in \[0, 1\], got -0.1"):
        MetanetworkEditor("bias_mitigation", {"target": -0.1})
    with pytest.raises(ValueError, match="num_groups must be >= 2"):
        BiasMitigation(num_groups=1)
    with pytest.raises(ValueError, match="batches must be \\(x, y, s\\)"):
        BiasMitigation().loss(None, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), None)
    with pytest.raises(RuntimeError, match="not set up"):
        MetanetworkEditor("data_minimisation", {"k": 2}).edit(make_mlp(zoo.data.num_features, [4]))


# ---------------------------------------------------------------- a second dataset
def test_german_credit_loader_and_an_editor_on_it(tmp_path):
    data = GermanCreditDataModule(batch_size=128)
    data.setup()
    x, y, s = data.train_set.tensors
    assert x.shape == (600, 61) and len(data.val_set) == len(data.test_set) == 200
    assert data.num_features == 61 and len(data.feature_groups) == 20
    all_y = torch.cat([y, data.val_set.tensors[1], data.test_set.tensors[1]])
    assert int(all_y.sum()) == 700  # 700 good, 300 bad credit risks in the file
    assert 0.6 < float(s.float().mean()) < 0.8  # about 69% male applicants
    zoo = ModelZooDataModule(num_models=10, widths=[8], depths=[1], epochs=[5], graphs_per_batch=4, data=data,
                             root=str(tmp_path / "zoo"))
    zoo.setup()
    assert zoo.cache_path().name.startswith("german_mlps_")
    editor = MetanetworkEditor("data_minimisation", {"drop": ["personal_status_sex", "age"]}, hidden=8, num_layers=1)
    trainer(tmp_path, 2).fit(editor, zoo)
    row = held_out(zoo, editor)
    assert row["units_used"] == 18 and row["dropped_influence"] == 0.0
    with pytest.raises(ValueError, match="sensitive must be 'sex' or 'age'"):
        GermanCreditDataModule(sensitive="race")
