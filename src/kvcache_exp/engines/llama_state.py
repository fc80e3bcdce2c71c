"""Which positions a sequence's cache cells hold, read from llama.cpp's own state.

A cure claims that after its cache operations the cache holds exactly ``[S, B, Q]`` at
positions 0, 1, ...: the lowest and highest positions (``llama_memory_seq_pos_min`` and
``_max``) and the number of tokens evaluated do not prove it (the highest position would
be right even if A's cells were never removed and B overlapped them). llama.cpp offers no
call that counts a sequence's cells, but it serialises them: ``llama_state_seq_get_data``
writes, for the sequence, a header, then per stream the number of its cells and each
cell's position and sequence ids, then the keys and values (llama.cpp's
``llama_kv_cache::state_write``, read in the source this package builds against). Only the
cells' positions are read here; the layout is checked as it is read, and anything
unexpected gives None (no proof) rather than a guess.
"""

from __future__ import annotations

import ctypes
import struct

import llama_cpp

#: The first four bytes of a state llama.cpp wrote (``io_magic`` in llama-context.cpp).
STATE_MAGIC = 0xAF143CD8


def sequence_positions(ctx: llama_cpp.llama_context_p, seq: int) -> list[int] | None:
    """The positions of the cells that sequence ``seq`` holds, in cell order, or None
    when llama.cpp's state does not have the layout this reader knows."""
    size = int(llama_cpp.llama_state_seq_get_size(ctx, seq))
    if size <= 0:
        return None
    buf = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq))
    return parse_positions(memoryview(buf)[:written].cast("B"), seq)


def parse_positions(data: memoryview | bytes, seq: int) -> list[int] | None:
    """The cells' positions in a sequence state (see the module docstring), or None."""
    try:
        magic, seq_id, n_stream = struct.unpack_from("<IiI", data, 0)
    except struct.error:
        return None
    if magic != STATE_MAGIC or seq_id != seq or not 0 < n_stream <= 64:
        return None
    offset = 12
    positions: list[int] = []
    for _ in range(n_stream):
        (count,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if count == 0:
            continue
        if n_stream > 1:
            return None  # the data of one stream follow its cells: not read here
        for _ in range(count):
            pos, n_seq = struct.unpack_from("<iI", data, offset)
            offset += 8
            if n_seq != 1:
                return None  # cells of other sequences, or cell extensions: unknown
            (owner,) = struct.unpack_from("<i", data, offset)
            offset += 4
            if owner != seq:
                return None
            positions.append(pos)
    return positions
