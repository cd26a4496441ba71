from gold.shapes import area


def test_area():
    assert area(2.0) == 10.0
