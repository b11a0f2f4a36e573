import numpy as np
import pytest

from mfdata.units import UnitError, conversion_factor, parse_unit


@pytest.mark.parametrize(
    ("unit", "dimension", "factor"),
    [
        ("eV", "energy", 1.0),
        ("Hartree", "energy", 27.211386),  # CODATA: 1 Eh = 27.211386 eV
        ("Ha", "energy", 27.211386),
        ("kcal/mol", "energy", 0.0433641),  # 1 kcal/mol = 0.0433641 eV
        ("kJ/mol", "energy", 0.01036427),  # 1 kJ/mol = 0.01036427 eV
        ("Bohr", "length", 0.529177),  # 1 a0 = 0.529177 Å
        ("nm", "length", 10.0),
        ("Å", "length", 1.0),
        ("Hartree/Bohr", "force", 51.42207),  # 1 Eh/a0 = 51.42207 eV/Å
        ("hartree/bohr", "force", 51.42207),
        ("Hartree/Å", "force", 27.211386),
        ("kcal/mol/Å", "force", 0.0433641),
        ("kJ/mol/nm", "force", 0.001036427),
        ("eV/Å^3", "stress", 1.0),
        ("GPa", "stress", 1 / 160.21766),  # 1 eV/Å³ = 160.21766 GPa
    ],
)
def test_known_conversions(unit, dimension, factor):
    assert conversion_factor(unit, dimension) == pytest.approx(factor, rel=2e-6)


def test_unknown_unit_is_an_error():
    with pytest.raises(UnitError, match="unknown unit 'furlong'"):
        parse_unit("furlong")


def test_dimension_mismatch_is_an_error():
    with pytest.raises(UnitError, match="measures energy"):
        conversion_factor("Hartree", "force")


def test_gradient_becomes_minus_forces():
    from mfdata.readers import KeyMapping

    gradient = np.array([[1.0, -2.0, 0.5]])
    forces = KeyMapping("g", "wb97x-631gd", "gradient", "Hartree/Bohr").convert(gradient)
    np.testing.assert_allclose(forces, -gradient * 51.42207, rtol=1e-6)
