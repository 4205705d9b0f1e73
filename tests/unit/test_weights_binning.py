"""Specification of the weights stage's arithmetic: bins, targets, weights and the lookup."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from upp_grid.config import Reweight
from upp_grid.errors import UppGridError
from upp_grid.stages.histograms import ReweightHists, compute_weights, flat_bins
from upp_grid.stages.weights import (
    FlatnessError,
    build_hists,
    check_flatness,
    make_target,
    make_weights,
)

JETS = np.dtype([("pt", "f4"), ("eta", "f4"), ("flavour_label", "i4")])
TRACKS = np.dtype([("deta", "f4"), ("leptonID", "i1"), ("valid", "?")])


def reweight(target="mean", overflow=True, group="jets", variables=("pt", "eta"),
             class_var="flavour_label") -> Reweight:
    bins = {"pt": ((0.0, 10.0, 2), (10.0, 30.0, 2)), "eta": ((-1.0, 1.0, 2),),
            "deta": ((-1.0, 1.0, 4),)}
    return Reweight(group, tuple(variables), MappingProxyType({v: bins[v] for v in variables}),
                    class_var, target, overflow)


def hists_of(rw: Reweight, hists: dict[int, np.ndarray]) -> ReweightHists:
    edges = tuple(rw.edges(v) for v in rw.reweight_vars)
    target = make_target(rw, hists)
    return ReweightHists(rw, edges, tuple(sorted(hists)), hists, target,
                         make_weights(hists, target))


def jets(*rows: tuple[float, float, int]) -> np.ndarray:
    return np.array(list(rows), dtype=JETS)


# ----------------------------------------------------------------------------- bins
def test_a_value_on_an_interior_edge_goes_to_the_bin_above():
    edges = [np.array([0.0, 1.0, 2.0, 3.0])]
    assert flat_bins(edges, [np.array([0.0, 0.999, 1.0, 2.0, 2.5])]).tolist() == [0, 0, 1, 2, 2]


def test_without_overflow_values_outside_the_range_and_nan_have_no_bin():
    edges = [np.array([0.0, 1.0, 2.0])]
    values = np.array([-0.1, 2.0, 7.0, np.nan, np.inf, 1.5])
    assert flat_bins(edges, [values]).tolist() == [-1, -1, -1, -1, -1, 1]


def test_with_overflow_every_finite_value_has_a_bin():
    rw = reweight(variables=("pt",))
    edges = [rw.edges("pt")]  # -inf, 0, 5, 10, 20, 30, inf
    values = np.array([-1e30, -1.0, 0.0, 29.999, 30.0, 1e30, np.nan])
    assert flat_bins(edges, [values]).tolist() == [0, 0, 1, 4, 5, 5, -1]


def test_flat_bins_are_c_order_over_the_variables():
    edges = [np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0, 3.0])]
    flat = flat_bins(edges, [np.array([0.5, 1.5, 1.5]), np.array([2.5, 0.5, 2.5])])
    assert flat.tolist() == [2, 3, 5]


# ----------------------------------------------------------------------------- targets
H0 = np.array([[4, 0], [2, 6]])
H1 = np.array([[1, 3], [2, 2]])
H2 = np.array([[3, 3], [8, 1]])


@pytest.mark.parametrize(("target", "expected"), [
    ("mean", (H0 + H1 + H2) / 3),
    ("min", np.minimum(np.minimum(H0, H1), H2)),
    ("max", np.maximum(np.maximum(H0, H1), H2)),
    ("uniform", np.ones((2, 2))),
    (1, H1),
    ((0, 2), (H0 + H2) / 2),
])
def test_targets_are_bin_wise_over_the_class_histograms(target, expected):
    rw = reweight(target=target)
    got = make_target(rw, {0: H0, 1: H1, 2: H2})
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("target", [7, (0, 7)])
def test_an_unknown_target_label_names_the_reweight(target):
    rw = reweight(target=target)
    with pytest.raises(UppGridError, match=rf"reweight {rw.name}: class_target label 7 .*"
                                           r"found: 0, 1, 2"):
        make_target(rw, {0: H0, 1: H1, 2: H2})


def test_a_bin_where_any_class_is_empty_gets_weight_zero_for_every_class():
    target = np.array([[2.0, 2.0], [4.0, 3.0]])
    weights = make_weights({0: H0, 1: H1}, target)
    np.testing.assert_array_equal(weights[0], [[2 / 4, 0], [4 / 2, 3 / 6]])
    np.testing.assert_array_equal(weights[1], [[2 / 1, 0], [4 / 2, 3 / 2]])


def test_weighted_classes_equal_the_target_in_populated_bins():
    h = hists_of(reweight(overflow=False), {0: np.array([[5, 1], [0, 2], [3, 3], [1, 9]]),
                                            1: np.array([[1, 1], [7, 3], [0, 0], [2, 1]])})
    for c in h.classes:
        populated = h.populated
        np.testing.assert_allclose((h.hists[c] * h.weights[c])[populated], h.target[populated])
    assert check_flatness(h) < 1e-6


def test_flatness_check_fails_loudly_on_wrong_weights():
    h = hists_of(reweight(overflow=False), {0: np.full((4, 2), 3), 1: np.full((4, 2), 5)})
    h.weights[0][1, 1] *= 1.001
    with pytest.raises(FlatnessError, match=h.reweight.name):
        check_flatness(h)


# ----------------------------------------------------------------------------- lookup
def test_compute_weights_looks_up_the_class_and_bin_of_each_jet():
    rw = reweight(overflow=False)  # pt edges 0, 5, 10, 20, 30; eta -1, 0, 1
    h0 = np.arange(1, 9).reshape(4, 2)
    h = hists_of(rw, {0: h0, 3: np.full((4, 2), 2)})
    rows = jets((1, -0.5, 0), (12, 0.5, 0), (29.9, 0.9, 3), (12, 0.5, 1))
    w = compute_weights(h, rows)
    assert w.dtype == np.float32
    expected = [h.weights[0][0, 0], h.weights[0][2, 1], h.weights[3][3, 1], 0.0]
    np.testing.assert_allclose(w, expected, rtol=1e-7)


def test_compute_weights_is_zero_outside_the_range_without_overflow():
    rw = reweight(overflow=False)
    h = hists_of(rw, {0: np.full((4, 2), 2), 1: np.full((4, 2), 4)})
    rows = jets((-1, 0.5, 0), (30.0, 0.5, 0), (31, 0.5, 1), (np.nan, 0.5, 1), (29.99, 0.99, 1))
    w = compute_weights(h, rows)
    assert w[:4].tolist() == [0, 0, 0, 0]
    assert w[4] == pytest.approx(h.weights[1][3, 1])  # the edge bin keeps its own weight


def test_compute_weights_uses_the_overflow_bins_with_overflow():
    rw = reweight(overflow=True)  # pt has 6 bins, eta 4
    h = hists_of(rw, {0: np.full((6, 4), 2), 1: np.arange(1, 25).reshape(6, 4)})
    w = compute_weights(h, jets((-7, 3, 1), (1e9, -3, 1)))
    np.testing.assert_allclose(w, [h.weights[1][0, 3], h.weights[1][5, 0]], rtol=1e-7)


def test_track_weights_are_zero_for_invalid_entries():
    rw = reweight(group="tracks", variables=("deta",), class_var="leptonID")
    h = hists_of(rw, {0: np.array([0, 1, 2, 3, 4, 5]), 11: np.array([0, 5, 4, 3, 2, 1])})
    tracks = np.zeros((2, 3), dtype=TRACKS)
    tracks[0, :2] = [(0.1, 11, True), (-0.9, 0, True)]
    tracks[1, 0] = (0.7, 13, True)  # a class the histograms do not know
    w = compute_weights(h, tracks)
    assert w.shape == (2, 3)
    np.testing.assert_allclose(w[0], [h.weights[11][3], h.weights[0][1], 0], rtol=1e-7)
    assert w[1].tolist() == [0, 0, 0]


def test_counts_histogram_every_class_found_in_the_entries():
    from upp_grid.stages.weights import Counts, HistSpec

    rw = reweight(variables=("pt",))
    counts = Counts(HistSpec.of(rw))
    counts.add(jets((1, 0, 0), (12, 0, 1), (12, 0, 0)))
    h = build_hists(rw, counts)
    assert h.classes == (0, 1)
    assert h.hists[0].tolist() == [0, 1, 0, 1, 0, 0]
    assert h.hists[1].tolist() == [0, 0, 0, 1, 0, 0]


def test_sparse_class_values_far_apart_are_counted_exactly():
    from upp_grid.stages.weights import Counts, HistSpec

    rw = reweight(group="tracks", variables=("deta",), class_var="leptonID")
    rows = np.zeros(4, dtype=[("deta", "f4"), ("leptonID", "i8")])
    rows["leptonID"] = [-(10**12), 10**12, 10**12, 5]
    counts = Counts(HistSpec.of(rw))
    counts.add(rows)
    assert sorted(counts.bins) == [-(10**12), 5, 10**12]
    assert counts.bins[10**12].sum() == 2
