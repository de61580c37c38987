"""Argument checks shared by the compressed layers: one ValueError style that names the layer."""


def require(condition: bool, layer: str, message: str) -> None:
    """Raise ``ValueError("<layer>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{layer}: {message}")


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, …"""
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int, minimum: int = 4) -> int:
    """The smallest power of two that is >= max(n, minimum)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())
