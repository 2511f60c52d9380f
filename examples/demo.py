"""A small example for `make demo`: infill-ls completes the return statement of `mean`."""


def mean(values: list[float]) -> float:
    """Return the arithmetic mean of values."""
    if not values:
        raise ValueError("mean() of an empty list")
    total = sum(values)
    return 
