from collections.abc import Callable, Sequence

def use_openat2(enabled: bool) -> bool: ...
def extract(
    next_chunk: Callable[[], bytes],
    root: str,
    *,
    whiteouts: str = ...,
    parents: Sequence[str] = ...,
    same_owner: bool = ...,
) -> int: ...
