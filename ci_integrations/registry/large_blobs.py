"""Large blobs: a dropped source stream resumes where it broke, an upload goes in chunks that resume where the
registry says it stopped, and documented layer limits are checked before a byte moves.

For every blob, the source GET resumes with `Range: bytes=<next byte>-` (ResumingSource, also used by the copy
engine's single-PUT path). A 206 must start exactly there (its Content-Range); a 200 means the server ignored the
Range, so the bytes already received are read again and dropped, and the upload goes on untouched.

For blobs over `large_blob_threshold` bytes (128 MiB unless the destination's options say otherwise), the upload
is PATCH chunks of `upload_chunk_size` bytes (8 MiB, never under the 5 MiB that ECR's UploadLayerPart requires of
every part but the last) with `Content-Range: <start>-<end>`, then a PUT with the digest and no body. A chunk that
fails is resumed from the offset the registry reports (GET on the session), resent from the copy of the chunk kept
in memory; only a registry that lost the session or the earlier chunks costs a new upload.

Sources: OCI distribution spec, "Pushing a blob in chunks" and "Resuming an upload"
(https://github.com/opencontainers/distribution-spec/blob/main/spec.md); RFC 9110 §14 (Range, 206, Content-Range);
Amazon ECR API, UploadLayerPart ("part size must be at least 5 MiB, except the last").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

from . import budget as budgets
from .bodies import READ_FAILURES, SizedBody, raw_reader, read_capped, response_error
from .client import Descriptor, RegistryClient, accept_upload_answer, hasher_for
from .errors import DigestMismatch, LayerTooLarge, NotFound, RegistryError, TransientError
from .transport import RetryableFailure, RetryNotice, RetryPolicy, announce, describe_exception

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Chunks cost a round trip each, and distribution stores its hash state per PATCH: measured on 8 × 64 MiB layers,
# chunked uploads took 1.18× the time of one PUT each. Layers of up to 128 MiB go in one PUT (a cut download still
# resumes inside it; a cut upload starts that layer again, which costs little at that size).
DEFAULT_THRESHOLD = 128 * MIB
DEFAULT_CHUNK_SIZE = 8 * MIB
MIN_CHUNK_SIZE = 5 * MIB  # ECR refuses smaller parts (all but the last)
READ_SIZE = MIB  # one read from the source, one send to the registry
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclass(frozen=True)
class LargeBlobSettings:
    """When a blob counts as large, and the size of its upload chunks (from the destination registry's options)."""

    threshold: int = DEFAULT_THRESHOLD
    chunk_size: int = DEFAULT_CHUNK_SIZE

    @classmethod
    def from_options(cls, options: dict) -> LargeBlobSettings:
        threshold = int(options.get("large_blob_threshold", DEFAULT_THRESHOLD))
        chunk_size = max(MIN_CHUNK_SIZE, int(options.get("upload_chunk_size", DEFAULT_CHUNK_SIZE)))
        return cls(threshold=threshold, chunk_size=chunk_size)

    def is_large(self, blob: Descriptor) -> bool:
        return blob.size > self.threshold


def check_layer_limits(blobs: list[Descriptor], limit: tuple[int, str] | None, *, host: str) -> None:
    """LayerTooLarge naming the first blob over `limit` (bytes, and which limit it is), before anything is moved."""
    if limit is None:
        return
    most, which = limit
    for blob in blobs:
        if blob.size > most:
            raise LayerTooLarge(
                f"layer {blob.digest} is {blob.size} bytes ({blob.size / MIB:,.0f} MiB); {host} takes layers of at "
                f"most {most} bytes ({which}): nothing was copied"
            )


# Answers to a first chunk that mean "no chunked uploads here": the blob goes up in one PUT instead.
CHUNKING_REFUSED = {400, 405, 411, 415, 501}


class ChunkingRefused(Exception):
    """The registry refused the first chunk of an upload (it does not take chunked uploads)."""

    def __init__(self, error: RegistryError):
        super().__init__(error.message)
        self.error = error


class SourceFailed(Exception):
    """The source stream could not be resumed (or the resumes are spent); `why` says what happened last."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class CorruptSource(Exception):
    """The source's bytes do not hash to the blob's digest (found before the last bytes go out)."""


def source_failure(exc: SourceFailed | CorruptSource, blob: Descriptor, host: str, *, tail: str = "") -> Exception:
    """What a broken or corrupt source stream means for the blob: a RetryableFailure (a new try, a new session)."""
    if isinstance(exc, CorruptSource):
        return RetryableFailure(
            DigestMismatch(f"the source served bytes for {blob.digest} that do not match that digest")
        )
    why = f"reading {blob.digest} from the source failed: {exc.why}"
    return RetryableFailure(
        TransientError(why), reason=f"{host} broke off the stream of {blob.digest} ({exc.why}){tail}"
    )


class ResumingSource:
    """A blob's GET that picks up where it broke: `read_into` hides up to `resumes` drops of the stream (the source
    registry's retry_attempts less one; with retry_attempts 1 a drop fails the try, and the blob starts again).

    `received` counts the blob's bytes handed to the caller; `bytes_read` every byte read from the source, including
    those read again and dropped after a server ignored the Range.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        blob: Descriptor,
        *,
        policy: RetryPolicy,
        notify: RetryNotice | None = None,
    ):
        self.client, self.repository, self.blob = client, repository, blob
        self.policy, self.notify = policy, notify
        self.resumes = max(0, policy.attempts - 1)
        self.resumed = 0
        self.received = self.bytes_read = 0
        self.response = client.open_blob(repository, blob.digest)
        self._read = raw_reader(self.response)
        length = self.response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != blob.size:
            self.close()
            raise RetryableFailure(
                DigestMismatch(f"source serves {length} bytes for {blob.digest}, the manifest says {blob.size}")
            )

    def close(self) -> None:
        self.response.close()

    def read_into(self, view: memoryview) -> memoryview:
        """Fill (part of) `view` with the next bytes of the blob; SourceFailed when the stream cannot go on."""
        while True:
            try:
                chunk = self._read(view)
                why = "" if chunk else "source closed the stream early"
            except READ_FAILURES as exc:
                chunk, why = None, describe_exception(exc)
            if chunk:
                self.received += len(chunk)
                self.bytes_read += len(chunk)
                return chunk
            self._resume(why)

    def _resume(self, why: str) -> None:
        """Open the stream again at `received`, until that works or the resumes are spent."""
        while True:
            self.close()
            if self.resumed >= self.resumes:
                raise SourceFailed(why)
            self.resumed += 1
            host, digest = self.client.host, self.blob.digest
            pause = self.policy.delay(self.resumed - 1)
            announce(
                self.notify,
                f"{host} broke off the stream of {digest} at byte {self.received} of {self.blob.size} ({why}); "
                f"resuming from there, retry {self.resumed} of {self.resumes} in {pause:.2g} s",
                logger=log,
            )
            budgets.pause(pause, doing=f"resume {digest}")
            try:
                self.response = self.client.open_blob(self.repository, digest, offset=self.received)
                self._read = raw_reader(self.response)
                if self.response.status_code == 206:
                    self._check_range()
                else:
                    self._skip_received()
                return
            except RetryableFailure as failure:
                why = failure.reason or failure.error.message
            except RegistryError as exc:
                raise SourceFailed(exc.message) from None
            except READ_FAILURES as exc:
                why = describe_exception(exc)

    def _check_range(self) -> None:
        match = _CONTENT_RANGE_RE.match(self.response.headers.get("Content-Range") or "")
        if match is None or int(match.group(1)) != self.received:
            self.close()
            raise SourceFailed(
                f"asked for bytes from {self.received}, the source answered the range "
                f"{(self.response.headers.get('Content-Range') or 'none')[:80]!r}"
            )

    def _skip_received(self) -> None:
        """A 200 to a Range request: the whole blob again. Read and drop what was already received."""
        announce(
            self.notify,
            f"{self.client.host} ignored the Range and sent {self.blob.digest} from its first byte; "
            f"reading {self.received} bytes again to skip them",
            logger=log,
        )
        scratch = memoryview(bytearray(min(READ_SIZE, max(1, self.received))))
        left = self.received
        while left > 0:
            got = self._read(scratch[: min(len(scratch), left)])
            if not got:
                raise TransientError("source closed the stream while skipping what was already received")
            left -= len(got)
            self.bytes_read += len(got)


