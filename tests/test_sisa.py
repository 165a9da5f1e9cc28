"""SISA as plain torch: layout, schedules, slice training with checkpoints, exact unlearning, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayfed.data.datasets import load_dataset
from rayfed.errors import UserError
from rayfed.sisa.ensemble import classification_metrics, combine_shards, ensemble_loss, majority_vote, vote_shares
from rayfed.sisa.plan import affected_shards, make_layout, read_index_file, resolve_forget
from rayfed.sisa.schedule import epochs_per_stage, expected_speedup, stage_samples
from rayfed.sisa.train import ShardTrainer, TrainSettings

# ------------------------------------------------------------------------------------------------ layout


def test_layout_covers_every_index_exactly_once_in_near_equal_parts():
    layout = make_layout(103, shards=4, slices=3, seed=7)
    everything = np.concatenate([layout.shard_indices(s) for s in range(4)])
    assert sorted(everything.tolist()) == list(range(103))
    assert sorted(len(layout.shard_indices(s)) for s in range(4)) == [25, 26, 26, 26]
    for s in range(4):
        sizes = [len(part) for part in layout.slices[s]]
        assert max(sizes) - min(sizes) <= 1
    rows = layout.rows()
    assert [r["index"] for r in rows] == list(range(103))
    shard_of, slice_of = layout.locate()
    assert all(r["shard"] == shard_of[r["index"]] and r["slice"] == slice_of[r["index"]] for r in rows)


def test_layout_is_a_seeded_permutation_not_contiguous_blocks():
    a, b, c = make_layout(100, 5, 2, seed=1), make_layout(100, 5, 2, seed=1), make_layout(100, 5, 2, seed=2)
    assert all(np.array_equal(a.shard_indices(s), b.shard_indices(s)) for s in range(5))
    assert not np.array_equal(a.shard_indices(0), c.shard_indices(0))
    assert not np.array_equal(np.sort(a.shard_indices(0)), np.arange(20))  # the notebook's range(0, N/S)


@pytest.mark.parametrize("shards, slices, key", [(0, 1, "sisa.shards"), (11, 1, "sisa.shards"),
                                                 (3, 4, "sisa.slices")])
def test_layout_rejects_empty_shards_or_slices(shards, slices, key):
    with pytest.raises(UserError, match=key):
        make_layout(10, shards, slices, seed=0)  # 10 points, 3 shards -> smallest shard has 3


def test_affected_shards_maps_each_index_to_its_shard_and_first_slice():
    layout = make_layout(60, shards=3, slices=4, seed=0)
    a, b, c = layout.slices[1][2][0], layout.slices[1][1][0], layout.slices[2][3][0]
    assert affected_shards(layout, [a, c]) == {1: 2, 2: 3}
    assert affected_shards(layout, [a, b, c]) == {1: 1, 2: 3}
    assert affected_shards(layout, []) == {}


def test_forget_count_is_drawn_once_with_the_seed():
    assert resolve_forget(5, 100, seed=3) == resolve_forget(5, 100, seed=3)
    drawn = resolve_forget(5, 100, seed=3)
    assert len(set(drawn)) == 5 and all(0 <= i < 100 for i in drawn)
    assert resolve_forget(None, 100, 3) == [] and resolve_forget(0, 100, 3) == []
    with pytest.raises(UserError, match="unlearn.forget"):
        resolve_forget(101, 100, seed=3)


def test_forget_file_parsing_and_checks(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("3\n 7 11\n\n2\n")
    assert read_index_file(good, "unlearn.forget") == [3, 7, 11, 2]
    assert resolve_forget(str(good), 12, seed=0) == [3, 7, 11, 2]
    cases = {"range.txt": "1 12\n", "repeat.txt": "1\n2\n1\n", "parse.txt": "1\nseven\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match="unlearn.forget"):
            resolve_forget(str(tmp_path / name), 12, seed=0)
    with pytest.raises(UserError, match="does not exist"):
        resolve_forget(str(tmp_path / "missing.txt"), 12, seed=0)


# ---------------------------------------------------------------------------------------------- schedule


def test_schedules_by_hand():
    assert epochs_per_stage("union", 5, 5) == [5, 5, 5, 5, 5]
    # a = 2*5/6 = 5/3: floor(5/3 * [0..5]) = 0, 1, 3, 5, 6, 8 -> differences 1, 2, 2, 1, 2
    assert epochs_per_stage("distributed", 5, 5) == [1, 2, 2, 1, 2]
    # a = 2*4/4 = 2 -> 2 epochs on every union
    assert epochs_per_stage("distributed", 4, 3) == [2, 2, 2]


def test_distributed_schedule_costs_e_passes_over_the_shard():
    # samples on equal slices of n: sum_r e_r (r+1) n; the shard is R n points.
    n = 10
    assert stage_samples([n] * 5, epochs_per_stage("distributed", 5, 5)) == 5 * 5 * n  # exactly e passes here
    for e in range(1, 12):
        for slices in range(1, 25):
            samples = stage_samples([n] * slices, epochs_per_stage("distributed", e, slices))
            assert abs(samples / (slices * n) - e) < 1, (e, slices)  # up to rounding: less than one pass
    # the notebook's schedule costs e (R+1)/2 passes
    assert stage_samples([n] * 5, epochs_per_stage("union", 5, 5)) == 5 * 3 * 5 * n


def test_expected_speedup_by_hand():
    # one point, S=1, R=2, union e=1: cost C(0) = 1 + 2 = 3, C(1) = 2; E = (3 + 2) / 2 -> 3 / 2.5
    assert expected_speedup([1, 1], shards=1, requests=1) == pytest.approx(1.2)
    # S shards, one point: only one shard retrains -> at least S times cheaper
    assert expected_speedup([1] * 5, shards=5, requests=1) > 5
    assert expected_speedup([1] * 5, shards=5, requests=0) == math.inf


# -------------------------------------------------------------------------------------------- ensembles


def test_every_shard_votes_and_ties_go_to_the_lowest_class():
    def onehot(classes, num=3):
        return torch.nn.functional.one_hot(torch.tensor(classes), num).float().unsqueeze(1) * 0.8 + 0.2 / num

    probs = onehot([1, 1, 0])  # shards vote 1, 1, 0: the notebook kept only the last model's vote (0)
    assert majority_vote(probs).tolist() == [1]
    assert vote_shares(probs)[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0])
    assert majority_vote(onehot([2, 1])).tolist() == [1]  # tie 1 vs 2 -> 1
    assert majority_vote(onehot([0, 2, 2, 0])).tolist() == [0]
    pred, scores = combine_shards(onehot([2, 1, 2]), "vote")
    assert pred.tolist() == [2] and scores.sum().item() == pytest.approx(1)


def test_mean_aggregation_and_metrics():
    probs = torch.tensor([[[0.6, 0.4], [0.2, 0.8]], [[0.0, 1.0], [0.3, 0.7]]])  # S=2, n=2, C=2
    pred, scores = combine_shards(probs, "mean")
    assert torch.allclose(scores, torch.tensor([[0.3, 0.7], [0.25, 0.75]])) and pred.tolist() == [1, 1]
    m = classification_metrics(torch.tensor([0, 1]), pred, scores)
    assert m["accuracy"] == 50.0 and m["auroc"] == 1.0  # class-1 score: 0.75 for the class-1 point > 0.7
    assert m["recall"] == 0.5


def test_ensemble_loss_is_minus_log_mean_softmax_not_cross_entropy_of_probs():
    probs = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])  # two shards, one sample, label 0: mean = [0.7, 0.3]
    y = torch.tensor([0])
    assert ensemble_loss(probs, y).item() == pytest.approx(-math.log(0.7), rel=1e-6)
    notebook = torch.nn.CrossEntropyLoss()(probs.mean(0), y).item()  # softmax of probabilities: -log(e^.7/(e^.7+e^.3))
    assert notebook == pytest.approx(-math.log(math.exp(0.7) / (math.exp(0.7) + math.exp(0.3))), rel=1e-6)
    assert abs(notebook - ensemble_loss(probs, y).item()) > 0.1


# -------------------------------------------------------------------------------- training and unlearning


@pytest.fixture(scope="module")
def digits_subset():
    data = load_dataset("digits")
    return data.train_x[:240], data.train_y[:240], data


def _trainers(x, y, layout, directory, epochs=(1, 1, 1)):
    data_shape, classes = tuple(x.shape[1:]), 10
    settings = TrainSettings(model="cnn", input_shape=data_shape, num_classes=classes, epochs=epochs, lr=0.05,
                             momentum=0.9, batch_size=32, seed=5)
    trainers = []
    for s in range(layout.num_shards):
        rows = torch.from_numpy(layout.shard_indices(s))
        trainers.append(ShardTrainer(s, list(layout.slices[s]), x[rows], y[rows], settings, directory / f"shard{s}"))
    return trainers


def _states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_unlearning_retrains_only_affected_shards_from_the_right_slice_and_is_exact(digits_subset, tmp_path):
    torch.set_num_threads(1)
    x, y, _ = digits_subset
    layout = make_layout(len(y), shards=2, slices=3, seed=0)
    trainers = _trainers(x, y, layout, tmp_path / "main")
    first = [t.run() for t in trainers]
    assert [st.first_stage for st in first] == [0, 0]
    # every stage trains one epoch on the union: 80 + 160 + 240/2... sizes per shard of 120 in slices of 40
    assert first[0].samples == stage_samples([40, 40, 40], [1, 1, 1])
    before = {p: p.read_bytes() for t in trainers for p in sorted(t.store.path.glob("*.pt"))}

    forget = [int(layout.slices[1][1][3]), int(layout.slices[1][2][0])]  # shard 1, first affected slice 1
    assert affected_shards(layout, forget) == {1: 1}
    assert trainers[1].resume_point(forget) == 1
    stats = trainers[1].run(forget)
    assert stats.first_stage == 1
    assert stats.samples == stage_samples([40, 39, 39], [1, 1, 1], start=1)
    after = {p: p.read_bytes() for t in trainers for p in sorted(t.store.path.glob("*.pt"))}
    changed = sorted(p.relative_to(tmp_path).as_posix() for p in before if before[p] != after[p])
    assert changed == ["main/shard1/slice2.pt", "main/shard1/slice3.pt"]  # shard 0 and checkpoints 0, 1 untouched

    # exactness: the unlearned shard equals one trained from scratch without the points, bit for bit
    scratch = _trainers(x, y, layout, tmp_path / "scratch")
    for t in scratch:
        t.run(forget)
    assert _states_equal(trainers[1].final_state(), scratch[1].final_state())
    assert _states_equal(trainers[0].final_state(), scratch[0].final_state())
    # and differs from the shard that still holds the points (the notebook's "unlearning" kept them)
    assert not _states_equal(torch.load(tmp_path / "scratch/shard1/slice3.pt", weights_only=True)["model"],
                             {k: v for k, v in _load_model_bytes(before, tmp_path / "main/shard1/slice3.pt").items()})
    seen = torch.load(trainers[1].path(3), weights_only=True)["seen"]
    assert not set(forget) & set(seen.tolist()) and len(seen) == 118


def _load_model_bytes(files, path):
    import io

    return torch.load(io.BytesIO(files[path]), weights_only=True)["model"]


def test_a_repeated_run_resumes_with_nothing_to_do_and_a_lost_checkpoint_is_redone(digits_subset, tmp_path):
    torch.set_num_threads(1)
    x, y, _ = digits_subset
    layout = make_layout(len(y), shards=1, slices=3, seed=0)
    (trainer,) = _trainers(x, y, layout, tmp_path)
    trainer.run()
    final = trainer.final_state()
    again = trainer.run()
    assert again.first_stage == 3 and again.samples == 0
    trainer.path(2).unlink()
    trainer.path(3).unlink()  # as if the process died during stage 1
    resumed = trainer.run()
    assert resumed.first_stage == 1
    assert _states_equal(final, trainer.final_state())
