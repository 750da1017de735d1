"""Projected CRSs whose x/y really are metres: the units traps every reader checks.

Two ways a file says "metres" and means kilometres: axis units (``+units=km``,
``+to_meter=1000``), and an ellipsoid given in km (KNMI writes ``+a=6378.137 +b=6356.752``
with ``xscale = 1.0``), which PROJ takes as a planet 6.4 km wide and labels ``m``. A grid read
that way is 1000 times too small and a "1 km" cell becomes "1 m". ODIM files get both
converted to metres (with a warning); other formats declare a CRS the reader cannot rescale
by itself, so an ellipsoid in km is refused there.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pyproj

from meteovision.datasets.errors import UnitsError

logger = logging.getLogger(__name__)

#: Plausible semi-major axes of an Earth ellipsoid or sphere, in metres.
EARTH_RADIUS_M = (6.0e6, 7.0e6)
#: PROJ parameters given in the ellipsoid's length unit, scaled with it.
_LENGTH_PARAMETERS = ("a", "b", "R", "x_0", "y_0")


def _earth_like(radius_m: float) -> bool:
    return EARTH_RADIUS_M[0] <= radius_m <= EARTH_RADIUS_M[1]


def check_ellipsoid(crs: pyproj.CRS, path: Path, where: str) -> None:
    """Raise ``UnitsError`` unless the CRS's ellipsoid has an Earth radius in metres."""
    ellipsoid = crs.ellipsoid
    if ellipsoid is None:
        return
    radius = float(ellipsoid.semi_major_metre)
    if _earth_like(radius):
        return
    hint = " (the Earth's radius in km: lengths in km)" if _earth_like(radius * 1000.0) else ""
    raise UnitsError(path, f"{where}: ellipsoid semi-major axis {radius:g} m is not the Earth's{hint}")


def metre_crs_from_projdef(projdef: str, crs: pyproj.CRS, path: Path) -> pyproj.CRS:
    """The ODIM projdef's CRS in metres: km axis units dropped, a km ellipsoid scaled to metres.

    Only for PROJ strings (ODIM ``where/projdef``), where every length parameter is known.
    """
    axis_in_km = bool(crs.axis_info) and crs.axis_info[0].unit_conversion_factor != 1.0
    radius = float(crs.ellipsoid.semi_major_metre) if crs.ellipsoid is not None else EARTH_RADIUS_M[0]
    if not axis_in_km and _earth_like(radius):
        return crs
    with warnings.catch_warnings():  # a PROJ string round trip: nothing is lost
        warnings.simplefilter("ignore", UserWarning)
        params = crs.to_dict()
    changed = False
    if axis_in_km:
        params = {k: v for k, v in params.items() if k not in ("units", "to_meter")}
        params["units"] = "m"
        changed = True
    if not _earth_like(radius):
        if not _earth_like(radius * 1000.0) or not any(k in params for k in ("a", "R")):
            raise UnitsError(path, f"where/projdef {projdef!r}: ellipsoid semi-major axis {radius:g} m is not "
                                   "the Earth's, in metres or km")
        logger.warning("%s: where/projdef %r gives the ellipsoid in km; converting the grid to metres", path,
                       projdef)
        for key in _LENGTH_PARAMETERS:
            if key in params:
                params[key] = float(params[key]) * 1000.0
        changed = True
    if not changed:
        return crs
    converted = pyproj.CRS.from_dict(params)
    check_ellipsoid(converted, path, "where/projdef")
    return converted
