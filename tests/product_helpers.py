"""Product builders and the CF checker shared by the writer tests (and the predict/explain tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest

from meteovision.pipeline.inference.products import (
    Product,
    ProductGrid,
    ProductVariable,
    Provenance,
)

__all__ = ["checker", "run_cf_checker"]


LAEA = pyproj.CRS.from_proj4(
    "+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84 +units=m")
GEOS = pyproj.CRS.from_proj4("+proj=geos +h=35785831 +lon_0=9.5 +sweep=y +a=6378169 +b=6356583.8 +units=m")
TM35FIN = pyproj.CRS.from_epsg(3067)
REF = datetime(2018, 8, 24, 18, 0)
SHA = "0123456789abcdef" * 4


def provenance(application: str = "nowcast_precip", model: str = "deeplabv3plus") -> Provenance:
    return Provenance(application, model, "1.2.0", SHA, config={"model": {"name": model, "lr": 0.001}},
                      package_versions={"numpy": "2.0", "torch": "2.14.1"},
                      input_files=("/data/radar/201808241755.h5", "/data/radar/201808241800.h5"))


def grid(crs: pyproj.CRS = TM35FIN, *, x0: float = 300_000.0, y0: float = 7_000_000.0,
         step: float = 1000.0) -> ProductGrid:
    """A 7 x 9 north-up grid with its first cell centre at (x0, y0)."""
    return ProductGrid(x0 + step * np.arange(9), y0 - step * np.arange(7), crs)


def product(variables: list[ProductVariable], leads: list[int] | None = None, g: ProductGrid | None = None,
            ref: datetime = REF, application: str = "nowcast_precip") -> Product:
    return Product(variables, g or grid(), ref,
                   None if leads is None else [timedelta(minutes=m) for m in leads],
                   provenance(application), title=f"meteovision {application}", institution="Test Institute")


def rain_nowcast(seed: int = 0) -> Product:
    data = np.random.default_rng(seed).gamma(0.8, 3.0, (3, 7, 9)).astype(np.float32)
    data[:, 0, :2] = np.nan  # outside radar coverage
    data[1, 3, 4] = 0.0
    return product([ProductVariable.rain_rate(data)], leads=[5, 10, 15])


def dbz_analysis() -> Product:
    data = np.random.default_rng(1).uniform(-32.0, 65.0, (7, 9)).astype(np.float32)
    data[6, 8] = np.nan
    return product([ProductVariable.reflectivity(data)], g=grid(LAEA, x0=1_000_000, y0=-1_000_000),
                   application="nowcast_reflectivity")


def bow_echo_mask() -> Product:
    data = np.zeros((7, 9), dtype=np.float32)
    data[2:5, 3:6] = 1.0
    data[0, :] = np.nan  # no radar: neither bow echo nor not
    mask = ProductVariable.mask(data, "bow_echo_mask", "bow echo mask", ("no_bow_echo", "bow_echo"))
    return product([mask], application="bow_echo")


def class_probabilities() -> Product:
    p = np.random.default_rng(2).dirichlet([1.0, 1.0, 1.0], size=(2, 7, 9)).astype(np.float32)
    names = ("below_1", "from_1_to_5", "above_5")
    variables = [ProductVariable.probability(p[..., k], f"probability_{n}", f"probability of rain rate {n}")
                 for k, n in enumerate(names)]
    return product(variables, leads=[15, 30])


def cloud_fraction() -> Product:
    data = np.random.default_rng(3).uniform(0.0, 1.0, (7, 9)).astype(np.float32)
    g = grid(GEOS, x0=-400_000.0, y0=5_200_000.0, step=3000.0)
    return product([ProductVariable.cloud_fraction(data)], g=g, application="nowcast_cloudiness")


KINDS: dict[str, Callable[[], Product]] = {
    "rain_nowcast": rain_nowcast,
    "dbz_analysis": dbz_analysis,
    "bow_echo_mask": bow_echo_mask,
    "class_probabilities": class_probabilities,
    "cloud_fraction": cloud_fraction,
}


@pytest.fixture(scope="module")
def checker() -> Any:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    return ComplianceChecker


def run_cf_checker(checker: Any, path: Path) -> tuple[bool, list[tuple[str, str, list[str]]], dict[str, Any]]:
    """(passed, failed high/medium checks, report) of ``compliance-checker -t cf:1.10``."""
    report_path = path.with_suffix(".json")
    passed, errors = checker.run_checker(str(path), ["cf:1.10"], verbose=0, criteria="normal",
                                         output_filename=str(report_path), output_format="json")
    report = json.loads(report_path.read_text())["cf:1.10"]
    failures = [(prio, item["name"], item["msgs"])
                for prio in ("high_priorities", "medium_priorities")
                for item in report[prio] if item["value"][0] < item["value"][1]]
    return bool(passed and not errors), failures, report
