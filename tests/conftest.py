"""Shared fixtures: the real-data folder and small writers of the file formats the readers consume.

The writers use the format libraries directly (h5py, netCDF4, rasterio, Pillow), not the
project's own code, so reader tests compare against files made independently of the readers.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest
import rasterio
import torch
from rasterio.transform import Affine

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(stem: str) -> ModuleType:
    """``benchmarks/<stem>.py`` imported from its path: the benchmarks are scripts, not an installed package."""
    if str(BENCHMARKS) not in sys.path:  # as ``python benchmarks/<stem>.py`` has it: the scripts share modules there
        sys.path.insert(0, str(BENCHMARKS))
    name = f"meteovision_benchmarks_{stem}"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses of the script look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Two cores are shared by several test runs: keep torch to one thread in a module that asks for it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real operational files); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found")
    return SHARED_DATA


# --------------------------------------------------------------------------- ODIM_H5


@dataclass(frozen=True)
class OdimGrid:
    """A small north-up grid: upper-left outer corner, cell size in metres, shape."""

    projdef: str = "+proj=laea +lat_0=55 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
    x0: float = -100_000.0
    top: float = 200_000.0
    dx: float = 2000.0
    dy: float = 2000.0
    nx: int = 6
    ny: int = 5

    def x(self) -> np.ndarray:
        return self.x0 + (np.arange(self.nx) + 0.5) * self.dx

    def y(self) -> np.ndarray:
        return self.top - (np.arange(self.ny) + 0.5) * self.dy

    def corners(self) -> dict[str, float]:
        """UL/UR/LL/LR lon/lat of the outer corners, as an ODIM producer writes them."""
        crs = pyproj.CRS(self.projdef)
        to_lonlat = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        right, bottom = self.x0 + self.nx * self.dx, self.top - self.ny * self.dy
        out: dict[str, float] = {}
        points = {"UL": (self.x0, self.top), "UR": (right, self.top), "LL": (self.x0, bottom),
                  "LR": (right, bottom)}
        for name, (cx, cy) in points.items():
            lon, lat = to_lonlat.transform(cx, cy)
            out[f"{name}_lon"], out[f"{name}_lat"] = float(lon), float(lat)
        return out


@dataclass(frozen=True)
class OdimField:
    """One ``datasetN/data1`` (plus optional quality groups) of an ODIM file."""

    quantity: str
    raw: np.ndarray
    gain: float = 1.0
    offset: float = 0.0
    nodata: float = 255.0
    undetect: float = 0.0
    #: (how/task or None, what/quantity or None, raw array, gain, offset)
    quality: Sequence[tuple[str | None, str | None, np.ndarray, float, float]] = ()
    #: put gain/offset at the dataset level and nodata/undetect at the data level (inheritance)
    split_levels: bool = False


@dataclass(frozen=True)
class OdimFile:
    fields: Sequence[OdimField]
    grid: OdimGrid = field(default_factory=OdimGrid)
    date: str = "20240102"
    time: str = "120500"
    conventions: str = "ODIM_H5/V2_2"
    obj: str = "COMP"
    #: written xscale/yscale = metres / scale_divisor (1000 writes km)
    scale_divisor: float = 1.0
    drop_where: Sequence[str] = ()
    drop_what: Sequence[str] = ()


def _attrs(group: h5py.Group, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        group.attrs[key] = np.bytes_(value) if isinstance(value, str) else value


def write_odim(path: Path, spec: OdimFile) -> Path:
    """Write an ODIM_H5 composite with h5py (root what/where/how, datasetN/data1/qualityN)."""
    g = spec.grid
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_(spec.conventions)
        what = {"object": spec.obj, "version": "H5rad 2.2", "date": spec.date, "time": spec.time,
                "source": "ORG:247"}
        where: dict[str, Any] = {"projdef": g.projdef, "xsize": np.int64(g.nx), "ysize": np.int64(g.ny),
                                 "xscale": g.dx / spec.scale_divisor, "yscale": g.dy / spec.scale_divisor,
                                 **g.corners()}
        _attrs(f.create_group("what"), {k: v for k, v in what.items() if k not in spec.drop_what})
        _attrs(f.create_group("where"), {k: v for k, v in where.items() if k not in spec.drop_where})
        _attrs(f.create_group("how"), {"software": "pytest"})
        for i, fld in enumerate(spec.fields, start=1):
            ds = f.create_group(f"dataset{i}")
            scaling = {"gain": fld.gain, "offset": fld.offset}
            missing = {"nodata": fld.nodata, "undetect": fld.undetect}
            ds_what: dict[str, Any] = {"product": "COMP", "startdate": spec.date, "starttime": "120000",
                                       "enddate": spec.date, "endtime": spec.time}
            data_what: dict[str, Any] = {"quantity": fld.quantity}
            if fld.split_levels:
                ds_what.update(scaling)
                # a wrong nodata at the dataset level that the data level overrides
                ds_what["nodata"] = -1.0
                data_what.update(missing)
            else:
                data_what.update(scaling | missing)
            _attrs(ds.create_group("what"), ds_what)
            data = ds.create_group("data1")
            _attrs(data.create_group("what"), data_what)
            data.create_dataset("data", data=fld.raw, compression="gzip", chunks=True)
            for j, (task, quantity, raw, gain, offset) in enumerate(fld.quality, start=1):
                q = data.create_group(f"quality{j}")
                q_what: dict[str, Any] = {"gain": gain, "offset": offset}
                if quantity:
                    q_what["quantity"] = quantity
                _attrs(q.create_group("what"), q_what)
                if task:
                    _attrs(q.create_group("how"), {"task": task})
                q.create_dataset("data", data=raw)
    return path


# --------------------------------------------------------------------------- CF NetCDF


@dataclass(frozen=True)
class NcFile:
    """A CF NetCDF file with one packed field on (time, y, x) and a ``crs`` grid-mapping variable."""

    values: np.ndarray  # physical, (ntime, ny, nx), NaN = missing
    name: str = "RATE"
    units: str = "mm h-1"
    standard_name: str | None = "rainfall_rate"
    times: Sequence[str] = ("2024-01-02T12:05:00",)
    epsg: int = 3035
    x: np.ndarray = field(default_factory=lambda: 4_000_000.0 + 1000.0 * np.arange(4) + 500.0)
    y: np.ndarray = field(default_factory=lambda: 3_000_000.0 - 1000.0 * np.arange(3) - 500.0)
    fmt: str = "NETCDF4"
    packed: bool = True  # int16 with scale_factor 0.01 and _FillValue -32768, else float32 NaN fill
    with_time: bool = True
    with_crs: bool = True
    unlimited_time: bool = False
    global_attrs: Mapping[str, str] = field(default_factory=dict)


def write_netcdf(path: Path, spec: NcFile) -> Path:
    """Write a CF-1.10 file with netCDF4 (our products' layout), optionally NETCDF3."""
    with netCDF4.Dataset(path, "w", format=spec.fmt) as nc:
        nc.Conventions = "CF-1.10"
        for key, value in spec.global_attrs.items():
            nc.setncattr(key, value)
        ntime = spec.values.shape[0]
        dims: tuple[str, ...] = ("y", "x")
        if spec.with_time:
            nc.createDimension("time", None if spec.unlimited_time else ntime)
            dims = ("time", "y", "x")
        nc.createDimension("y", len(spec.y))
        nc.createDimension("x", len(spec.x))
        for axis, values in (("x", spec.x), ("y", spec.y)):
            v = nc.createVariable(axis, "f8", (axis,))
            v.standard_name = f"projection_{axis}_coordinate"
            v.units = "m"
            v[:] = values
        if spec.with_time:
            t = nc.createVariable("time", "f8", ("time",))
            t.standard_name = "time"
            t.units = "seconds since 1970-01-01 00:00:00"
            t.calendar = "standard"
            t[:] = (np.array(spec.times, dtype="datetime64[s]").astype(np.int64)).astype(np.float64)
        if spec.with_crs:
            crs = nc.createVariable("crs", "i4", ())
            for key, value in pyproj.CRS.from_epsg(spec.epsg).to_cf().items():
                crs.setncattr(key, value)
        if spec.packed:
            var = nc.createVariable(spec.name, "i2", dims, fill_value=np.int16(-32768))
            var.scale_factor = 0.01
            var.add_offset = 0.0
            var.set_auto_maskandscale(False)
            raw = np.where(np.isnan(spec.values), -32768, np.round(np.nan_to_num(spec.values) / 0.01))
            data = raw.astype(np.int16)
        else:
            var = nc.createVariable(spec.name, "f4", dims, fill_value=np.float32(np.nan))
            data = spec.values.astype(np.float32)
        var.units = spec.units
        var.long_name = f"test {spec.name}"
        if spec.standard_name:
            var.standard_name = spec.standard_name
        if spec.with_crs:
            var.grid_mapping = "crs"
        var[:] = data if spec.with_time else data[0]
    return path


# --------------------------------------------------------------------------- GeoTIFF


def write_geotiff(
    path: Path,
    raw: np.ndarray,
    *,
    tags: Mapping[str, str] | None = None,
    crs: str | None = "EPSG:3067",
    origin: tuple[float, float] = (100_000.0, 7_000_000.0),
    res: float = 250.0,
    nodata: float | None = None,
    scale_offset: tuple[float, float] | None = None,
    tiled: bool = False,
) -> Path:
    """Write a one-band GeoTIFF with rasterio; ``tags`` go to the dataset metadata (GDAL_METADATA)."""
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": raw.shape[1], "height": raw.shape[0], "count": 1, "dtype": raw.dtype.name,
        "transform": Affine(res, 0.0, origin[0], 0.0, -res, origin[1]), "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(raw, 1)
        if tags:
            dst.update_tags(**tags)
        if scale_offset is not None:
            dst.scales = (scale_offset[0],)
            dst.offsets = (scale_offset[1],)
    return path


FMI_XML = (
    '<GDALMetadata>\n<Item name="Observation time" format="YYYYMMDDhhmm">{time}</Item>\n'
    '<Item name="Quantity" unit="dBZ">Corrected reflectivity</Item>\n<Item name="Gain">0.500000</Item>\n'
    '<Item name="Offset">-32.000000</Item>\n<Item name="Nodata">255</Item>\n<Item name="Undetect">0</Item>\n'
    "</GDALMetadata>\n"
)


def dbzh_raw(seed: int = 0, shape: tuple[int, int] = (5, 6)) -> np.ndarray:
    """uint8 DBZH codes with nodata (255), undetect (0) and echoes, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(1, 200, size=shape).astype(np.uint8)
    raw[0, :2] = 255
    raw[-1, -2:] = 0
    return raw
