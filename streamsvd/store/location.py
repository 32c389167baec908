"""Where a store lives: a local path or an ``s3://bucket/prefix`` URL.

Credentials for S3 come only from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``) or the
credential chain Icechunk follows; an S3-compatible endpoint is set with
``AWS_ENDPOINT_URL`` (``http://`` endpoints are allowed). They are never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk

from streamsvd.errors import ConfigError

# Local-filesystem storage logs a warning on every open that it does not guard
# concurrent commits; streamsvd guards them with a file lock (see lock.py).
icechunk.set_logs_filter(os.environ.get("ICECHUNK_LOG", "error"))


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store address.

    Parameters
    ----------
    url : str
        What the user typed, kept for messages.
    path : Path or None
        The directory of a local store.
    bucket, prefix : str or None
        The bucket and key prefix of an S3 store.
    """

    url: str
    path: Path | None = None
    bucket: str | None = None
    prefix: str | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def storage(self) -> Any:
        """Return the Icechunk storage object for this location."""
        if self.path is not None:
            return icechunk.local_filesystem_storage(str(self.path))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return icechunk.s3_storage(
            bucket=self.bucket or "",
            prefix=self.prefix or "",
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            from_env=True,
            force_path_style=bool(endpoint),
        )

    def __str__(self) -> str:
        return self.url


def parse_location(url: str | os.PathLike[str]) -> StoreLocation:
    """Parse a local path or an ``s3://bucket/prefix`` URL.

    Examples
    --------
    >>> parse_location("s3://bucket/some/prefix").prefix
    'some/prefix'
    >>> parse_location("data/store").is_local
    True
    """
    text = os.fspath(url)
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"store URL {text!r} names no bucket; write it as s3://BUCKET/PREFIX")
        return StoreLocation(url=text, bucket=bucket, prefix=prefix.strip("/"))
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"store URL {text!r} has scheme {scheme!r}; supported are a local path and s3://"
        )
    return StoreLocation(url=text, path=Path(text).expanduser().absolute())
