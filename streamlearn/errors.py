"""The one root exception of streamlearn and its areas.

::

    StreamlearnError
    ├── ConfigError            settings or a model spec that cannot work
    ├── InvalidEventError      a record that fails to parse or validate (routed to dead letters)
    ├── SnapshotError          snapshot store trouble
    │   ├── SnapshotNotFound   no such model, version or alias
    │   ├── SignatureError     a signed blob (a snapshot, the monitor's state) that does not
    │   │                      verify, or was signed for another purpose: never unpickled
    │   └── StoreUnavailable   a store whose backend failed (Redis down, the archive erring):
    │                          every RedisError and obstore error becomes this, at the store
    ├── InfraError             Kafka or Redis not reachable or misbehaving
    ├── ArchiveError           the event archive cannot do what was asked (a backfill over an
    │                          existing lineage, a period with nothing archived)
    └── ReplayError            a snapshot that cannot be rebuilt (no learning order recorded,
                               its examples held neither by the archive nor by the topic)
"""


class StreamlearnError(Exception):
    """Root of every error streamlearn raises on purpose."""


class ConfigError(StreamlearnError):
    pass


class InvalidEventError(StreamlearnError):
    pass


class SnapshotError(StreamlearnError):
    pass


class SnapshotNotFound(SnapshotError):
    pass


class SignatureError(SnapshotError):
    pass


class StoreUnavailable(SnapshotError):
    pass


class InfraError(StreamlearnError):
    pass


class ArchiveError(StreamlearnError):
    pass


class ReplayError(StreamlearnError):
    pass


class LeaseLost(StreamlearnError):
    """Another process holds the lease this one acted under: it must stop acting."""
