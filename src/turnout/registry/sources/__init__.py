"""Weight sources, one module per URI scheme, and :func:`open_source` to pick one.

file:///abs/dir, /abs/dir  -> local.LocalSource  (confined to allowed_local_roots)
s3://bucket/prefix         -> s3.S3Source        (boto3, ranged parallel GETs, resumable)
https://host/x.tar[.gz]    -> web.WebSource      (an archive of the model dir)
https://host/x.json        -> web.WebSource      (a manifest of files with sha256)
hf://org/repo[@revision]   -> hub.HubSource      (huggingface_hub snapshot)
"""

from __future__ import annotations

from turnout.errors import BadRequest
from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import Source
from turnout.registry.sources.hub import HubSource
from turnout.registry.sources.local import LocalSource
from turnout.registry.sources.s3 import S3Source
from turnout.registry.sources.web import WebSource

__all__ = ["Source", "open_source"]


def open_source(uri: str, config: SyncConfig) -> Source:
    """Parse and check ``uri``; raise SourceNotAllowed or BadRequest naming the problem."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme in ("file", ""):
        return LocalSource.parse(uri, config)
    if scheme == "s3":
        return S3Source.parse(uri, config)
    if scheme in ("https", "http"):
        return WebSource.parse(uri, config)
    if scheme == "hf":
        return HubSource.parse(uri, config)
    raise BadRequest(
        f"{uri!r}: unsupported weight_uri; use s3://bucket/prefix, file:///abs/dir, "
        "https://host/model.tar.gz (or a .json manifest) or hf://org/repo[@revision]",
        param="model.weight_uri",
    )
