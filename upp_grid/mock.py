"""Deterministic mock training-dataset-dumper ntuples.

The files look like a grid download of dumper output: one directory per container, holding
``user.mock.<dsid>._<NNNNNN>.output.h5`` files with a 1-D structured ``jets`` dataset and a 2-D
structured track dataset of shape ``(n_jets, num_tracks)`` with a boolean ``valid`` field.

The physics is a caricature, but with the features the pipeline needs: a falling jet ``pt``
spectrum in MeV that differs by sample and flavour, jets outside the usual kinematic region,
every ftag flavour populated, a well mixed ``eventNumber % 10`` and a varying number of tracks.

Random numbers are drawn in fixed blocks of :data:`RNG_BLOCK_JETS` jets, each from
``np.random.default_rng([seed, file_index, block_index])``. The content of a file therefore
depends only on ``seed``, the file index and the number of jets in the file, never on the
``chunk_size`` used for writing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import h5py
import numpy as np

__all__ = [
    "JET_DTYPE",
    "MOCK_SAMPLES",
    "RNG_BLOCK_JETS",
    "MockSample",
    "make_mock",
    "track_dtype",
]

logger = logging.getLogger(__name__)

GEV = 1_000.0  # MeV per GeV
RNG_BLOCK_JETS = 1_000  # jets per independently seeded random-number block
JETS_CHUNK = 1_000  # HDF5 chunk length of ``jets``
TRACKS_CHUNK = 100  # HDF5 chunk length (in jets) of the track dataset

# eventNumber = (A * global_index + C) mod M: a bijection on [0, M) because gcd(A, M) = 1, so
# eventNumbers are unique over all files of a make_mock call (up to M = 1e10 jets).
# As M is a multiple of 10 and A is coprime to 10, consecutive jets cycle through all residues
# of eventNumber % 10, so every file gets an exact 80/10/10 train/val/test mix.
_EVENT_MODULUS = 10**10
_EVENT_MULTIPLIER = 7_919_317
_EVENT_OFFSET = 1_234_567_891

JET_DTYPE = np.dtype(
    [
        ("pt", "f4"),
        ("eta", "f4"),
        ("phi", "f4"),
        ("mass", "f4"),
        ("energy", "f4"),
        ("pt_btagJes", "f4"),
        ("eta_btagJes", "f4"),
        ("absEta_btagJes", "f4"),
        ("eventNumber", "i8"),
        ("mcEventWeight", "f4"),
        ("averageInteractionsPerCrossing", "f4"),
        ("HadronConeExclTruthLabelID", "i4"),
        ("HadronConeExclExtendedTruthLabelID", "i4"),
        ("HadronGhostTruthLabelID", "i4"),
        ("HadronGhostExtendedTruthLabelID", "i4"),
        ("PartonTruthLabelID", "i4"),
        ("HadronConeExclTruthLabelPt", "f4"),
        ("n_tracks", "i4"),
    ]
)

_TRACK_FLOATS = (
    "d0",
    "z0SinTheta",
    "dphi",
    "deta",
    "qOverP",
    "IP3D_signed_d0_significance",
    "IP3D_signed_z0_significance",
    "phiUncertainty",
    "thetaUncertainty",
    "qOverPUncertainty",
)

# Hit-count fields with their distributions as (values, probabilities); sampled via byte tables.
_HIT_PMFS: Mapping[str, tuple[tuple[int, ...], tuple[float, ...]]] = MappingProxyType(
    {
        "numberOfPixelHits": ((1, 2, 3, 4, 5, 6), (0.02, 0.04, 0.24, 0.42, 0.2, 0.08)),
        "numberOfSCTHits": ((4, 5, 6, 7, 8, 9, 10), (0.02, 0.03, 0.1, 0.2, 0.38, 0.17, 0.1)),
        "numberOfInnermostPixelLayerHits": ((0, 1, 2), (0.08, 0.86, 0.06)),
        "numberOfNextToInnermostPixelLayerHits": ((0, 1, 2), (0.1, 0.84, 0.06)),
        "numberOfInnermostPixelLayerSharedHits": ((0, 1), (0.94, 0.06)),
        "numberOfInnermostPixelLayerSplitHits": ((0, 1), (0.93, 0.07)),
        "numberOfPixelSharedHits": ((0, 1, 2), (0.88, 0.09, 0.03)),
        "numberOfPixelSplitHits": ((0, 1, 2), (0.9, 0.08, 0.02)),
        "numberOfSCTSharedHits": ((0, 1, 2), (0.86, 0.1, 0.04)),
        "numberOfPixelHoles": ((0, 1), (0.95, 0.05)),
        "numberOfSCTHoles": ((0, 1, 2), (0.9, 0.08, 0.02)),
    }
)
_LEPTON_PMF = ((0, 11, -11, 13, -13), (0.95, 0.0125, 0.0125, 0.0125, 0.0125))

# Flavour index order used throughout: b, c, tau, light.
_CONE_LABELS = (5, 4, 15, 0)
_PT_FLAVOUR_SCALE = (1.15, 1.07, 1.0, 0.93)
_NTRACK_FLAVOUR_SCALE = (1.25, 1.15, 0.6, 1.0)
_GHOST_FLIP_FRACTION = 0.03
_GHOST_FLIP_TARGET = ((1, 3), (0, 3), (3, 3), (1, 0))  # flavour index → two alternatives
# ftagTruthOriginLabel probabilities per flavour: pileup, fake, primary, fromB, fromBC, fromC,
# fromTau, otherSecondary.
_ORIGIN_PMFS = (
    (0.04, 0.02, 0.42, 0.26, 0.18, 0.0, 0.0, 0.08),
    (0.05, 0.02, 0.60, 0.0, 0.0, 0.25, 0.0, 0.08),
    (0.05, 0.02, 0.30, 0.0, 0.0, 0.0, 0.55, 0.08),
    (0.06, 0.02, 0.84, 0.0, 0.0, 0.0, 0.0, 0.08),
)
_DECAY_LENGTH_MM = (0.0, 0.0, 0.0, 0.3, 0.25, 0.15, 0.08, 0.5)  # per origin label


@dataclass(frozen=True)
class MockSample:
    """A mock physics sample: one grid container of dumper output.

    Attributes
    ----------
    name : str
        Short sample name, ``"ttbar"`` or ``"zprime"``.
    dsid : int
        ATLAS dataset id.
    container : str
        Grid-style container name; the directory holding the sample's files.
    """

    name: str
    dsid: int
    container: str


MOCK_SAMPLES: tuple[MockSample, ...] = (
    MockSample(
        "ttbar",
        601589,
        "user.mock.601589.e8547_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5",
    ),
    MockSample(
        "zprime",
        800030,
        "user.mock.800030.e7954_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5",
    ),
)


@dataclass(frozen=True)
class _Physics:
    """Sample-dependent generator parameters (pt in MeV)."""

    flavour_fractions: tuple[float, float, float, float]  # b, c, tau, light
    bulk_fraction: float  # fraction of jets from the soft gamma bulk, the rest from the tail
    bulk_scale: float  # gamma scale of the bulk (shape 2), MeV
    tail_min: float  # truncated Pareto tail lower edge, MeV
    tail_max: float  # truncated Pareto tail upper edge, MeV
    tail_alpha: float  # Pareto index of the tail; smaller is harder
    light_partons: tuple[float, float, float, float]  # P(u), P(d), P(s), P(g) for light jets


_PHYSICS: Mapping[str, _Physics] = MappingProxyType(
    {
        "ttbar": _Physics(
            flavour_fractions=(0.20, 0.12, 0.04, 0.64),
            bulk_fraction=0.88,
            bulk_scale=28 * GEV,
            tail_min=80 * GEV,
            tail_max=5_000 * GEV,
            tail_alpha=1.5,
            light_partons=(0.22, 0.2, 0.13, 0.45),
        ),
        "zprime": _Physics(
            flavour_fractions=(0.25, 0.20, 0.05, 0.50),
            bulk_fraction=0.15,
            bulk_scale=40 * GEV,
            tail_min=20 * GEV,
            tail_max=5_000 * GEV,
            tail_alpha=0.2,
            light_partons=(0.28, 0.26, 0.16, 0.30),
        ),
    }
)


@dataclass(frozen=True)
class _Tables:
    """256-entry lookup tables turning uniform random bytes into discrete distributions."""

    hits: Mapping[str, np.ndarray]
    lepton: np.ndarray
    origin: np.ndarray  # shape (4 flavours, 256)


@dataclass(frozen=True)
class _FileSpec:
    """Everything needed to generate one mock file."""

    sample: MockSample
    physics: _Physics
    index: int  # file index k over the whole make_mock call
    num_jets: int
    first_jet: int  # global index of the file's first jet over the whole make_mock call
    seed: int
    num_tracks: int
    tracks_name: str


def track_dtype() -> np.dtype:
    """Return the structured dtype of one track (54 bytes).

    Returns
    -------
    np.dtype
        Float track variables (f4), hit counts (u1), ``leptonID`` and ``ftagTruthOriginLabel``
        (i1) and the boolean ``valid`` flag.
    """
    fields = [(name, "f4") for name in _TRACK_FLOATS]
    fields += [(name, "u1") for name in _HIT_PMFS]
    fields += [("leptonID", "i1"), ("ftagTruthOriginLabel", "i1"), ("valid", "?")]
    return np.dtype(fields)


def make_mock(
    out_dir: Path,
    num_jets: int = 100_000,
    num_files: int = 3,
    seed: int = 42,
    num_tracks: int = 40,
    tracks_name: str = "tracks",
    chunk_size: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write mock dumper ntuples laid out like a grid download.

    File ``k`` belongs to ``MOCK_SAMPLES[k % 2]`` and is written to
    ``out_dir/<container>/user.mock.<dsid>._<NNNNNN>.output.h5``, where ``NNNNNN`` is the
    1-based index of the file within its container. Jets are split as evenly as possible over
    the files, the first files taking the remainder. Each file is written atomically.

    Parameters
    ----------
    out_dir : Path
        Directory receiving one sub-directory per container.
    num_jets : int, optional
        Total number of jets over all files, by default 100_000.
    num_files : int, optional
        Total number of files, by default 3.
    seed : int, optional
        Non-negative random seed, by default 42.
    num_tracks : int, optional
        Second dimension of the track dataset, by default 40.
    tracks_name : str, optional
        Name of the track dataset, by default "tracks".
    chunk_size : int, optional
        Jets generated and written per step; bounds the memory use, by default 50_000.
        It does not change the content.
    progress : Callable[[int], None] | None, optional
        Called with the number of jets just written after each chunk.

    Returns
    -------
    list[Path]
        The written files, in file order ``k``.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    _check_arguments(num_jets, num_files, seed, num_tracks, chunk_size)
    tables = _make_tables()
    paths = []
    first_jet = 0
    for k, n_jets in enumerate(_split_jets(num_jets, num_files)):
        sample = MOCK_SAMPLES[k % len(MOCK_SAMPLES)]
        spec = _FileSpec(
            sample, _PHYSICS[sample.name], k, n_jets, first_jet, seed, num_tracks, tracks_name
        )
        path = Path(out_dir) / sample.container / _file_name(sample, k)
        _write_file(path, spec, tables, chunk_size, progress)
        paths.append(path)
        first_jet += n_jets
    return paths


def _check_arguments(
    num_jets: int, num_files: int, seed: int, num_tracks: int, chunk_size: int
) -> None:
    """Raise ValueError for arguments make_mock cannot honour."""
    if num_files < 1:
        raise ValueError(f"num_files must be at least 1, got {num_files}")
    if num_jets < 1:
        raise ValueError(f"num_jets must be at least 1, got {num_jets}")
    if num_jets < num_files:
        raise ValueError(
            f"num_jets ({num_jets}) must be at least num_files ({num_files}) "
            "so that every file holds a jet"
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if num_tracks < 1:
        raise ValueError(f"num_tracks must be at least 1, got {num_tracks}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")


def _split_jets(num_jets: int, num_files: int) -> list[int]:
    """Split num_jets over num_files as evenly as possible, the first files taking the rest."""
    base, rest = divmod(num_jets, num_files)
    return [base + (k < rest) for k in range(num_files)]


def _file_name(sample: MockSample, k: int) -> str:
    """Grid-style name of file k; its number is the 1-based index within the container."""
    return f"user.mock.{sample.dsid}._{k // len(MOCK_SAMPLES) + 1:06d}.output.h5"


def _byte_table(values: tuple[int, ...], probs: tuple[float, ...], dtype: str) -> np.ndarray:
    """Return a 256-entry table so that ``table[uniform_byte]`` follows ``probs``."""
    edges = np.rint(np.cumsum(probs) / np.sum(probs) * 256).astype(np.int64)
    counts = np.diff(edges, prepend=0)
    return np.repeat(np.asarray(values, dtype=dtype), counts)


def _make_tables() -> _Tables:
    """Build the lookup tables for discrete track variables."""
    hits = {name: _byte_table(*pmf, "u1") for name, pmf in _HIT_PMFS.items()}
    origin = np.stack([_byte_table(tuple(range(8)), pmf, "i1") for pmf in _ORIGIN_PMFS])
    return _Tables(hits=hits, lepton=_byte_table(*_LEPTON_PMF, "i1"), origin=origin)


def _write_file(
    path: Path,
    spec: _FileSpec,
    tables: _Tables,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Write one mock file to a temporary name and rename it into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            _write_datasets(f, spec, tables, chunk_size, progress)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("Wrote %d %s jets to %s", spec.num_jets, spec.sample.name, path)


def _write_datasets(
    f: h5py.File,
    spec: _FileSpec,
    tables: _Tables,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Create the fixed-shape datasets and fill them chunk by chunk."""
    f.attrs.update(
        {"mock_seed": spec.seed, "mock_sample": spec.sample.name, "dsid": spec.sample.dsid}
    )
    f.attrs["mock_file_index"] = spec.index
    n = spec.num_jets
    jets_ds = f.create_dataset(
        "jets", shape=(n,), dtype=JET_DTYPE, chunks=(min(JETS_CHUNK, n),), track_times=False
    )
    tracks_ds = f.create_dataset(
        spec.tracks_name,
        shape=(n, spec.num_tracks),
        dtype=track_dtype(),
        chunks=(min(TRACKS_CHUNK, n), spec.num_tracks),
        track_times=False,
    )
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        _write_chunk(jets_ds, tracks_ds, spec, tables, start, stop)
        if progress is not None:
            progress(stop - start)


