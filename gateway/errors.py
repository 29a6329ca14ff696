"""S3 errors: one exception class per S3 error code, and the one table mapping core errors to
them. `gateway.app`'s error middleware turns any of these into S3's error XML."""

from __future__ import annotations

from vfsd.store import errors as core


class S3Error(Exception):
    """Base of the S3 errors. A subclass sets `code` and `status` (S3's) and its docstring is
    the default message; `extra` adds elements to the error XML, `headers` to the response."""

    code = "InternalError"
    status = 500

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None,
                 **extra: str):
        message = message or " ".join((type(self).__doc__ or "").split())
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra


# Class names are the codes, except NotImplemented (a Python builtin): NotImplementedS3.

class AccessDenied(S3Error):
    """Access Denied"""

    code = "AccessDenied"
    status = 403


class AuthorizationHeaderMalformed(S3Error):
    """The authorization header is malformed."""

    code = "AuthorizationHeaderMalformed"
    status = 400


class AuthorizationQueryParametersError(S3Error):
    """Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential,
    X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."""

    code = "AuthorizationQueryParametersError"
    status = 400


class BadDigest(S3Error):
    """The Content-MD5 you specified did not match what was received."""

    code = "BadDigest"
    status = 400


class BucketAlreadyOwnedByYou(S3Error):
    """Your previous request to create the named bucket succeeded and you already own it."""

    code = "BucketAlreadyOwnedByYou"
    status = 409


class BucketNotEmpty(S3Error):
    """The bucket you tried to delete is not empty."""

    code = "BucketNotEmpty"
    status = 409


class EntityTooLarge(S3Error):
    """Your proposed upload exceeds the maximum allowed object size."""

    code = "EntityTooLarge"
    status = 400


class IncompleteBody(S3Error):
    """You did not provide the number of bytes specified by the Content-Length HTTP header."""

    code = "IncompleteBody"
    status = 400


class InternalError(S3Error):
    """We encountered an internal error. Please try again."""

    code = "InternalError"
    status = 500


class InvalidAccessKeyId(S3Error):
    """The AWS access key Id you provided does not exist in our records."""

    code = "InvalidAccessKeyId"
    status = 403


class InvalidArgument(S3Error):
    """Invalid Argument"""

    code = "InvalidArgument"
    status = 400


class InvalidBucketName(S3Error):
    """The specified bucket is not valid."""

    code = "InvalidBucketName"
    status = 400


class InvalidDigest(S3Error):
    """The Content-MD5 you specified is not valid."""

    code = "InvalidDigest"
    status = 400


class InvalidLocationConstraint(S3Error):
    """The specified location-constraint is not valid."""

    code = "InvalidLocationConstraint"
    status = 400


class InvalidRange(S3Error):
    """The requested range is not satisfiable"""

    code = "InvalidRange"
    status = 416


class InvalidPartNumber(S3Error):
    """The requested partnumber is not satisfiable"""

    code = "InvalidPartNumber"
    status = 416


class InvalidStorageClass(S3Error):
    """The storage class you specified is not valid"""

    code = "InvalidStorageClass"
    status = 400


class InvalidRequest(S3Error):
    """Invalid Request"""

    code = "InvalidRequest"
    status = 400


class KeyTooLongError(S3Error):
    """Your key is too long"""

    code = "KeyTooLongError"
    status = 400


class MalformedXML(S3Error):
    """The XML you provided was not well-formed or did not validate against our published
    schema."""

    code = "MalformedXML"
    status = 400


class MetadataTooLarge(S3Error):
    """Your metadata headers exceed the maximum allowed metadata size."""

    code = "MetadataTooLarge"
    status = 400


class MethodNotAllowed(S3Error):
    """The specified method is not allowed against this resource."""

    code = "MethodNotAllowed"
    status = 405


class MissingContentLength(S3Error):
    """You must provide the Content-Length HTTP header."""

    code = "MissingContentLength"
    status = 411


class NoSuchBucket(S3Error):
    """The specified bucket does not exist"""

    code = "NoSuchBucket"
    status = 404


class NoSuchKey(S3Error):
    """The specified key does not exist."""

    code = "NoSuchKey"
    status = 404


class NotImplementedS3(S3Error):
    """A header or query you provided implies functionality that is not implemented."""

    code = "NotImplemented"
    status = 501


class OperationAborted(S3Error):
    """A conflicting conditional operation is currently in progress against this resource.
    Please try again."""

    code = "OperationAborted"
    status = 409


