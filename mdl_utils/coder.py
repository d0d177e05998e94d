"""A real entropy coder for quantised SAE latents: DL is achievable, not just a formula.

Section 3 of the paper brief says DL(z) = sum_i H(p_i) is "the average length an entropy coder
achieves, per feature, coding each feature independently". This module is that coder. It uses
the ANS coder and categorical models of ``constriction`` (Bamler et al.).

The code has two parts, and their sizes are reported apart:

1. **Tables** (the model): for each feature, its distinct non-zero codes (gap-coded) and the
   exact count of each; the count of zeros is N minus their sum. All integers are written as
   LEB128 varints (7 bits per byte), so the table cost is the real size of what the decoder
   needs to rebuild every model, not an estimate.
2. **Payload**: each feature's column of N symbols (its alphabet: 0, if it occurs, then its
   non-zero codes) coded with that feature's own categorical model, p(v) = count(v) / N. No
   model looks at any other feature (independent additivity, section 2). The features share one
   ANS stream only so that the stream's fixed flush cost (at most 64 bits) is paid once.

The payload is N * DL bits plus the ANS flush (<= 64 bits) plus the cost of constriction
approximating each probability with 24-bit fixed point numbers (tiny unless a probability is
near 2**-24), so for N * DL in the thousands of bits or more it is within 1% of N * DL.

Blob layout (little-endian): a 40-byte header (magic ``MDLC``, format version, N, D, table
length in bytes, payload length in 32-bit words), the table bytes, the payload words.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdl_utils.array_types import Latents
from mdl_utils.latents import nonzeros

__all__ = ["EncodedLatents", "encode_latents", "decode_latents"]

_MAGIC = b"MDLC"
_VERSION = 1
_HEADER = struct.Struct("<4sB3xQQQQ")  # magic, version, N, D, table bytes, payload words


@dataclass(frozen=True)
class EncodedLatents:
    """An entropy-coded code matrix and the sizes of its parts, in bits.

    Attributes:
        blob: the whole code; :func:`decode_latents` turns it back into the codes.
        n_samples: N.
        n_features: D.
        payload_bits: the ANS stream (all features' symbols), 32 bits per stored word.
        table_bits: the probability tables (distinct codes and their counts, per feature).
        header_bits: the fixed header (shape and section lengths).
    """

    blob: bytes
    n_samples: int
    n_features: int
    payload_bits: int
    table_bits: int
    header_bits: int

    @property
    def total_bits(self) -> int:
        """Size of :attr:`blob` in bits: payload + tables + header."""
        return self.payload_bits + self.table_bits + self.header_bits

    @property
    def payload_bits_per_sample(self) -> float:
        """Payload bits per sample, to compare with DL (bits per sample)."""
        return self.payload_bits / self.n_samples


# --------------------------------------------------------------------------------------------
# LEB128 varints, vectorised
# --------------------------------------------------------------------------------------------


def _varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit set on every byte but a number's last."""
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0:
        return b""
    n_bytes = np.ones(values.size, dtype=np.int64)
    rest = values >> np.uint64(7)
    while np.any(rest):
        n_bytes += rest > 0
        rest >>= np.uint64(7)
    starts = np.cumsum(n_bytes) - n_bytes
    out = np.empty(int(n_bytes.sum()), dtype=np.uint8)
    for k in range(int(n_bytes.max())):
        sel = n_bytes > k
        chunk = (values[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (n_bytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def _varint_decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`_varint_encode`; ValueError on a truncated or overlong stream."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if raw[-1] & 0x80:
        raise ValueError("corrupt code: the table ends inside a number")
    ends = np.flatnonzero(raw < 0x80)
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    if lengths.max() > 9:  # 9 bytes carry 63 bits, all a code or count may need
        raise ValueError("corrupt code: a table number is longer than 63 bits")
    values = np.zeros(ends.size, dtype=np.uint64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        values[sel] |= (raw[starts[sel] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return values


# --------------------------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------------------------


def _model(counts: np.ndarray) -> Any:
    """The categorical model both sides build from the same integer counts."""
    import constriction

    # Exact integers as float64; constriction normalises them deterministically.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def encode_latents(codes: Latents) -> EncodedLatents:
    """Entropy-code a matrix of quantised latents, each feature with its own model.

    Args:
        codes: (N samples, D features) non-negative integer codes, e.g. from
            :func:`mdl_utils.quantize.quantize`; dense numpy/torch or sparse.

    Returns:
        :class:`EncodedLatents`: the blob and the sizes of its payload, tables and header.
        ``payload_bits`` is within 1% of N * DL once N * DL is more than a few thousand bits
        (see the module docstring for the overheads).
    """
    import constriction

    nz = nonzeros(codes, "codes", integer=True)
    n, d = nz.n_samples, nz.n_features
    values = nz.values.astype(np.int64)
    # Sort by feature, then code, then sample: pairs (feature, code) become runs.
    order = np.lexsort((nz.rows, values, nz.cols))
    cols, values, rows = nz.cols[order], values[order], nz.rows[order]
    new_pair = np.r_[True, (cols[1:] != cols[:-1]) | (values[1:] != values[:-1])][: cols.size]
    pair_start = np.flatnonzero(new_pair)
    pair_col, pair_value = cols[pair_start], values[pair_start]
    pair_count = np.diff(np.r_[pair_start, cols.size])

    n_values = np.bincount(pair_col, minlength=d)  # distinct non-zero codes per feature
    n_active = np.bincount(cols, minlength=d)
    n_zero = n - n_active
    first_pair = np.cumsum(n_values) - n_values
    first_entry = np.cumsum(n_active) - n_active
    # Alphabet of feature f: [0 if it occurs] + its non-zero codes, ascending.
    pair_id = np.cumsum(new_pair) - 1
    symbol = (pair_id - first_pair[cols] + (n_zero[cols] > 0)).astype(np.int32)

    is_first = np.r_[True, pair_col[1:] != pair_col[:-1]][: pair_col.size]
    previous = np.r_[0, pair_value[:-1]][: pair_value.size]
    gaps = pair_value - np.where(is_first, 0, previous) - 1  # codes are >= 1 and ascending
    table = _varint_encode(np.concatenate([n_values, gaps, pair_count - 1]))

    coder = constriction.stream.stack.AnsCoder()
    for f in reversed(range(d)):  # ANS is a stack: encode last feature first, decode in order
        if n_values[f] + (n_zero[f] > 0) <= 1:
            continue  # a constant column costs nothing beyond its table entry
        counts = pair_count[first_pair[f] : first_pair[f] + n_values[f]]
        if n_zero[f] > 0:
            counts = np.r_[n_zero[f], counts]
        column = np.zeros(n, dtype=np.int32)
        entries = slice(first_entry[f], first_entry[f] + n_active[f])
        column[rows[entries]] = symbol[entries]
        coder.encode_reverse(column, _model(counts))
    words = coder.get_compressed().astype("<u4")

    header = _HEADER.pack(_MAGIC, _VERSION, n, d, len(table), words.size)
    return EncodedLatents(
        blob=header + table + words.tobytes(),
        n_samples=n,
        n_features=d,
        payload_bits=32 * int(words.size),
        table_bits=8 * len(table),
        header_bits=8 * _HEADER.size,
    )


def decode_latents(blob: bytes | EncodedLatents, *, sparse: bool = False) -> Latents:
    """Decode :func:`encode_latents`' output back to the exact codes.

    Args:
        blob: the bytes (or the :class:`EncodedLatents`).
        sparse: return a scipy.sparse CSR array instead of a dense numpy array.

    Returns:
        (N, D) integer codes (int32, or int64 when a code needs it), equal to the encoded ones.

    Raises:
        ValueError: the blob is not a code from :func:`encode_latents` or is corrupt.
    """
    import constriction

    if isinstance(blob, EncodedLatents):
        blob = blob.blob
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise ValueError(f"not an MDL latent code: {len(blob)} bytes is shorter than the header")
    magic, version, n, d, table_len, n_words = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError(f"not an MDL latent code: bad magic {magic!r}")
    if version != _VERSION:
        raise ValueError(f"unsupported MDL latent code version {version}")
    if len(blob) != _HEADER.size + table_len + 4 * n_words:
        raise ValueError("corrupt code: section lengths do not match the blob's size")
    if n < 1 or d < 1:
        raise ValueError(f"corrupt code: shape {(n, d)}")

    numbers = _varint_decode(blob[_HEADER.size : _HEADER.size + table_len]).astype(np.int64)
    n_values = numbers[:d]
    n_pairs = int(n_values.sum()) if n_values.size == d else -1
    if n_values.size != d or numbers.size != d + 2 * n_pairs:
        raise ValueError("corrupt code: the tables do not describe the header's shape")
    gaps = numbers[d : d + n_pairs]
    pair_count = numbers[d + n_pairs :] + 1
    pair_col = np.repeat(np.arange(d), n_values)
    # Undo the gap coding within each feature: value = cumulative sum of (gap + 1) per feature.
    # uint64 arithmetic wraps modulo 2**64, so the differences stay exact even where the running
    # total over many features would overflow.
    totals = np.cumsum((gaps + 1).astype(np.uint64))
    first_pair = np.cumsum(n_values) - n_values
    offset = np.zeros(d, dtype=np.uint64)
    has_before = first_pair > 0
    offset[has_before] = totals[first_pair[has_before] - 1]
    pair_value = (totals - np.repeat(offset, n_values)).astype(np.int64)
    n_active = np.bincount(pair_col, weights=pair_count, minlength=d).astype(np.int64)
    if np.any(n_active > n):
        raise ValueError("corrupt code: a feature's counts exceed the number of samples")
    n_zero = n - n_active

    words = np.frombuffer(blob, dtype="<u4", offset=_HEADER.size + table_len).astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    values_out: list[np.ndarray] = []
    try:
        for f in range(d):
            codes_f = pair_value[first_pair[f] : first_pair[f] + n_values[f]]
            counts = pair_count[first_pair[f] : first_pair[f] + n_values[f]]
            if n_zero[f] > 0:
                alphabet, counts = np.r_[0, codes_f], np.r_[n_zero[f], counts]
            else:
                alphabet = codes_f
            if alphabet.size <= 1:
                column = np.full(n, alphabet[0] if alphabet.size else 0, dtype=np.int64)
            else:
                column = alphabet[coder.decode(_model(counts), n)]
            active = np.flatnonzero(column)
            if active.size != n_active[f]:
                raise ValueError(f"corrupt code: feature {f} decodes to the wrong number of non-zeros")
            rows_out.append(active)
            cols_out.append(np.full(active.size, f, dtype=np.int64))
            values_out.append(column[active])
    except ValueError:
        raise
    except Exception as err:  # constriction signals a damaged stream with its own errors
        raise ValueError(f"corrupt code: the payload could not be decoded ({err})") from err
    if not coder.is_empty():
        raise ValueError("corrupt code: payload words left over after decoding every feature")

    rows, cols, values = (np.concatenate(parts) for parts in (rows_out, cols_out, values_out))
    max_code = int(values.max()) if values.size else 0
    dtype = np.int32 if max_code < 2**31 else np.int64
    if sparse:
        from scipy import sparse as sp

        return sp.csr_array((values.astype(dtype), (rows, cols)), shape=(n, d))
    out = np.zeros((n, d), dtype=dtype)
    out[rows, cols] = values
    return out