def _write_chunk(
    jets_ds: h5py.Dataset,
    tracks_ds: h5py.Dataset,
    spec: _FileSpec,
    tables: _Tables,
    start: int,
    stop: int,
) -> None:
    """Generate and write jets [start, stop); the buffers are freed before the next chunk."""
    jets, tracks = _generate_range(spec, tables, start, stop)
    jets_ds.write_direct(jets, dest_sel=np.s_[start:stop])
    tracks_ds.write_direct(tracks, dest_sel=np.s_[start:stop])


def _generate_range(
    spec: _FileSpec, tables: _Tables, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generate jets [start, stop) of a file from the random blocks that cover them."""
    jets = np.empty(stop - start, dtype=JET_DTYPE)
    tracks = np.zeros((stop - start, spec.num_tracks), dtype=track_dtype())
    for block in range(start // RNG_BLOCK_JETS, (stop - 1) // RNG_BLOCK_JETS + 1):
        b0 = block * RNG_BLOCK_JETS
        b1 = min(b0 + RNG_BLOCK_JETS, spec.num_jets)
        lo, hi = max(start, b0), min(stop, b1)
        if (lo, hi) == (b0, b1):
            _fill_block(spec, tables, block, jets[lo - start : hi - start], tracks[lo - start :])
            continue
        block_jets = np.empty(b1 - b0, dtype=JET_DTYPE)
        block_tracks = np.zeros((b1 - b0, spec.num_tracks), dtype=track_dtype())
        _fill_block(spec, tables, block, block_jets, block_tracks)
        jets[lo - start : hi - start] = block_jets[lo - b0 : hi - b0]
        _as_void(tracks[lo - start : hi - start])[:] = _as_void(block_tracks[lo - b0 : hi - b0])
    return jets, tracks


def _fill_block(
    spec: _FileSpec, tables: _Tables, block: int, jets: np.ndarray, tracks: np.ndarray
) -> None:
    """Fill one random-number block: all of ``jets`` and the first len(jets) rows of tracks.

    ``tracks`` must be zero-initialised; only valid entries are written.
    """
    rng = np.random.default_rng([spec.seed, spec.index, block])
    first = spec.first_jet + block * RNG_BLOCK_JETS
    flavour = _fill_jets(rng, spec, jets, first)
    valid = np.arange(spec.num_tracks) < jets["n_tracks"][:, None]
    flat = _make_tracks(rng, tables, jets, flavour, valid.sum())
    _as_void(tracks[: len(jets)])[valid] = _as_void(flat)


def _as_void(array: np.ndarray) -> np.ndarray:
    """View a structured array as opaque records: copies become plain memcpy, not per field."""
    return array.view(np.dtype((np.void, array.dtype.itemsize)))


def _fill_jets(
    rng: np.random.Generator, spec: _FileSpec, jets: np.ndarray, first: int
) -> np.ndarray:
    """Fill every jet field; return the flavour index (0 b, 1 c, 2 tau, 3 light) per jet."""
    n = len(jets)
    phys = spec.physics
    flavour = _choose(rng, phys.flavour_fractions, n)
    pt = _sample_pt(rng, phys, n) * np.take(_PT_FLAVOUR_SCALE, flavour)
    eta = rng.normal(0.0, 1.4, n)
    eta = np.where(np.abs(eta) > 4.5, eta / 2, eta)
    mass = pt * rng.uniform(0.04, 0.2, n)
    jets["pt"] = pt
    jets["eta"] = eta
    jets["phi"] = rng.uniform(-np.pi, np.pi, n)
    jets["mass"] = mass
    jets["energy"] = np.hypot(mass, pt * np.cosh(eta))
    jets["pt_btagJes"] = pt * np.clip(rng.normal(1.0, 0.05, n), 0.5, None)
    jets["eta_btagJes"] = eta + rng.normal(0.0, 0.005, n)
    jets["absEta_btagJes"] = np.abs(jets["eta_btagJes"])
    global_index = first + np.arange(n, dtype=np.int64)
    jets["eventNumber"] = (_EVENT_MULTIPLIER * global_index + _EVENT_OFFSET) % _EVENT_MODULUS
    jets["mcEventWeight"] = rng.normal(1.0, 0.05, n)
    jets["averageInteractionsPerCrossing"] = np.clip(rng.normal(34.0, 11.0, n), 5.0, 80.0)
    _fill_labels(rng, phys, jets, flavour)
    jets["n_tracks"] = _sample_n_tracks(rng, pt, flavour, spec.num_tracks)
    return flavour


def _choose(rng: np.random.Generator, probs: tuple[float, ...], n: int) -> np.ndarray:
    """Draw n indices into probs with the given probabilities."""
    return np.searchsorted(np.cumsum(probs) / np.sum(probs), rng.random(n), side="right")


def _sample_pt(rng: np.random.Generator, phys: _Physics, n: int) -> np.ndarray:
    """Jet pt in MeV: a soft gamma bulk plus a truncated Pareto tail."""
    bulk = 4 * GEV + rng.gamma(2.0, phys.bulk_scale, n)
    lo, hi, alpha = phys.tail_min, phys.tail_max, phys.tail_alpha
    u = rng.random(n)
    tail = lo * (1.0 - u * (1.0 - (lo / hi) ** alpha)) ** (-1.0 / alpha)
    return np.where(rng.random(n) < phys.bulk_fraction, bulk, tail)


def _fill_labels(
    rng: np.random.Generator, phys: _Physics, jets: np.ndarray, flavour: np.ndarray
) -> None:
    """Fill cone, ghost, extended and parton truth labels from the flavour index."""
    n = len(jets)
    ghost = flavour.copy()
    flip = rng.random(n) < _GHOST_FLIP_FRACTION
    alternative = np.asarray(_GHOST_FLIP_TARGET)[flavour, rng.integers(0, 2, n)]
    ghost[flip] = alternative[flip]
    labels = np.asarray(_CONE_LABELS)
    u_ext = rng.random(n)
    jets["HadronConeExclTruthLabelID"] = labels[flavour]
    jets["HadronGhostTruthLabelID"] = labels[ghost]
    jets["HadronConeExclExtendedTruthLabelID"] = _extended_label(labels[flavour], u_ext)
    jets["HadronGhostExtendedTruthLabelID"] = _extended_label(labels[ghost], u_ext)
    jets["PartonTruthLabelID"] = _parton_label(rng, phys, ghost)
    hadron_pt = jets["pt"] * rng.uniform(0.2, 0.9, n)
    jets["HadronConeExclTruthLabelPt"] = np.where(flavour == 3, 0.0, hadron_pt)


def _extended_label(label: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Extended label: b → 55 (6 %), 54 (8 %) or 5; c → 44 (8 %) or 4; others unchanged."""
    extended = label.copy()
    extended[(label == 5) & (u < 0.14)] = 54
    extended[(label == 5) & (u < 0.06)] = 55
    extended[(label == 4) & (u < 0.08)] = 44
    return extended


def _parton_label(rng: np.random.Generator, phys: _Physics, ghost: np.ndarray) -> np.ndarray:
    """Parton label: light → u, d, s, g; b → 5, c → 4 (90 %, else g); tau → 15."""
    light = np.asarray((1, 2, 3, 21))[_choose(rng, phys.light_partons, len(ghost))]
    heavy = np.where(rng.random(len(ghost)) < 0.9, np.take((5, 4, 15, 0), ghost), 21)
    heavy[ghost == 2] = 15
    return np.where(ghost == 3, light, heavy)


def _sample_n_tracks(
    rng: np.random.Generator, pt: np.ndarray, flavour: np.ndarray, num_tracks: int
) -> np.ndarray:
    """Overdispersed Poisson track multiplicity rising with ln(pt), capped at num_tracks."""
    mean = np.clip(1.0 + 4.0 * np.log(pt / (10 * GEV)), 0.3, None)
    mean *= np.take(_NTRACK_FLAVOUR_SCALE, flavour) * rng.gamma(4.0, 0.25, len(pt))
    return np.minimum(rng.poisson(mean), num_tracks)


def _make_tracks(
    rng: np.random.Generator,
    tables: _Tables,
    jets: np.ndarray,
    flavour: np.ndarray,
    n_valid: int,
) -> np.ndarray:
    """Return the valid tracks of a block, flattened in row-major (jet, track) order."""
    tracks = np.zeros(n_valid, dtype=track_dtype())
    jet_of = np.repeat(np.arange(len(jets)), jets["n_tracks"])
    codes = rng.integers(0, 256, size=(len(_HIT_PMFS) + 2, n_valid), dtype=np.uint8)
    for row, (name, table) in enumerate(tables.hits.items()):
        tracks[name] = table[codes[row]]
    tracks["leptonID"] = tables.lepton[codes[-2]]
    origin = tables.origin[flavour[jet_of], codes[-1]]
    tracks["ftagTruthOriginLabel"] = origin
    track_pt = _fill_track_kinematics(rng, tracks, jets["pt"][jet_of], jets["n_tracks"][jet_of])
    _fill_impact_parameters(rng, tracks, origin, track_pt)
    tracks["valid"] = True
    return tracks


def _fill_track_kinematics(
    rng: np.random.Generator, tracks: np.ndarray, jet_pt: np.ndarray, n_tracks: np.ndarray
) -> np.ndarray:
    """Fill angles to the jet axis, q/p (1/MeV) and uncertainties; return the track pt (MeV)."""
    n = len(tracks)
    width = 0.03 + 0.12 * np.sqrt(20 * GEV / np.maximum(jet_pt, 20 * GEV))
    tracks["dphi"] = rng.standard_normal(n, dtype=np.float32) * width
    tracks["deta"] = rng.standard_normal(n, dtype=np.float32) * width
    track_pt = 500.0 + jet_pt * rng.standard_exponential(n, dtype=np.float32) / n_tracks
    charge = np.where(rng.random(n, dtype=np.float32) < 0.5, -1.0, 1.0)
    q_over_p = charge / (track_pt * np.cosh(rng.normal(0.0, 1.2, n)))
    tracks["qOverP"] = q_over_p
    tracks["qOverPUncertainty"] = np.abs(q_over_p) * (0.01 + 1e-5 * track_pt / GEV)
    tracks["phiUncertainty"] = 1e-4 + 1e-3 * GEV / track_pt
    tracks["thetaUncertainty"] = 5e-5 + 5e-4 * GEV / track_pt
    return track_pt


def _fill_impact_parameters(
    rng: np.random.Generator, tracks: np.ndarray, origin: np.ndarray, track_pt: np.ndarray
) -> None:
    """Fill d0, z0 sin(theta) (mm) and their lifetime-signed significances."""
    n = len(tracks)
    pt_gev = track_pt / GEV
    sigma_d0 = np.sqrt(0.01**2 + (0.08 / pt_gev) ** 2)
    sigma_z0 = np.sqrt(0.03**2 + (0.12 / pt_gev) ** 2)
    decay = np.take(np.asarray(_DECAY_LENGTH_MM, dtype=np.float32), origin)
    flight = decay * rng.standard_exponential(n, dtype=np.float32)
    pileup_z0 = np.where(origin == 0, 1.5, 0.0) * rng.standard_normal(n, dtype=np.float32)
    d0_abs = np.abs(sigma_d0 * rng.standard_normal(n, dtype=np.float32) + flight)
    z0_abs = np.abs(sigma_z0 * rng.standard_normal(n, dtype=np.float32) + flight / 2 + pileup_z0)
    positive = rng.random(n, dtype=np.float32) < np.where(decay > 0, 0.85, 0.5)
    sign = np.where(positive, 1.0, -1.0)
    random_sign = np.where(rng.random(n, dtype=np.float32) < 0.5, -1.0, 1.0)
    tracks["d0"] = random_sign * d0_abs
    tracks["z0SinTheta"] = -random_sign * z0_abs
    tracks["IP3D_signed_d0_significance"] = sign * d0_abs / sigma_d0
    tracks["IP3D_signed_z0_significance"] = sign * z0_abs / sigma_z0
