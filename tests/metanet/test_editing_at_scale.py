"""Issue 14: cached graph structure, edits batched by edge budget, straight-through pruning gates, the mask-aware
round, the Lagrangian constraint, the single-threshold baseline, and populations with activations and held-out
architectures."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from lightning_edit.metanet import (
    BiasMitigation,
    GraphMetanetwork,
    MetanetworkEditor,
    ModelZooDataModule,
    WeightPruning,
    architecture,
    fairness_differences,
    make_mlp,
    to_graph,
    to_parameters,
)
from lightning_edit.metanet.baselines import ThresholdClassifier, fit_group_thresholds, fit_single_threshold
from lightning_edit.metanet.graph import ACTIVATIONS, graph_structure
from lightning_edit.metanet.requirements import NetworkEdit


def test_graph_structure_is_shared_per_architecture_and_carries_activations():
    torch.manual_seed(0)
    a, b = make_mlp(5, [4, 3], 2, activation="tanh"), make_mlp(5, [4, 3], 2, activation="tanh")
    ga, gb = to_graph(a), to_graph(b)
    assert ga.edge_index is gb.edge_index  # computed once for the architecture
    assert graph_structure.cache_info().hits >= 1
    assert not torch.equal(ga.edge_attr, gb.edge_attr)
    tanh = ACTIVATIONS.index("tanh")
    assert ga.act.tolist() == [0] * 5 + [tanh] * 4 + [tanh] * 3 + [0] * 2  # the output layer has none
    assert [s.activation for s in architecture(a)] == ["tanh", "tanh", "identity"]
    params = to_parameters(ga.specs, ga.edge_attr, ga.bias, a)
    for name, p in a.named_parameters():
        assert torch.equal(params[name], p), name
    with pytest.raises(ValueError, match="two activations after '0'"):
        architecture(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        make_mlp(3, [4], activation="swish")


def test_edits_batched_by_edge_budget_equal_one_pass_and_single_edits(zoo):
    torch.manual_seed(0)
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.7}, hidden=8, num_layers=1)
    with torch.no_grad():
        editor.metanet.scale.fill_(0.5)  # visible weight changes
        editor.metanet.edge_gate_head.weight.normal_()
    models = [zoo.models[i] for i in zoo.test_idx + zoo.val_idx]
    one_pass = editor.edit(models, edges_per_pass=None)
    budget = min(to_graph(m).edge_index.shape[1] for m in models) + 1  # about one network per pass
    chunked = editor.edit(models, edges_per_pass=budget)
    for m, p, q in zip(models, one_pass, chunked):
        single = editor.edit(m)
        for x, y, z in zip(p.parameters(), q.parameters(), single.parameters()):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-5)
            assert torch.equal(x == 0, y == 0)  # the same weights pruned
    with pytest.raises(ValueError, match="edges_per_pass must be a positive"):
        editor.edit(models, edges_per_pass=0)


def test_straight_through_gates_train_the_exact_mask():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0], requires_grad=True)
    net = NetworkEdit([], logits, logits.new_zeros(0))
    mask = WeightPruning(sparsity=0.4).edge_mask(net, hard=False)
    assert mask.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]  # forward: the exact top-k of the edit
    (mask * torch.arange(5.0)).sum().backward()
    sig = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, torch.arange(5.0) * sig * (1 - sig))  # backward: through the sigmoid
    soft = WeightPruning(sparsity=0.4, gates="soft").edge_mask(net, hard=False)
    torch.testing.assert_close(soft, sig)
    assert WeightPruning(sparsity=0.4, gates="soft").edge_mask(net, hard=True).tolist() == mask.tolist()
    with pytest.raises(ValueError, match="gates must be 'straight_through' or 'soft'"):
        WeightPruning(gates="hard")


def test_kernel_level_pruning_counts_weights_not_edges():
    from lightning_edit.metanet import LayerSpec

    # 2 conv edges (3x3 kernels, 9 weights each) then 2 linear edges: W = 20 weights
    specs = [LayerSpec("c", "conv", 1, 2, 3), LayerSpec("l", "linear", 2, 1)]
    logits = torch.tensor([0.0, 5.0, -1.0, 1.0])  # 2 kernels, then 2 linear weights
    net = NetworkEdit(specs, logits, logits.new_zeros(0))
    assert WeightPruning.edge_sizes(net).tolist() == [9, 9, 1, 1]
    # sparsity 0.5 of 20 weights = 10: remove the lowest logits while the count stays <= 10: -1 (1), 0 (9) -> 10
    assert WeightPruning(sparsity=0.5).edge_mask(net, hard=True).tolist() == [0.0, 1.0, 0.0, 1.0]
    # sparsity 0.3 -> 6 weights: only the linear edge of logit -1 fits before the next kernel
    assert WeightPruning(sparsity=0.3).edge_mask(net, hard=True).tolist() == [1.0, 1.0, 0.0, 1.0]
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.6}, hidden=8, num_layers=1, kernel_size=3,
                               gate_granularity="edge")
    edited = editor.edit(cnn)
    w = torch.cat([edited[0].weight.flatten(), edited[4].weight.flatten()])  # 36 + 12 = 48 weights
    assert round(0.6 * 48) - 9 < int(w.eq(0).sum()) <= round(0.6 * 48)  # within one kernel of round(s · W)
    assert torch.equal(edited[0].weight.eq(0).flatten(2).all(-1), edited[0].weight.eq(0).flatten(2).any(-1))  # whole kernels
    with pytest.raises(ValueError, match="exceeds max_kernel=1"):
        MetanetworkEditor("weight_pruning", hidden=8, num_layers=1).edit(cnn)


def test_kernel_magnitude_pruning_removes_whole_kernels_by_rms():
    from lightning_edit.metanet.baselines import magnitude_prune

    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        cnn[0].weight.copy_(torch.stack([torch.full((1, 3, 3), 0.1), torch.full((1, 3, 3), 2.0)]))  # RMS 0.1 and 2.0
        cnn[4].weight.copy_(torch.tensor([[0.05, 3.0], [0.5, 1.0]]))
    # W = 18 + 4 = 22; 50% -> 11 weights: the 0.05 weight (1), then the RMS-0.1 kernel (9); the next, 0.5, would make 11
    pruned, masks = magnitude_prune(cnn, 0.5, granularity="kernel")
    assert pruned[0].weight[0].eq(0).all() and pruned[0].weight[1].ne(0).all()
    assert pruned[4].weight.eq(0).tolist() == [[True, False], [True, False]]
    assert torch.equal(masks["0.weight"].bool(), pruned[0].weight.ne(0))
    per_weight, _ = magnitude_prune(cnn, 0.5)  # the same budget over single weights
    assert int(sum(p.eq(0).sum() for p in (per_weight[0].weight, per_weight[4].weight))) == 11
    # 60% of 22 = 13 weights. Global: 0.05, nine 0.1s, 0.5, 1.0 and one 2.0 leave the linear layer one weight.
    # A floor of 0.3 keeps ceil(0.3 * 4) = 2 linear weights: 1.0 survives and a second 2.0 goes instead.
    global_, _ = magnitude_prune(cnn, 0.6)
    floored, _ = magnitude_prune(cnn, 0.6, min_layer_density=0.3)
    assert global_[4].weight.eq(0).tolist() == [[True, False], [True, True]]
    assert floored[4].weight.eq(0).tolist() == [[True, False], [True, False]]
    assert int(global_[0].weight.eq(0).sum()) == 10 and int(floored[0].weight.eq(0).sum()) == 11
    with pytest.raises(ValueError, match="granularity"):
        magnitude_prune(cnn, 0.5, granularity="channel")
    with pytest.raises(ValueError, match="min_layer_density must be in"):
        magnitude_prune(cnn, 0.6, min_layer_density=0.5)


def test_untrained_editor_with_magnitude_prior_prunes_as_magnitude_pruning():
    from lightning_edit.metanet.baselines import magnitude_prune

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 3))
    for granularity, gates in (("weight", "weight"), ("kernel", "edge")):
        editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.7, "min_layer_density": 0}, hidden=8, num_layers=1,
                                   kernel_size=3, gate_prior="magnitude", gate_granularity=gates).eval()
        edited, _ = editor.edit(cnn), None
        post, _ = magnitude_prune(cnn, 0.7, granularity=granularity)
        for a, b in zip(edited.parameters(), post.parameters()):
            if a.dim() > 1:  # the same zeros; the surviving weights carry the untrained editor's small changes
                assert torch.equal(a.eq(0), b.eq(0))
    weights = [p for p in edited.parameters() if p.dim() > 1]  # kernel granularity: whole kernels
    assert torch.equal(weights[0].eq(0).flatten(2).all(-1), weights[0].eq(0).flatten(2).any(-1))
    without = MetanetworkEditor("weight_pruning", {"sparsity": 0.7}, hidden=8, num_layers=1, kernel_size=3,
                                gate_prior="none").eval()
    assert without.metanet.prior_scale is None


def test_untrained_data_minimisation_editor_with_prior_keeps_the_norm_rule_attributes(zoo):
    from lightning_edit.metanet.baselines import select_inputs_by_norm

    for k in (2, 5):
        editor = MetanetworkEditor("data_minimisation", {"k": k}, hidden=8, num_layers=1, gate_prior="magnitude").eval()
        editor.requirement.setup(zoo.data)
        assert editor.requirement.unit_pool == "logsumexp"
        for model in zoo.models[:6]:
            first = editor.edit(model).get_parameter(f"{architecture(model)[0].name}.weight")
            assert torch.equal(first.ne(0).any(0), select_inputs_by_norm(model, editor.requirement))
    # log-sum-exp pooling of log ||column||^2 is log ||unit||^2; mean pooling (no prior) is the plain average
    req = MetanetworkEditor("data_minimisation", {"k": 2}, gate_prior="magnitude").requirement
    req.unit_names, req.unit_of_input = ["a", "b"], torch.tensor([0, 0, 1])
    net = NetworkEdit(architecture(make_mlp(3, [2], 2)), torch.zeros(8), torch.tensor([1.0, 2.0, 3.0, 0, 0, 0, 0]))
    assert torch.allclose(req.unit_logits(net), torch.tensor([torch.tensor([1.0, 2.0]).logsumexp(0), 3.0]))
    req.unit_pool = "mean"
    assert torch.allclose(req.unit_logits(net), torch.tensor([1.5, 3.0]))
    assert MetanetworkEditor("data_minimisation", {"k": 2}).requirement.unit_pool == "mean"


def test_weight_granularity_gates_prune_exactly_round_s_w_single_weights():
    from lightning_edit.metanet import LayerSpec

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.6}, hidden=8, num_layers=1, kernel_size=3,
                               gate_granularity="weight")
    # the straight-through mask in training: padding excluded from the budget, gradients reach every real gate
    specs = [LayerSpec("c", "conv", 1, 2, 3), LayerSpec("l", "linear", 2, 1)]  # 18 + 2 real weights of 4 x 9 entries
    logits = torch.randn(4, 9, requires_grad=True)
    mask = WeightPruning(sparsity=0.5).edge_mask(NetworkEdit(specs, logits, logits.new_zeros(0)), hard=False)
    padding = torch.ones(4, 9, dtype=torch.bool)
    padding[:2] = False
    padding[2:, 4] = False  # a linear weight sits at the centre of its padded 3x3 edge feature
    assert mask[padding].eq(1).all() and int(mask[~padding].detach().eq(0).sum()) == 10
    mask.sum().backward()
    assert logits.grad[~padding].ne(0).all() and logits.grad[padding].eq(0).all()
    for _ in range(2):  # an untrained editor and the same editor on a second network
        edited = editor.edit(cnn)
        w = torch.cat([edited[0].weight.flatten(), edited[4].weight.flatten()])  # 36 + 12 = 48 weights
        assert int(w.eq(0).sum()) == round(0.6 * 48)
        assert not torch.equal(edited[0].weight.eq(0).flatten(2).all(-1), edited[0].weight.eq(0).flatten(2).any(-1))
        cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="gate_granularity='weight' gates single kernel weights"):
        MetanetworkEditor("data_minimisation", {"k": 2}, gate_granularity="weight")
    with pytest.raises(ValueError, match="gate_granularity must be"):
        MetanetworkEditor("weight_pruning", gate_granularity="channel")
    with pytest.raises(ValueError, match="gate_prior must be"):
        MetanetworkEditor("weight_pruning", gate_prior="taylor")
    with pytest.raises(ValueError, match="prior_scale must be > 0"):
        MetanetworkEditor("weight_pruning", gate_prior_scale=0.0)
    assert float(MetanetworkEditor("weight_pruning", gate_prior_scale=0.1).metanet.prior_scale) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="gate_prior_scale=0.1 weights the magnitude prior, which gate_prior='none'"):
        MetanetworkEditor("weight_pruning", gate_prior="none", gate_prior_scale=0.1)
    with pytest.raises(ValueError, match="gate_prior_scale=2.0 weights the magnitude prior"):
        MetanetworkEditor("bias_mitigation", gate_prior_scale=2.0)  # no prior by default for this requirement
    with pytest.raises(ValueError, match="prior_scale=0.5 weights the magnitude prior"):
        GraphMetanetwork(gate_prior="none", prior_scale=0.5)


def test_cnn_pruning_editor_checkpoints_reload_as_trained_old_and_new(tmp_path):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    new = MetanetworkEditor("weight_pruning", {"sparsity": 0.6}, hidden=8, num_layers=1, kernel_size=3)
    assert (new.hparams.gate_prior, new.hparams.gate_granularity) == ("magnitude", "weight")  # the pruning defaults
    assert MetanetworkEditor("data_minimisation", {"k": 2}).hparams.gate_prior == "none"
    old = MetanetworkEditor("weight_pruning", {"sparsity": 0.6}, hidden=8, num_layers=1, kernel_size=3,
                            gate_prior="none", gate_granularity="edge")
    for editor, name in ((new, "new"), (old, "old")):
        with torch.no_grad():
            editor.metanet.edge_gate_head.weight.normal_()  # a "trained" editor: its gates depend on the graph
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
        trainer.strategy.connect(editor)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
    saved = torch.load(tmp_path / "old.ckpt", weights_only=False)
    for key in ("gate_prior", "gate_granularity", "gate_bias"):  # as saved before these options existed
        del saved["hyper_parameters"][key]
    torch.save(saved, tmp_path / "old.ckpt")
    for editor, name in ((new, "new"), (old, "old")):
        loaded = MetanetworkEditor.load_from_checkpoint(tmp_path / f"{name}.ckpt")
        assert loaded.hparams.gate_granularity == editor.hparams.gate_granularity
        for p, q in zip(editor.eval().edit(cnn).parameters(), loaded.eval().edit(cnn).parameters()):
            assert torch.equal(p, q)


def test_layer_floor_keeps_every_layer_alive_within_the_same_budget():
    from lightning_edit.metanet import LayerSpec

    # layer 1: 8 edges with the lowest logits; layer 2: 2 edges. Global top-k at 70% (7 removed) leaves 1 in layer 1.
    specs = [LayerSpec("a", "linear", 4, 2), LayerSpec("b", "linear", 2, 1)]
    logits = torch.tensor([-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 1.0, 2.0])
    net = NetworkEdit(specs, logits, logits.new_zeros(0))
    assert WeightPruning(sparsity=0.7, min_layer_density=0).edge_mask(net, hard=True).tolist() == [0.0] * 7 + [1.0] * 3
    # a floor of 0.25 keeps ceil(0.25 * 8) = 2 of layer 1 (its highest logits) and 1 of layer 2; the 7th removal
    # moves to layer 2's weaker edge
    mask = WeightPruning(sparsity=0.7, min_layer_density=0.25).edge_mask(net, hard=True)
    assert mask.tolist() == [0.0] * 6 + [1.0, 1.0] + [0.0, 1.0]
    assert int(mask.eq(0).sum()) == 7
    assert WeightPruning(sparsity=0.7).min_layer_density == pytest.approx(0.15)  # default: half of 1 - sparsity
    with pytest.raises(ValueError, match="min_layer_density must be in"):
        WeightPruning(sparsity=0.7, min_layer_density=0.35)


def test_weight_changes_see_the_mask_only_when_gate_conditioned():
    torch.manual_seed(0)
    g = Batch.from_data_list([to_graph(make_mlp(6, [5], 2))])
    keep_all = lambda e, n: torch.ones_like(e)  # noqa: E731
    drop_half = lambda e, n: (torch.arange(len(e)) % 2).float()  # noqa: E731
    for conditioned in (True, False):
        metanet = GraphMetanetwork(hidden=8, num_layers=1, init_scale=1.0, gate_conditioned=conditioned).eval()
        with torch.no_grad():
            a, b = metanet(g, keep_all), metanet(g, drop_half)
        assert torch.equal(b.edge_mask, (torch.arange(len(b.edge_mask)) % 2).float())
        assert torch.equal(a.edge_gate, b.edge_gate)  # gates are read before the mask exists
        assert torch.allclose(a.delta_edge, b.delta_edge) != conditioned


def test_lagrangian_multiplier_rises_while_violated_and_falls_once_met(zoo_large_batches, tmp_path):
    def fit(target):
        L.seed_everything(0)
        editor = MetanetworkEditor("bias_mitigation", {"target": target}, hidden=8, num_layers=1,
                                   constraint="lagrangian", requirement_weight=1.0, multiplier_lr=0.5)
        L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                  default_root_dir=str(tmp_path)).fit(editor, zoo_large_batches)
        return float(editor.multiplier)

    assert fit(0.0) > 1.0  # the surrogate gap is never 0: the multiplier grows
    assert fit(1.0) == 0.0  # always met: it falls to 0 and stays there
    with pytest.raises(ValueError, match="constraint='lagrangian' needs a requirement with a target"):
        MetanetworkEditor("weight_pruning", constraint="lagrangian")
    with pytest.raises(ValueError, match="constraint='proxy_lagrangian' needs a requirement with a target"):
        MetanetworkEditor("data_minimisation", {"k": 2}, constraint="proxy_lagrangian")
    with pytest.raises(ValueError, match="constraint must be"):
        MetanetworkEditor("bias_mitigation", constraint="barrier")
    with pytest.raises(ValueError, match="multiplier_lr must be > 0"):
        MetanetworkEditor("bias_mitigation", constraint="lagrangian", multiplier_lr=0.0)
    with pytest.raises(ValueError, match="multiplier_lr=0.1 steps the Lagrange multiplier, which constraint='penalty'"):
        MetanetworkEditor("bias_mitigation", multiplier_lr=0.1)
    assert MetanetworkEditor("bias_mitigation", constraint="lagrangian", multiplier_lr=0.1).hparams.multiplier_lr == 0.1


def test_proxy_lagrangian_multiplier_follows_the_exact_gap(zoo_large_batches, tmp_path, monkeypatch):
    x, y, s = zoo_large_batches.data.val_set.tensors
    model = zoo_large_batches.models[zoo_large_batches.test_idx[0]]
    with torch.no_grad():
        logits = model(x)
    req = BiasMitigation(target=0.01)
    exact = fairness_differences(logits.argmax(-1).float(), y, s)["eo_difference"]  # hard decisions as probabilities
    assert float(req.exact_violation(logits, y, s)) == pytest.approx(float(exact) - 0.01, abs=1e-6)
    assert float(req.exact_violation(logits, y, torch.zeros_like(s))) == 0.0  # one group empty: no information

    def fit(constraint):
        L.seed_everything(0)
        editor = MetanetworkEditor("bias_mitigation", {"target": 0.0}, hidden=8, num_layers=1, constraint=constraint,
                                   requirement_weight=1.0, multiplier_lr=0.5)
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                  default_root_dir=str(tmp_path)).fit(editor, zoo_large_batches)
        return float(editor.multiplier)

    # the exact gap says "met by a wide margin" while the surrogate gap (target 0) is always violated
    monkeypatch.setattr(BiasMitigation, "exact_violation", lambda self, logits, y, s: torch.tensor(-1.0))
    assert fit("lagrangian") > 1.0
    assert fit("proxy_lagrangian") == 0.0


def test_task_term_is_the_only_signal_when_the_requirement_is_met_and_lam_is_zero(zoo, tmp_path):
    def fit(task_weight):
        L.seed_everything(0)
        editor = MetanetworkEditor("bias_mitigation", {"target": 1.0}, lam=0.0, hidden=8, num_layers=1,
                                   task_weight=task_weight)
        before = [p.detach().clone() for p in editor.parameters()]
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                  default_root_dir=str(tmp_path)).fit(editor, zoo)
        return all(torch.equal(a, b) for a, b in zip(before, editor.parameters())), editor.trainer.callback_metrics

    unchanged, _ = fit(0.0)  # zero loss: Adam leaves every weight where it was
    assert unchanged
    unchanged, metrics = fit(1.0)  # the labels' cross-entropy alone moves the editor
    assert not unchanged and 0.0 < float(metrics["train/task_loss"]) < 1.0
    with pytest.raises(ValueError, match="task_weight must be >= 0"):
        MetanetworkEditor("bias_mitigation", task_weight=-1.0)


def test_single_threshold_meets_the_level_without_the_sensitive_attribute(zoo):
    model = zoo.models[zoo.test_idx[0]]
    xv, yv, sv = zoo.data.val_set.tensors
    fair = BiasMitigation()
    with torch.no_grad():
        p = model(xv).softmax(-1)[:, 1]
        base = fairness_differences(p, yv, sv)["eo_difference"]
    free = fit_single_threshold(model, xv, yv, sv, fair, level=1.0)  # any gap allowed: the most accurate threshold
    with torch.no_grad():
        accs = [float(((p > t).long() == yv).float().mean()) for t in torch.linspace(0.01, 0.99, 97)]
        assert float((free(xv).argmax(-1) == yv).float().mean()) == pytest.approx(max(accs), abs=1e-6)
    level = float(base) * 0.8
    clf = fit_single_threshold(model, xv, yv, sv, fair, level)
    assert isinstance(clf, ThresholdClassifier)
    with torch.no_grad():
        gap = fairness_differences(clf(xv).softmax(-1)[:, 1], yv, sv)["eo_difference"]  # predicts from x alone
    assert float(gap) <= level + 1e-6
    group = fit_group_thresholds(model, xv, yv, sv, fair, level)  # more freedom: at least as accurate
    with torch.no_grad():
        assert (group(xv, sv).argmax(-1) == yv).float().mean() >= (clf(xv).argmax(-1) == yv).float().mean() - 1e-6


def test_population_with_activations_and_held_out_architectures(zoo, tmp_path):
    dm = ModelZooDataModule(num_models=16, widths=[8, 12], depths=[1, 2], epochs=[1], activations=["relu", "tanh"],
                            heldout_widths=[12], heldout_depths=[2], split=(0.4, 0.3), root=str(tmp_path), data=zoo.data,
                            seed=1)
    dm.setup()
    seen = dm.train_idx + dm.val_idx + dm.test_idx
    assert sorted(seen + dm.heldout_arch_idx) == list(range(16)) and dm.val_idx and dm.test_idx
    assert all(dm.configs[i]["hidden"] == [8] for i in seen)
    assert all(dm.configs[i]["hidden"] != [8] for i in dm.heldout_arch_idx) and dm.heldout_arch_idx
    kinds = {type(m[1]) for m in dm.models}
    assert kinds == {nn.ReLU, nn.Tanh}
    with pytest.raises(ValueError, match="cover every width or depth"):
        ModelZooDataModule(widths=[8], heldout_widths=[8])
    with pytest.raises(ValueError, match="Unknown activations"):
        ModelZooDataModule(activations=["relu", "swish"])
    with pytest.raises(ValueError, match=r"name \[128, 3\], which widths=\[16, 32\] / depths=\[1, 2\] never draw"):
        ModelZooDataModule(widths=[16, 32], depths=[1, 2], heldout_widths=[128], heldout_depths=[3])
    with pytest.raises(ValueError, match="data_root='elsewhere' locates the default Adult data"):
        ModelZooDataModule(data=zoo.data, data_root="elsewhere")


def test_population_cache_is_keyed_on_the_data(zoo):
    from lightning_edit.data import AdultDataModule

    other_rows = AdultDataModule(val_size=1000)  # other training rows, same configurations
    other_rows.setup()
    again = ModelZooDataModule(num_models=12, widths=[8, 16], depths=[1, 2], epochs=[1], root=str(zoo.root), seed=0,
                               data=other_rows)
    assert again.cache_path() != zoo.cache_path()
