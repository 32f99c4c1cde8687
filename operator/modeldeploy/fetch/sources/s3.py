"""s3:// — objects in an S3 bucket (or any S3-compatible store), through boto3.

``s3://BUCKET/PREFIX`` lists the objects under ``PREFIX/`` (or the one object ``PREFIX``).
The endpoint comes from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2, a
test server), credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN`` or boto3's default chain (IRSA, instance profiles).

The revision is derived from the selected objects' version ids (versioned buckets) or
ETags; a sha256 is known when the object was uploaded with a full-object
``ChecksumSHA256``. Downloads use a presigned GET (pinned to the version id, or guarded by
``If-Match`` on the ETag) through the shared ranged downloader: parallel ranges and resume
for every store. Presigned URLs embed a signature: they are never logged.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy.fetch.download import HttpLocation
from modeldeploy.fetch.envvars import AMBIENT_CREDENTIALS_VAR
from modeldeploy.fetch.errors import CredentialError, FetchError, MissingFileError
from modeldeploy.fetch.retry import RetryableError, retry_call
from modeldeploy.fetch.sources.base import BucketSource, Location
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

PRESIGN_SECONDS = 12 * 3600
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "403",
    "401",
}
_MISSING = {"NoSuchBucket", "NoSuchKey", "NoSuchVersion", "404", "NotFound"}


class S3Source(BucketSource):
    """Objects under a key prefix in one bucket."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        self._s3: Any = None
        self._versions: dict[str, str | None] = {}

    @property
    def s3(self) -> Any:
        """The boto3 S3 client, built from ``env`` (never from a config file's secrets)."""
        if self._s3 is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            endpoint = self.env.get("AWS_ENDPOINT_URL_S3") or self.env.get("AWS_ENDPOINT_URL")
            # Without keys and without ambient identity (the operator), go anonymous.
            anonymous = not self.env.get("AWS_ACCESS_KEY_ID") and (
                self.env.get(AMBIENT_CREDENTIALS_VAR, "true").lower() == "false"
            )
            session = boto3.session.Session(
                aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID") or None,
                aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY") or None,
                aws_session_token=self.env.get("AWS_SESSION_TOKEN") or None,
                region_name=self.env.get("AWS_REGION")
                or self.env.get("AWS_DEFAULT_REGION")
                or "us-east-1",
            )
            self._s3 = session.client(
                "s3",
                endpoint_url=endpoint or None,
                config=Config(
                    signature_version=UNSIGNED if anonymous else "s3v4",
                    retries={"max_attempts": 5, "mode": "standard"},
                    s3={"addressing_style": "path" if endpoint else "auto"},
                ),
            )
        return self._s3

    def _call(self, what: str, action: Any) -> Any:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        def attempt() -> Any:
            try:
                return action()
            except NoCredentialsError:
                raise CredentialError(
                    f"s3://{self.bucket}: no credentials (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY from a Secret)"
                ) from None
            except EndpointConnectionError as error:
                raise RetryableError(type(error).__name__) from None
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code in _DENIED or status in (401, 403):
                    raise CredentialError(
                        f"{what}: access denied ({code or status}); check the AWS credentials"
                    ) from None
                if code in _MISSING or status == 404:
                    raise MissingFileError(f"{what}: not found ({code or status})") from None
                if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                    raise RetryableError(code or f"HTTP {status}") from None
                raise FetchError(f"{what}: S3 error {code or status}") from None

        return retry_call(attempt, what=what, options=self.options)

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        def list_all() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                found.extend(page.get("Contents", []))
            return found

        objects = self._call(self.where, list_all)
        files = (self._file(name, obj) for name, obj in self.by_name(objects, lambda o: o["Key"]))
        return Listing(tuple(files), revision=None, derived_kind="etags")

    @staticmethod
    def _file(name: str, obj: Mapping[str, Any]) -> ArtifactFile:
        return ArtifactFile(name=name, size=int(obj["Size"]), ref=str(obj.get("ETag", "")) or None)

    def enrich(self, files: Sequence[ArtifactFile]) -> tuple[ArtifactFile, ...]:
        """HEAD each selected object for its version id and full-object sha256."""
        enriched = []
        for file in files:
            key = self.object_key(file.name)
            head = self._call(
                f"s3://{self.bucket}/{key}",
                lambda key=key: self.s3.head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                ),
            )
            version = head.get("VersionId")
            version = None if version in (None, "null") else str(version)
            etag = str(head.get("ETag", "")) or file.ref
            self._versions[file.name] = version
            enriched.append(
                ArtifactFile(
                    name=file.name,
                    size=int(head.get("ContentLength", file.size)),
                    sha256=_full_object_sha256(head),
                    ref=f"version:{version}" if version else etag,
                )
            )
        return tuple(enriched)

    def location(self, revision: str, file: ArtifactFile) -> Location:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(file.name)}
        headers = {}
        if file.ref and file.ref.startswith("version:"):
            params["VersionId"] = file.ref.removeprefix("version:")
        elif file.ref:
            headers["If-Match"] = file.ref
        url = self.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS)
        return HttpLocation(str(url), headers)


def _full_object_sha256(head: Mapping[str, Any]) -> str | None:
    value = head.get("ChecksumSHA256")
    if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT" or "-" in str(value):
        return None
    try:
        raw = base64.b64decode(str(value), validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None
