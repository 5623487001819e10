"""Every evaluation metric against an independent reference: sklearn, or a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from graft.evaluation import metrics
from graft.evaluation.alignment import alignment_score


def test_topk_accuracy_hand_case():
    scores = np.array([
        [0.9, 0.05, 0.05],  # true 0 -> rank 0
        [0.5, 0.3, 0.2],  # true 1 -> rank 1
        [0.6, 0.3, 0.1],  # true 2 -> rank 2
        [0.1, 0.1, 0.8],  # true 2 -> rank 0
    ])
    labels = np.array([0, 1, 2, 2])
    acc = metrics.topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(2 / 4)
    assert acc[2] == pytest.approx(3 / 4)
    assert acc[5] == pytest.approx(1.0)  # k clamped to the 3 classes


def test_topk_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.topk_accuracy(np.zeros((2, 2)), np.array([0, 2]))


def test_mean_per_class_accuracy_matches_sklearn_balanced_accuracy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))
    ours = metrics.mean_per_class_accuracy(pred, labels, 5)
    assert ours == pytest.approx(balanced_accuracy_score(labels, pred))
    # a class absent from the labels does not count
    assert metrics.mean_per_class_accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]), 4) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    relevant = rng.random(n) < 0.3
    relevant[0] = True
    scores = rng.random(n) + 0.5 * relevant
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert metrics.average_precision(scores, relevant) == pytest.approx(average_precision_score(relevant, scores))


def test_average_precision_hand_case_and_no_positive():
    # ranking: R N R N -> AP = (1/1 + 2/3) / 2
    assert metrics.average_precision(np.array([4, 3, 2, 1]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(metrics.average_precision(np.array([1.0, 2.0]), np.array([0, 0])))


def test_multilabel_map_matches_sklearn_macro_and_skips_empty_classes():
    rng = np.random.default_rng(1)
    targets = (rng.random((80, 5)) < 0.3).astype(int)
    targets[0] = 1
    scores = rng.random((80, 5)) + 0.4 * targets
    mean_ap, per_class = metrics.multilabel_average_precision(scores, targets)
    assert mean_ap == pytest.approx(average_precision_score(targets, scores, average="macro"))
    for c in range(5):
        assert per_class[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]))
    targets[:, 2] = 0
    mean_ap, per_class = metrics.multilabel_average_precision(scores, targets)
    assert np.isnan(per_class[2])
    assert mean_ap == pytest.approx(np.mean([per_class[c] for c in (0, 1, 3, 4)]))


def test_retrieval_metrics_hand_case():
    # query 0: relevant at ranks 2 and 4 of 5, 3 relevant in the collection (one never retrieved)
    # query 1: relevant at rank 1, 1 relevant
    # query 2: nothing relevant in the collection -> left out
    ranked = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    n_rel = np.array([3, 1, 0])
    m = metrics.retrieval_metrics(ranked, n_rel, recall_ks=(1, 2, 5), precision_ks=(2, 5))
    ap0 = (1 / 2 + 2 / 4) / 3
    assert m["map"] == pytest.approx((ap0 + 1.0) / 2)
    assert m["r@1"] == pytest.approx(0.5)  # only query 1 hits at rank 1
    assert m["r@2"] == pytest.approx(1.0)
    assert m["p@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["p@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)


def test_retrieval_map_on_full_ranking_equals_sklearn_ap():
    rng = np.random.default_rng(2)
    scores = rng.random(50)
    relevant = rng.random(50) < 0.4
    order = np.argsort(-scores)
    m = metrics.retrieval_metrics(relevant[order][None, :], np.array([relevant.sum()]))
    assert m["map"] == pytest.approx(average_precision_score(relevant, scores))


def test_confusion_matrix_and_miou_hand_computed():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    conf = metrics.confusion_matrix(gt, pred, num_classes=4, ignore_index=255)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 1] = 1
    np.testing.assert_array_equal(conf, expected)
    m = metrics.segmentation_metrics(conf)
    # IoU0 = 1/(2+1-1)=1/2; IoU1 = 2/(4+2-2)=1/2; IoU2 = 0/(0+1-0)=0; class 3 absent from both -> excluded
    np.testing.assert_allclose(m["iou_per_class"][:3], [0.5, 0.5, 0.0])
    assert np.isnan(m["iou_per_class"][3])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)


def test_confusion_matrix_rejects_out_of_range_prediction():
    with pytest.raises(ValueError, match="pred outside"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), num_classes=2)


def test_mutual_knn_hand_case():
    # A on a line: neighbours of 0 are {1}, of 1 are {0 or 2} (tie), ...; use k=1 on points without ties.
    a = np.array([[1.0, 0.0], [0.95, 0.31], [0.0, 1.0], [-0.3, 0.95]])
    # B swaps which point is 0's nearest neighbour: 0's nearest is now 3.
    b = np.array([[1.0, 0.0], [0.0, 1.0], [-0.3, 0.95], [0.95, 0.31]])
    # kNN(A): 0->1, 1->0, 2->3, 3->2 ; kNN(B): 0->3, 1->2, 2->1, 3->0 -> no overlap at all
    assert metrics.mutual_knn_alignment(a, b, k=1) == pytest.approx(0.0)
    assert metrics.mutual_knn_alignment(a, a, k=1) == pytest.approx(1.0)
    # k=2: A: 0->{1,3}? compute by brute force below
    def knn(x, k):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:k]) for row in s]
    na, nb = knn(a, 2), knn(b, 2)
    expected = np.mean([len(na[i] & nb[i]) / 2 for i in range(4)])
    assert metrics.mutual_knn_alignment(a, b, k=2) == pytest.approx(expected)


def test_mutual_knn_is_invariant_to_rotation_and_low_for_unrelated_spaces():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert alignment_score(a, a @ q, k=10) == pytest.approx(1.0)
    unrelated = alignment_score(a, rng.normal(size=(300, 8)), k=10)
    assert unrelated < 0.15  # chance level is k / N ~ 0.03
    with pytest.raises(ValueError, match="k < N"):
        alignment_score(a[:5], a[:5], k=10)
