"""The ETT-small hourly files (ETTh1, ETTh2), read verbatim and checked against their published SHA-256.

ETT (Electricity Transformer Temperature, Zhou et al., "Informer", AAAI 2021) is licensed CC BY-ND 4.0: innerloop
ships no copy and never writes a modified one; splits and scaling are derived at load time. Get ``ETTh1.csv`` and
``ETTh2.csv`` from the folder ``ETT-small`` of https://github.com/zhouhaoyi/ETDataset and put them in one folder,
given as ``root=`` (``--data-root DIR`` on the command line) or as ``$INNERLOOP_DATA/ett``.
"""

from __future__ import annotations

import os
from pathlib import Path

from innerloop._io import sha256_file

from .table import load_csv
from .windows import ETT_HOURLY_BORDERS, ForecastData, make_forecast_data

__all__ = ["ETT_SHA256", "ett", "ett_path"]

# SHA-256 of the files in zhouhaoyi/ETDataset, ETT-small/, commit 1d16c8f4f943005d613b5bc962e9eeb06058cf07
ETT_SHA256 = {
    "ETTh1": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
}
WHERE_TO_GET = ("get ETTh1.csv / ETTh2.csv from https://github.com/zhouhaoyi/ETDataset (folder ETT-small) and give "
                "their folder as --data-root DIR on the command line (root= in Python), or put them in "
                "$INNERLOOP_DATA/ett")  # fmt: skip


def ett_path(name: str, root: str | Path | None = None, verify: bool = True) -> Path:
    """The file of ETT series ``name`` (``ETTh1`` | ``ETTh2``), checked against its published SHA-256.

    Args:
        name (str): ``"ETTh1"`` or ``"ETTh2"``.
        root (str | Path, Optional): the folder holding ``<name>.csv``. Default: ``$INNERLOOP_DATA/ett``.
        verify (bool, Optional): compare the file's SHA-256 with the published one. Default: True.

    Raises:
        ValueError: an unknown name, or a file whose SHA-256 differs (both hashes named).
        FileNotFoundError: no folder given and ``$INNERLOOP_DATA`` unset, or the file is missing; says where to get it.
    """
    if name not in ETT_SHA256:
        raise ValueError(f"unknown ETT series {name!r}; choose from {', '.join(ETT_SHA256)} (ETTm1/ETTm2 are not "
                         f"supported yet), or give the path to a CSV file")  # fmt: skip
    base = os.environ.get("INNERLOOP_DATA")
    if not root and not base:
        raise FileNotFoundError(f"no data folder for {name}: {WHERE_TO_GET}")
    path = (Path(root) if root else Path(base) / "ett") / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {WHERE_TO_GET}")
    if verify:
        got = sha256_file(path)
        if got != ETT_SHA256[name]:
            raise ValueError(f"{path} is not the published {name}.csv: its sha256 is {got}, expected "
                             f"{ETT_SHA256[name]}. Download it again (unmodified) from ETDataset, ETT-small")
    return path


def ett(name: str, root: str | Path | None = None, lookback: int = 336, horizon: int = 96, features: str = "M",
        target: str = "OT", verify: bool = True) -> ForecastData:  # fmt: skip
    """ETTh1 or ETTh2 as train / validation / test windows under the standard protocol.

    Train rows ``[0, 8640)``, validation ``[8640 - L, 11520)``, test ``[11520 - L, 14400)``; a StandardScaler fitted on
    the train rows; windows of look-back ``L`` and horizon ``H`` with stride 1.

    Args:
        name (str): ``"ETTh1"`` or ``"ETTh2"``.
        root (str | Path, Optional): folder with the CSV files. Default: ``$INNERLOOP_DATA/ett``.
        lookback (int, Optional): L. Default: 336.
        horizon (int, Optional): H. Default: 96.
        features (str, Optional): ``"M"`` (all 7 channels in and out) or ``"S"`` (``target`` only). Default: ``"M"``.
        target (str, Optional): the target column. Default: ``"OT"`` (oil temperature).
        verify (bool, Optional): check the published SHA-256 first. Default: True.

    Returns:
        ForecastData: windows ``x`` ``[L, C]``, ``y`` ``[H, C]`` per split (C = 7 for ``"M"``).
    """
    path = ett_path(name, root, verify)
    table = load_csv(path, "date", target, features, min_rows=ETT_HOURLY_BORDERS[-1])
    return make_forecast_data(table.values, lookback, horizon, ETT_HOURLY_BORDERS, table.columns)
