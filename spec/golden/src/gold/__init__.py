"""A package for the golden vectors."""
from gold.shapes import area

UNIT = area(1.0)
