"""Shapes: every kind of constant an image stores."""

SIDES = (3, 4, 5)
KINDS = frozenset({"square", "circle", 7})
BIG = 12345678901234567890
RATIO = 0.5
TURN = 1j
MAGIC = b"\x89shape"


def area(side, scale=2.5):
    """The area of a square."""
    return side * side * scale


def perimeter(side):
    return 4 * side + BIG
