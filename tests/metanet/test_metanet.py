"""Neural graphs, the metanetwork and MetanetworkEditor with a real population of MLPs trained on UCI Adult."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from lightning_edit.metanet import (
    GraphMetanetwork,
    MetanetworkEditor,
    ModelZooDataModule,
    make_mlp,
    to_graph,
    to_parameters,
)
from lightning_edit.metanet.editor import jensen_shannon
from lightning_edit.models import SmallCNN


def test_exact_round_trip_mlp_and_cnn():
    torch.manual_seed(0)
    mlp = make_mlp(7, [5, 4], 3)
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    for model, n_nodes, n_edges in ((mlp, 7 + 5 + 4 + 3, 7 * 5 + 5 * 4 + 4 * 3), (cnn, 2 + 4 + 3 + 5, 8 + 12 + 15)):
        g = to_graph(model)
        assert g.num_nodes == n_nodes and g.edge_index.shape == (2, n_edges)
        params = to_parameters(g.specs, g.edge_attr, g.bias, model)
        for name, p in model.named_parameters():
            assert torch.equal(params[name], p), name
    g = to_graph(cnn)
    assert g.edge_attr.shape[1] == 9  # 3x3 kernels; the 1x1 conv and the linear layer are zero-padded
    assert g.pos[:2].tolist() == [0, 1] and len(set(g.pos[2:6].tolist())) == 1  # inputs distinct, hidden shared
    assert len(set(g.pos[-5:].tolist())) == 5  # outputs distinct


def edited_params(metanet, model):
    g = Batch.from_data_list([to_graph(model)])
    out = metanet(g)
    gate = torch.sigmoid(out.edge_gate)[:, None]
    return to_parameters(g.specs[0], (g.edge_attr + out.delta_edge) * gate, g.bias + out.delta_node, model)


def test_hidden_permutation_equivariance_and_io_identity():
    torch.manual_seed(0)
    metanet = GraphMetanetwork(hidden=16, num_layers=2, init_scale=1.0).eval()
    model = make_mlp(6, [5], 3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = make_mlp(6, [5], 3)
    with torch.no_grad():
        permuted[0].weight.copy_(model[0].weight[perm])
        permuted[0].bias.copy_(model[0].bias[perm])
        permuted[2].weight.copy_(model[2].weight[:, perm])
        permuted[2].bias.copy_(model[2].bias)
    a, b = edited_params(metanet, model), edited_params(metanet, permuted)
    torch.testing.assert_close(b["0.weight"], a["0.weight"][perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b["0.bias"], a["0.bias"][perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b["2.weight"], a["2.weight"][:, perm], atol=1e-5, rtol=1e-4)
    # inputs keep their identities: permuting input features is *not* a symmetry
    swapped = make_mlp(6, [5], 3)
    in_perm = torch.tensor([1, 0, 2, 3, 4, 5])
    with torch.no_grad():
        swapped[0].weight.copy_(model[0].weight[:, in_perm])
        swapped[0].bias.copy_(model[0].bias)
        swapped[2].load_state_dict(model[2].state_dict())
    c = edited_params(metanet, swapped)
    assert not torch.allclose(c["0.weight"], a["0.weight"][:, in_perm], atol=1e-4)


def test_untrained_editor_is_near_identity(zoo):
    torch.manual_seed(0)
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.0}, hidden=16, num_layers=2)
    model = zoo.models[zoo.test_idx[0]]
    edited = editor.edit(model)
    x = zoo.data.test_set.tensors[0][:512]
    with torch.no_grad():
        assert float(jensen_shannon(model(x), edited(x))) < 5e-3  # JSD is at most ln 2 = 0.69
    for (n, p), q in zip(model.named_parameters(), edited.parameters()):
        assert (p - q).abs().max() < 0.05 * p.abs().max() + 0.05, n


def test_short_training_lowers_requirement_on_held_out_networks_and_sparsity_is_exact(zoo, tmp_path):
    L.seed_everything(0)
    editor = MetanetworkEditor("weight_pruning", {"sparsity": 0.6}, hidden=16, num_layers=2, lr=3e-3)

    def held_out_requirement():
        g = Batch.from_data_list([to_graph(zoo.models[i]) for i in zoo.test_idx])
        with torch.no_grad():
            nets = editor.split_output(g, editor.metanet(g))
            return float(torch.stack([editor.requirement.loss(n, None, None, None) for n in nets]).mean())

    before = held_out_requirement()
    L.Trainer(max_epochs=30, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path)).fit(editor, zoo)
    after = held_out_requirement()
    assert after < 0.5 * before, (before, after)
    unseen = make_mlp(zoo.data.num_features, [24], 2)  # a width never in the population
    edited = editor.edit(unseen)
    weights = torch.cat([edited[0].weight.flatten(), edited[2].weight.flatten()])
    assert int((weights == 0).sum()) == round(0.6 * len(weights))


def test_population_cache_reloads(zoo):
    again = ModelZooDataModule(num_models=12, widths=[8, 16], depths=[1, 2], epochs=[1], graphs_per_batch=4,
                               root=str(zoo.root), seed=0, data=zoo.data)
    assert zoo.cache_path().is_file()
    again.setup()
    for a, b in zip(zoo.models, again.models):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    assert torch.load(zoo.cache_path(), weights_only=True)["configs"] == zoo.configs


def test_bad_input(zoo):
    with pytest.raises(ValueError, match="'features.1' \\(BatchNorm2d\\) is not supported"):
        to_graph(SmallCNN())
    bad = make_mlp(4, [3], 2)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        to_graph(bad)
    with pytest.raises(ValueError, match="population is empty"):
        ModelZooDataModule(num_models=0)
    editor = MetanetworkEditor(hidden=8, num_layers=1)
    editor.num_inputs = zoo.data.num_features
    with pytest.raises(ValueError, match="inputs; this editor was trained on"):
        editor.edit(make_mlp(10, [4], 2))
    with pytest.raises(ValueError, match="sparsity"):
        MetanetworkEditor("weight_pruning", {"sparsity": 1.0})


def test_metanetwork_editor_under_the_package_editor_protocol(zoo):
    from lightning_edit.edit import MetanetworkEdit, make_editor

    torch.manual_seed(0)
    editor = make_editor("metanetwork", checkpoint=MetanetworkEditor("weight_pruning", {"sparsity": 0.5}, hidden=16,
                                                                     num_layers=1))
    assert isinstance(editor, MetanetworkEdit)
    model = zoo.models[zoo.test_idx[0]]
    x, y, _ = zoo.eval_tensors("test")
    edited, result = editor.edit(model, x[:256], y[:256])
    assert edited is not model and result.steps == 0 and result.success
    with torch.no_grad():
        assert result.edit_accuracy == pytest.approx(float((edited(x[:256]).argmax(1) == y[:256]).float().mean()))
    weights = torch.cat([p.flatten() for n, p in edited.named_parameters() if n.endswith("weight")])
    assert int((weights == 0).sum()) == round(0.5 * len(weights))
