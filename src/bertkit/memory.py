"""glibc malloc tuning, the one place bertkit calls mallopt(3); each setting is opt-in by an environment variable.

- `BERTKIT_MALLOC=keep`: `keep_freed_memory()`, applied by the CLI at the start of any command. Large freed blocks
  stay in the process for reuse: faster CPU inference, more resident memory.
- `BERTKIT_MMAP_THRESHOLD=BYTES`: `limit_heap_growth()`, applied when training starts (`fit`, `pretrain`). Blocks
  over BYTES are mapped afresh and returned when freed: bounded resident memory in long runs, slower steps.

Both are process-wide and last for the rest of the process. Neither imports torch, so the CLI module can import
this one (every prepare-data worker imports the CLI as the main module of the process that spawned it).
"""

from __future__ import annotations

import os
import platform

MALLOC_ENV = "BERTKIT_MALLOC"
MMAP_THRESHOLD_ENV = "BERTKIT_MMAP_THRESHOLD"
# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _mallopt(option: int, value: int) -> bool:
    """mallopt(option, value) of the C library this process runs on; False off Linux, or where the C library has no
    working mallopt (musl's is a stub that returns 0)."""
    import ctypes

    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(option, value) == 1


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed memory for reuse: blocks under `limit` bytes come from the heap and go back to
    it (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD). By default glibc maps every block over 32 MiB afresh and unmaps it when
    freed, so each large activation of a CPU forward pass (BERT-base at 32 x 128: the QKV and FFN GEMMs' 38 and
    50 MB outputs) is new memory, paged in at its first write: an int8 GEMM allocating such an output ran at 0.6x
    the speed of the same GEMM writing into a kept buffer here. The price: batches of ever new shapes fragment the
    kept heap, and resident memory grows (bench/malloc.py measures both).

    Opt-in: the CLI calls it when BERTKIT_MALLOC=keep is set. Returns whether malloc took the settings."""
    return _mallopt(_M_MMAP_THRESHOLD, limit) and _mallopt(_M_TRIM_THRESHOLD, limit)


def limit_heap_growth() -> int:
    """Opt-in (`BERTKIT_MMAP_THRESHOLD=BYTES`): stop glibc's heap from growing with every new tensor shape; returns
    the threshold set (0: none, glibc's default).

    The no-padding engine gives every batch other shapes; glibc keeps freed activation buffers in its heap (its mmap
    threshold rises to 32 MB after the first large free) and the heap fragments: mini, batch 64 x 128, went
    0.5 -> 2.4 GB in 50 steps, 3.1 GB in a long run. A fixed threshold (malloc(3): M_MMAP_THRESHOLD) such as 131072
    returns every large buffer to the system when freed (the same 50 steps stay near 1.3 GB), but each buffer is
    then mapped and zeroed anew: bench/scale.py measured mini 35% slower, so it is not the default."""
    threshold = int(os.environ.get(MMAP_THRESHOLD_ENV, 0))
    if threshold <= 0:
        return 0
    return threshold if _mallopt(_M_MMAP_THRESHOLD, threshold) else 0