class _Chunk:
    """The chunk being sent, kept so a failed PATCH can be resent from wherever the registry stopped."""

    def __init__(self, view: memoryview, offset: int):
        self.view = view
        self.offset = offset  # of its first byte in the blob
        self.filled = 0  # bytes of it read from the source so far


class ChunkedUpload:
    """Copy one large blob: a resuming source stream into PATCH chunks that resume at the registry's offset.

    `on_bytes(n)` hears of blob bytes as they are first read (progress; negative to take them back after a
    failure); `keep_going()` raises to stop (another blob failed, a cancel, the deadline). Raises RetryableFailure
    when the blob must start again from a new session, a RegistryError when it cannot be copied.
    """

    def __init__(
        self,
        src: RegistryClient,
        src_repository: str,
        dst: RegistryClient,
        dst_repository: str,
        blob: Descriptor,
        upload: str,
        *,
        chunk_size: int,
        on_bytes: Callable[[int], None],
        keep_going: Callable[[], None],
    ):
        self.src, self.src_repository = src, src_repository
        self.dst, self.dst_repository = dst, dst_repository
        self.blob, self.location, self.chunk_size = blob, upload, chunk_size
        self.on_bytes, self.keep_going = on_bytes, keep_going
        self.policy = dst.transport.policy
        self.notify = dst.transport.notify
        self.reported = 0  # bytes told to on_bytes
        self.sent = 0  # bytes put on the wire to the registry, chunks resent included
        self.source: ResumingSource | None = None

    def run(self) -> int:
        """Copy the blob; returns the bytes reported through on_bytes (the blob's size)."""
        blob = self.blob
        try:
            self.source = ResumingSource(
                self.src, self.src_repository, blob, policy=self.src.transport.policy, notify=self.notify
            )
            hasher = hasher_for(blob.digest)
            buffer = memoryview(bytearray(min(self.chunk_size, blob.size)))
            offset = 0
            while offset < blob.size:
                chunk = _Chunk(buffer[: min(len(buffer), blob.size - offset)], offset)
                self._send_chunk(chunk, hasher)
                offset += len(chunk.view)
            response = self.dst.finish_upload(self.location, self.dst_repository, blob.digest, b"", 0)
            accept_upload_answer(response, blob.digest)
            return self.reported
        except (SourceFailed, CorruptSource) as exc:
            raise source_failure(exc, blob, self.src.host, tail=" and it could not be resumed") from None
        except BaseException:
            self.on_bytes(-self.reported)  # that attempt's bytes will be sent again (or never)
            self.reported = 0
            raise
        finally:
            if self.source is not None:
                self.source.close()

    @property
    def bytes_read(self) -> int:
        return self.source.bytes_read if self.source is not None else 0

    def _send_chunk(self, chunk: _Chunk, hasher) -> None:
        start = chunk.offset  # where this PATCH starts in the blob
        attempts = max(1, self.policy.attempts)
        for attempt in range(attempts):
            self.keep_going()
            body = SizedBody(self._bytes(chunk, start - chunk.offset, hasher), chunk.offset + len(chunk.view) - start)
            try:
                response = self.dst.patch_upload(
                    self.location, self.dst_repository, body, start=start, length=len(body)
                )
            except RetryableFailure as failure:
                problem = failure
            else:
                if response.status_code == 202:
                    location = response.headers.get("Location")
                    read_capped(response)
                    response.close()
                    if location:
                        self.location = urljoin(response.url, location)
                    return
                if start == 0 and response.status_code in CHUNKING_REFUSED:
                    raise ChunkingRefused(response_error(response, what=f"PATCH {self.blob.digest}"))
                if response.status_code != 416:  # 416: the registry holds another offset than we thought
                    accept_upload_answer(response, self.blob.digest, ok=(202,))
                problem = RetryableFailure(response_error(response, what=f"PATCH {self.blob.digest}"))
            if attempt + 1 >= attempts:
                raise problem.error
            start = self._registry_offset(chunk, problem, attempt, attempts)

    def _registry_offset(self, chunk: _Chunk, problem: RetryableFailure, attempt: int, attempts: int) -> int:
        """Where to go on after a failed PATCH: the registry's own offset, when it falls within this chunk."""
        try:
            held, self.location = self.dst.upload_offset(self.location, self.dst_repository)
        except NotFound:
            raise RetryableFailure(
                TransientError(f"upload session of {self.blob.digest} lost"),
                reason=f"{self.dst.host} lost the upload session of {self.blob.digest}; starting the blob again",
            ) from None
        except RegistryError as exc:  # a registry that does not tell (or did not answer): the blob starts again
            raise RetryableFailure(
                TransientError(f"offset of the upload of {self.blob.digest} unknown: {exc.message}"),
                reason=f"{self.dst.host} did not say how much of {self.blob.digest} it holds; starting the blob again",
            ) from None
        end = chunk.offset + chunk.filled
        if not chunk.offset <= held <= end:
            raise RetryableFailure(
                TransientError(f"registry holds {held} bytes of {self.blob.digest}"),
                reason=(
                    f"{self.dst.host} holds {held} bytes of {self.blob.digest}, outside the chunk being sent "
                    f"({chunk.offset}-{end}); starting the blob again"
                ),
            )
        pause = self.policy.delay(attempt)
        why = problem.reason or problem.error.message
        announce(
            self.notify,
            f"{why}; the registry holds {held} of {self.blob.size} bytes of {self.blob.digest}: resuming there, "
            f"retry {attempt + 1} of {attempts - 1} in {pause:.2g} s",
            logger=log,
        )
        budgets.pause(pause, doing=f"upload {self.blob.digest}")
        return held

    def _bytes(self, chunk: _Chunk, start: int, hasher) -> Iterator[memoryview]:
        """The chunk from `start`: what is kept of it first, then the rest read from the source as it is sent."""
        assert self.source is not None
        expected = self.blob.digest.partition(":")[2]
        position = start
        while position < chunk.filled:
            end = min(chunk.filled, position + READ_SIZE)
            self.sent += end - position
            yield chunk.view[position:end]
            position = end
        while chunk.filled < len(chunk.view):
            self.keep_going()
            got = self.source.read_into(chunk.view[chunk.filled : min(len(chunk.view), chunk.filled + READ_SIZE)])
            hasher.update(got)
            if self.source.received == self.blob.size and hasher.hexdigest() != expected:
                raise CorruptSource()  # before the last bytes go out: the registry never completes the upload
            chunk.filled += len(got)
            self.reported += len(got)
            self.on_bytes(len(got))
            self.sent += len(got)
            yield got