class PreconditionFailed(S3Error):
    """At least one of the pre-conditions you specified did not hold"""

    code = "PreconditionFailed"
    status = 412


class RequestTimeout(S3Error):
    """Your socket connection to the server was not read from or written to within the timeout
    period."""

    code = "RequestTimeout"
    status = 400


class RequestTimeTooSkewed(S3Error):
    """The difference between the request time and the current time is too large."""

    code = "RequestTimeTooSkewed"
    status = 403


class ServiceUnavailable(S3Error):
    """Please reduce your request rate."""

    code = "ServiceUnavailable"
    status = 503


class SignatureDoesNotMatch(S3Error):
    """The request signature we calculated does not match the signature you provided. Check
    your key and signing method."""

    code = "SignatureDoesNotMatch"
    status = 403


class XAmzContentSHA256Mismatch(S3Error):
    """The provided 'x-amz-content-sha256' header does not match what was computed."""

    code = "XAmzContentSHA256Mismatch"
    status = 400


# vfsd's own codes: a key that needs a file and a directory at one path (DESIGN.md,
# "The namespace"), and a full storage pool.
class KeyConflict(S3Error):
    """The key conflicts with a directory or an object on its path."""

    code = "KeyConflict"
    status = 409


class InsufficientStorage(S3Error):
    """The storage pool is full."""

    code = "InsufficientStorage"
    status = 507


class NoSuchUpload(S3Error):
    """The specified upload does not exist. The upload ID may be invalid, or the upload may
    have been aborted or completed."""

    code = "NoSuchUpload"
    status = 404


class InvalidPart(S3Error):
    """One or more of the specified parts could not be found. The part may not have been
    uploaded, or the specified entity tag may not match the part's entity tag."""

    code = "InvalidPart"
    status = 400


class InvalidPartOrder(S3Error):
    """The list of parts was not in ascending order. The parts list must be specified in
    order by part number."""

    code = "InvalidPartOrder"
    status = 400


class EntityTooSmall(S3Error):
    """Your proposed upload is smaller than the minimum allowed object size."""

    code = "EntityTooSmall"
    status = 400


# The one table: core error class -> S3 error class. Looked up along the exception's MRO, so
# the most specific entry wins.
FROM_CORE: dict[type[core.StoreError], type[S3Error]] = {
    core.NoSuchBucket: NoSuchBucket,
    core.NoSuchKey: NoSuchKey,
    core.NotFound: NoSuchKey,
    core.InvalidBucketName: InvalidBucketName,
    core.BucketExists: BucketAlreadyOwnedByYou,
    core.KeyConflict: KeyConflict,
    core.IsADirectory: KeyConflict,
    core.NotADirectory: KeyConflict,
    core.Exists: OperationAborted,
    core.KeyTooLong: KeyTooLongError,
    core.NameTooLong: KeyTooLongError,
    core.InvalidName: InvalidArgument,
    core.PreconditionFailed: PreconditionFailed,
    core.BadDigest: BadDigest,
    core.MetadataTooLarge: MetadataTooLarge,
    core.InvalidArgument: InvalidArgument,
    core.NotEmpty: BucketNotEmpty,
    core.Busy: OperationAborted,
    core.ReadOnly: AccessDenied,
    core.PermissionDenied: AccessDenied,
    core.NoSpace: InsufficientStorage,
    core.FileTooBig: EntityTooLarge,
    core.ObjectChanged: ServiceUnavailable,
    core.NoSuchUpload: NoSuchUpload,
    core.InvalidPart: InvalidPart,
    core.InvalidPartOrder: InvalidPartOrder,
    core.EntityTooSmall: EntityTooSmall,
    core.InvalidRequest: InvalidRequest,
}


def from_core(error: core.StoreError) -> S3Error:
    """The S3 error for a core error; InternalError for anything the table does not name
    (Corrupt, format errors): those are logged with a traceback by the middleware."""
    for cls in type(error).__mro__:
        mapped = FROM_CORE.get(cls)
        if mapped is not None:
            # The core says which bucket or key when a request names two (CopyObject's source);
            # otherwise the middleware fills in the request's own.
            fields = {}
            bucket, key = getattr(error, "bucket", None), getattr(error, "key", None)
            if bucket:
                fields["BucketName"] = bucket
            if key:
                fields["Key"] = key.decode(errors="replace")
            return mapped(str(error), **fields)
    return InternalError()
