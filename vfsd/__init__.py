"""vfsd: a deduplicating chunk store seen as a FUSE file system and as S3."""

__version__ = "0.1.0"
