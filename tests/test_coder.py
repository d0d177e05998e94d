"""Tests for mdl_utils.coder: the entropy coder behind DL (round trip, sizes, corruption).

The reference for the payload size is N * DL from mdl_utils.dl, which test_dl.py checks
against hand-computed and Counter-computed entropies.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mdl_utils import coder, dl

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_sparse_latents(seed: int, n: int, d: int) -> np.ndarray:
    """Features with firing rates spread over two decades and exponential magnitudes."""
    rng = np.random.default_rng(seed)
    rates = np.geomspace(0.003, 0.3, d)
    scales = rng.uniform(0.2, 3.0, d)
    return ((rng.random((n, d)) < rates) * rng.exponential(scales, (n, d))).astype(np.float32)


@pytest.mark.parametrize("bits, seed", [(8, 0), (3, 1), (12, 2)])
def test_round_trip_is_exact_and_payload_within_one_percent_of_n_dl(bits: int, seed: int) -> None:
    z = random_sparse_latents(seed, 10_000, 48)
    codes = dl.quantize(z, bits=bits)
    encoded = dl.encode_latents(codes)
    decoded = dl.decode_latents(encoded.blob)
    assert decoded.dtype == codes.dtype
    np.testing.assert_array_equal(decoded, codes)
    n_dl = 10_000 * dl.description_length(z, bits=bits).dl_bits
    assert abs(encoded.payload_bits - n_dl) <= 0.01 * n_dl
    # The two parts are reported apart and add up to the blob.
    assert encoded.total_bits == 8 * len(encoded.blob)
    assert encoded.payload_bits + encoded.table_bits + encoded.header_bits == encoded.total_bits
    assert encoded.payload_bits % 32 == 0 and encoded.table_bits > 0


def test_payload_overhead_is_a_few_words_on_a_large_low_entropy_matrix() -> None:
    # 20,000 samples x 256 features, ~8 active per sample: constriction's 24-bit probabilities
    # and the stream flush must stay far below 1%.
    rng = np.random.default_rng(3)
    n, d = 20_000, 256
    codes = np.zeros((n, d), dtype=np.int32)
    rows = np.repeat(np.arange(n), 8)
    cols = rng.choice(d, size=rows.size, p=np.r_[np.full(d // 2, 1.5), np.full(d // 2, 0.5)] / d)
    codes[rows, cols] = rng.integers(1, 129, rows.size)
    encoded = dl.encode_latents(codes)
    n_dl = n * dl.feature_entropies(codes).sum()
    assert abs(encoded.payload_bits - n_dl) <= 0.002 * n_dl
    np.testing.assert_array_equal(dl.decode_latents(encoded), codes)


def test_table_cost_counts_every_table_number() -> None:
    # One feature: zero 3 times, code 1 twice, code 300 once. Tables: the distinct-code count
    # (2: 1 byte), the gaps 1-1=0 and 300-1-1=298 (1 + 2 bytes), counts-1 1 and 0 (2 bytes).
    codes = np.array([[0], [1], [0], [300], [1], [0]])
    encoded = dl.encode_latents(codes)
    assert encoded.table_bits == 8 * (1 + 1 + 2 + 1 + 1)
    assert encoded.header_bits == 8 * 40
    np.testing.assert_array_equal(dl.decode_latents(encoded.blob), codes)


@pytest.mark.parametrize(
    "codes",
    [
        np.zeros((5, 3), dtype=np.int64),  # all dead: no payload at all
        np.full((4, 2), 7),  # always on, one value: a constant column
        np.array([[3, 0], [5, 0], [3, 2]]),  # always on with several values
        np.array([[0, 1, 2]]),  # a single sample
        np.array([[2**62, 0], [1, 2**62 - 1]], dtype=np.int64),  # huge codes
        np.array([[0, 200], [255, 0]], dtype=np.uint8),
    ],
)
def test_round_trip_edge_cases(codes: np.ndarray) -> None:
    encoded = dl.encode_latents(codes)
    decoded = dl.decode_latents(encoded.blob)
    np.testing.assert_array_equal(decoded, codes)
    if not np.any(codes) or np.all(codes == codes[0]):
        assert encoded.payload_bits == 0


def test_sparse_and_torch_inputs_round_trip() -> None:
    z = random_sparse_latents(4, 500, 30)
    codes = dl.quantize(scipy.sparse.csr_array(z), step=0.1)
    encoded = dl.encode_latents(codes)
    back = dl.decode_latents(encoded.blob, sparse=True)
    assert scipy.sparse.issparse(back)
    np.testing.assert_array_equal(back.toarray(), codes.toarray())
    dense = codes.toarray()
    assert dl.encode_latents(torch.from_numpy(dense)).blob == encoded.blob
    assert dl.encode_latents(torch.from_numpy(dense).to_sparse()).blob == encoded.blob


@given(
    hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=25),
        elements=st.one_of(st.just(0), st.integers(0, 5), st.integers(0, 2**40)),
    )
)
@FAST
def test_round_trip_property(codes: np.ndarray) -> None:
    np.testing.assert_array_equal(dl.decode_latents(dl.encode_latents(codes).blob), codes)


@given(st.lists(st.integers(0, 2**63 - 1), max_size=50))
@FAST
def test_varints_round_trip(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint64)
    np.testing.assert_array_equal(coder._varint_decode(coder._varint_encode(array)), array)


def test_varint_bytes_by_hand() -> None:
    assert coder._varint_encode(np.array([0, 127, 128, 300])) == bytes([0, 127, 0x80, 1, 0xAC, 2])


def test_corrupt_blobs_raise_value_error() -> None:
    codes = dl.quantize(random_sparse_latents(5, 300, 10), bits=6)
    blob = dl.encode_latents(codes).blob
    with pytest.raises(ValueError, match="magic"):
        dl.decode_latents(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="shorter than the header"):
        dl.decode_latents(blob[:10])
    with pytest.raises(ValueError, match="size"):
        dl.decode_latents(blob[:-4])
    with pytest.raises(ValueError, match="integer"):
        dl.encode_latents(np.array([[0.5]]))
    # A damaged payload either fails to decode or decodes to different codes; it never passes
    # silently as the original.
    damaged = bytearray(blob)
    damaged[-6] ^= 0xFF
    try:
        decoded = dl.decode_latents(bytes(damaged))
    except ValueError:
        pass
    else:
        assert not np.array_equal(decoded, codes)
