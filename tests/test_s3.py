"""An ``s3://`` store against an S3 test double (moto's server) on loopback.

What this covers: ingest, fit, info and verify through Icechunk's S3 storage
with credentials and endpoint from the environment, and conflict detection
between two writers (object stores get no lock file; Icechunk's conditional
commit refuses the second one).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import streamsvd
from streamsvd.errors import ConflictError
from streamsvd.store.repository import Store
from tests.conftest import write_npy

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, seed: int) -> str:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"bucket-{seed}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_s3_store_ingest_fit_verify(bucket: str, tmp_path: Path, rng: np.random.Generator) -> None:
    url = f"s3://{bucket}/stores/one"
    data = rng.standard_normal((120, 6))
    report = streamsvd.ingest(url, [write_npy(tmp_path / "a.npy", data)])
    assert report.rows_added == 120
    summary = streamsvd.fit(url, rank=3, scheduler="sync")
    s_ref = np.linalg.svd(data, compute_uv=False)
    np.testing.assert_allclose(summary["singular_values"], s_ref[:3], rtol=1e-6)
    assert streamsvd.info(url)["rows"] == 120
    assert streamsvd.verify(url, scheduler="sync", check=False).ok


def test_s3_second_writer_conflicts(bucket: str, tmp_path: Path, rng: np.random.Generator) -> None:
    url = f"s3://{bucket}/stores/two"
    streamsvd.ingest(url, [write_npy(tmp_path / "a.npy", rng.standard_normal((10, 3)))])
    with (
        Store.open_for_writing(url) as first,
        Store.open_for_writing(url) as second,
        first.transaction() as tx1,
        second.transaction() as tx2,
    ):
        tx1.group.attrs["note"] = "first"
        tx2.group.attrs["note"] = "second"
        tx1.commit("first writer")
        with pytest.raises(ConflictError, match="changed while this write was in progress"):
            tx2.commit("second writer")
