"""The copy engine: move one image (or index) by digest from one repository to another, exactly and fast.

Order of work, so a failure never leaves a half-image under the destination tag:
  1. fetch the source manifest (raw bytes) and check it is the digest the caller expects;
  2. if the destination tag already holds that digest, stop: nothing to do;
  3. provider fast path (ECR retag, GAR tag, ACR import) if one applies;
  4. every blob of every manifest, in parallel, largest first: HEAD-skip, cross-repository mount, or a streamed
     GET→PUT hashed on the fly;
  5. child manifests by digest (in parallel), then the top manifest under the tag, each verified by digest.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from . import budget as budgets
from .bodies import SizedBody
from .client import MAX_INDEX_CHILDREN, Descriptor, Manifest, ManifestInfo, accept_upload_answer, hasher_for
from .client_cache import shared_client
from .errors import (
    CopyStopped,
    DeadlineExceeded,
    DigestMismatch,
    ImageMismatch,
    IndexTooLarge,
    LayerTooLarge,
    NotFound,
    ProtocolError,
    RegistryError,
    TagConflict,
    TransientError,
    cut,
    redact,
)
from .large_blobs import (
    ChunkedUpload,
    ChunkingRefused,
    CorruptSource,
    LargeBlobSettings,
    ResumingSource,
    SourceFailed,
    check_layer_limits,
    source_failure,
)
from .providers import PushCredentials, PushScope, provider_for
from .referrers import NONE, copy_attachments
from .refs import ImageLocation, RegistrySpec, check_reference, check_repository
from .repositories import ensure_repository
from .transport import RetryNotice, announce, with_retries

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # 1 MiB: few Python iterations per GiB, little memory per stream
FOREIGN_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}


@dataclass
class CopySummary:
    digest: str
    media_type: str
    manifests: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_transferred: int = 0
    bytes_mounted: int = 0  # layer bytes the destination took by cross-repository mount, none of them sent
    bytes_skipped: int = 0  # layer bytes the destination already had
    bytes_read: int = 0  # layer bytes read from the source, a stream read again after a drop counted again
    seconds: float = 0.0
    fast_path: str | None = None
    attached: int = 0
    attachments: list[dict] = field(default_factory=list)  # those that landed: digest, artifact type, kind
    attachment_warnings: list[str] = field(default_factory=list)  # those the destination refused, and why
    repository_created: bool = False  # the destination repository was missing and was created (create_repository)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CopyProgress:
    blobs_total: int
    blobs_done: int
    bytes_total: int
    bytes_done: int


@dataclass(frozen=True)
class CopyPlan:
    digest: str
    blobs_total: int
    bytes_total: int
    bytes_to_move: int
    blobs_present: int
    blobs_mountable: int
    tag_conflict_digest: str | None
    layer_too_large: str | None = None  # why the destination will refuse a layer (its documented limit), if it will


class _Aborted(Exception):
    """Another blob failed; stop this one quickly."""


class _Tracker:
    """Counters shared by the blob threads; the callback gets a snapshot, outside the lock."""

    def __init__(self, callback: Callable[[CopyProgress], None] | None, blobs_total: int, bytes_total: int):
        self._callback = callback
        self._lock = threading.Lock()
        self.progress = CopyProgress(blobs_total, 0, bytes_total, 0)
        self.copied = self.mounted = self.skipped = self.bytes_transferred = 0
        self.bytes_mounted = self.bytes_skipped = 0

    def bytes(self, n: int) -> None:
        with self._lock:
            self.progress.bytes_done += n
            snapshot = CopyProgress(**asdict(self.progress))
        self._emit(snapshot)

    def blob(self, how: str, size: int, *, counted: int = 0) -> None:
        """A blob is done; `counted` bytes of it were already reported through bytes()."""
        with self._lock:
            self.progress.blobs_done += 1
            self.progress.bytes_done += size - counted
            if how == "copied":
                self.copied += 1
                self.bytes_transferred += size
            elif how == "mounted":
                self.mounted += 1
                self.bytes_mounted += size
            else:
                self.skipped += 1
                self.bytes_skipped += size
            snapshot = CopyProgress(**asdict(self.progress))
        self._emit(snapshot)

    def _emit(self, snapshot: CopyProgress) -> None:
        if self._callback is not None:
            try:
                self._callback(snapshot)
            except Exception:  # a broken progress display must not fail a promotion
                log.exception("progress callback failed")


class _ImageGate:
    """Opened once the image's manifest is at the destination (or its copy failed); attachments wait for it."""

    def __init__(self) -> None:
        self._opened = threading.Event()
        self._copied = False

    def open(self, *, copied: bool) -> None:
        self._copied = copied
        self._opened.set()

    def wait(self) -> None:
        self._opened.wait()
        if not self._copied:
            raise RegistryError("the image itself was not copied, so what is attached to it stays behind")


class ImageCopier:
    """One copy_image run: the two clients, the abort flag and the counters."""

    def __init__(
        self,
        src: ImageLocation,
        dst: ImageLocation,
        *,
        parallelism: int = 6,
        progress=None,
        clients=None,
        gate: _ImageGate | None = None,
        notify: RetryNotice | None = None,
        publish_gate: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        check_repository(src.repository)
        check_repository(dst.repository)
        check_reference(src.reference)
        check_reference(dst.reference)
        self.src, self.dst = src, dst
        self.parallelism = max(1, int(parallelism))
        self.progress_callback = progress
        pool = 2 * self.parallelism + 4  # a shared client holds a GET and a PUT connection per stream
        self.owns_clients = clients is None  # an attachment's copy borrows the image copy's clients
        self.gate = gate  # an attachment's copy puts its manifest once the image's is there
        if clients is not None:
            self.src_client, self.dst_client = clients
        else:
            self.src_client = provider_for(src.registry).client(src.registry, pool_size=pool)
            self.dst_client = (
                self.src_client
                if src.registry == dst.registry
                else provider_for(dst.registry).client(dst.registry, pool_size=pool)
            )
        self.same_registry = self.src_client.host == self.dst_client.host
        if self.owns_clients:  # an attachment's copy keeps the image copy's listener on the borrowed clients
            for client in (self.src_client, self.dst_client):
                client.transport.notify = notify
        # The tag write happens inside it: the caller's last word on whether the image may still appear (a cancel).
        self.publish_gate = publish_gate or contextlib.nullcontext
        self.abort = threading.Event()
        self.tracker: _Tracker | None = None
        self.large = LargeBlobSettings.from_options(dst.registry.options)
        self.chunking_refused = False  # the destination took no chunked upload: large blobs go in one PUT too
        self._read_lock = threading.Lock()
        self.bytes_read = 0  # blob bytes read from the source, streams resumed or restarted included

    def close(self) -> None:
        if not self.owns_clients:
            return
        self.src_client.close()
        if self.dst_client is not self.src_client:
            self.dst_client.close()

    # --- the whole image -----------------------------------------------------------------------------------------

    def run(
        self,
        *,
        expected_digest: str | None = None,
        copy_attached: bool = False,
        attached: str | None = None,
        require_signatures: bool = False,
    ) -> CopySummary:
        """Copy the image, then what `attached` (all, signatures, none) selects of what is attached to it;
        `copy_attached=True` is `attached="all"`."""
        started = time.monotonic()
        if expected_digest and not copy_attached:
            # Already there: done without reading the source (on Docker Hub every manifest GET counts as a pull).
            there = self.dst_client.head_manifest(self.dst.repository, self.dst.reference)
            if there is not None and there.digest == expected_digest:
                log.info("%s already holds %s; nothing to copy", self.dst, expected_digest)
                return CopySummary(
                    digest=there.digest, media_type=there.media_type, seconds=round(time.monotonic() - started, 4)
                )
        top = self.src_client.get_manifest(self.src.repository, self.src.reference)
        if expected_digest and top.digest != expected_digest:
            raise ImageMismatch(
                f"{self.src} is {top.digest}, not the expected {expected_digest}; refusing to copy a different image"
            )
        summary = CopySummary(digest=top.digest, media_type=top.media_type)
        mode = attached or ("all" if copy_attached else NONE)
        if mode == NONE:
            self._copy_image(top, summary)
        else:
            # Attachments are found and copied while the image copies, so their round trips cost no time of their
            # own; each attachment's manifest waits for the image's, so nothing refers to an image not there yet.
            gate = _ImageGate()
            with ThreadPoolExecutor(max_workers=1) as side:
                attaching = side.submit(
                    contextvars.copy_context().run,  # the budget (deadline, stop switch) holds for attachments too
                    copy_attachments,
                    source=self.src_client,
                    source_repository=self.src.repository,
                    destination=self.dst_client,
                    destination_repository=self.dst.repository,
                    digest=top.digest,
                    mode=mode,
                    copy_one=lambda reference: self._copy_attachment(reference, gate),
                    require_signatures=require_signatures,
                )
                try:
                    self._copy_image(top, summary)
                except BaseException:
                    gate.open(copied=False)
                    raise
                gate.open(copied=True)
                report = attaching.result()
            summary.attached = len(report.landed)
            summary.attachments = [a.as_dict() for a in report.landed]
            summary.attachment_warnings = report.warnings
        summary.seconds = round(time.monotonic() - started, 4)
        return summary

    def _copy_image(self, top: Manifest, summary: CopySummary) -> None:
        self._check_destination_reference(top)
        existing = self.dst_client.head_manifest(self.dst.repository, self.dst.reference)
        if existing is not None and existing.digest == top.digest:
            log.info("%s already holds %s; nothing to copy", self.dst, top.digest)
        else:
            summary.repository_created = ensure_repository(self.dst, notify=self.dst_client.transport.notify)
            # An attachment is small, and a fast path would put its manifest before the image's is there.
            fast_path = self._try_fast_path(top) if self.gate is None else None
            if fast_path:
                summary.fast_path = fast_path
                summary.manifests = 1
            else:
                self._copy_plain(top, summary)

    def _check_destination_reference(self, top: Manifest) -> None:
        if ":" in self.dst.reference and self.dst.reference != top.digest:
            raise DigestMismatch(
                f"destination reference {self.dst.reference} is a digest other than the source's {top.digest}"
            )

    def _try_fast_path(self, top: Manifest) -> str | None:
        provider = provider_for(self.dst.registry)
        budgets.check("before the fast path")
        try:
            name = provider.fast_copy(self.src, self.dst, top, notify=self.dst_client.transport.notify)
        except (TagConflict, ImageMismatch, CopyStopped, DeadlineExceeded):
            raise
        except Exception as exc:  # fast paths are an optimisation; the plain path always works
            log.warning("%s fast path failed (%s); using the plain OCI path", provider.name, cut(redact(str(exc)), 300))
            return None
        if name:
            self._verify_destination(top)
        return name

    def _copy_plain(self, top: Manifest, summary: CopySummary) -> None:
        children = self._fetch_children(top) if top.is_index else []
        # A child manifest already at the destination brings its blobs with it (registries check on PUT).
        missing_children = self._parallel(
            lambda child: (
                None if self.dst_client.head_manifest(self.dst.repository, child.digest) is not None else child
            ),
            children,
        )
        missing_children = [c for c in missing_children if c is not None]
        blobs: dict[str, Descriptor] = {}
        for manifest in missing_children + ([top] if not top.is_index else []):
            for blob in manifest.blobs():
                if blob.media_type not in FOREIGN_LAYER_TYPES:
                    blobs.setdefault(blob.digest, blob)
        ordered = sorted(blobs.values(), key=lambda d: d.size, reverse=True)
        check_layer_limits(
            ordered, provider_for(self.dst.registry).layer_limit(self.dst.registry), host=self.dst_client.host
        )
        self.tracker = _Tracker(self.progress_callback, len(ordered), sum(d.size for d in ordered))
        self._parallel(self._copy_blob, ordered)
        # Image manifests first; nested indexes after them, each after the indexes it names.
        self._parallel(self._put_child, [c for c in missing_children if not c.is_index])
        for nested in _children_first([c for c in missing_children if c.is_index]):
            self._put_child(nested)
        self._put_top(top)
        summary.manifests = len(missing_children) + 1
        summary.blobs_copied = self.tracker.copied
        summary.blobs_mounted = self.tracker.mounted
        summary.blobs_skipped = self.tracker.skipped
        summary.bytes_transferred = self.tracker.bytes_transferred
        summary.bytes_mounted = self.tracker.bytes_mounted
        summary.bytes_skipped = self.tracker.bytes_skipped
        summary.bytes_read = self.bytes_read

    def _fetch_children(self, index: Manifest) -> list[Manifest]:
        """Every manifest under an index, nested indexes included, each distinct digest fetched once.

        Level by level rather than recursively, so a deep chain of indexes cannot exhaust the stack; at most
        MAX_INDEX_CHILDREN distinct manifests in the whole tree (IndexTooLarge beyond).
        """
        found: dict[str, Manifest] = {}
        level = index.children()
        seen = {d.digest for d in level}
        while level:
            fetched = self._parallel(lambda d: self.src_client.get_manifest(self.src.repository, d.digest), level)
            found.update((m.digest, m) for m in fetched)
            # Keyed by digest: two nested indexes may name the same child.
            level = list(
                {d.digest: d for m in fetched if m.is_index for d in m.children() if d.digest not in seen}.values()
            )
            seen.update(d.digest for d in level)
            if len(seen) > MAX_INDEX_CHILDREN:
                raise IndexTooLarge(
                    f"index {index.digest} and the indexes nested in it name more than {MAX_INDEX_CHILDREN} distinct"
                    " manifests; refusing to copy it"
                )
        return list(found.values())

    def _parallel(self, work: Callable, items: list) -> list:
        """Run work(item) for each item on up to `parallelism` threads; the first failure aborts the rest."""
        if not items:
            return []
        if len(items) == 1:
            return [work(items[0])]
        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(items)), thread_name_prefix="copy") as pool:
            # Each thread runs in a copy of this context: the budget (deadline, stop switch) is shared by all.
            futures: list[Future] = [pool.submit(contextvars.copy_context().run, work, item) for item in items]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                self.abort.set()
                for future in pending:
                    future.cancel()
                wait(pending)
                errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
                # Report the real cause, not the _Aborted of the threads we stopped because of it.
                raise next((e for e in errors if not isinstance(e, _Aborted)), errors[0])
            return [f.result() for f in futures]

    def _put_child(self, child: Manifest) -> None:
        digest = self.dst_client.put_manifest(self.dst.repository, child.digest, child)
        if digest != child.digest:
            raise DigestMismatch(f"{self.dst.repository}@{child.digest} was stored as {digest}")

    def _put_top(self, top: Manifest) -> None:
        if self.gate is not None:
            self.gate.wait()
        budgets.check("before writing the tag")
        try:
            with self.publish_gate():
                digest = self.dst_client.put_manifest(self.dst.repository, self.dst.reference, top)
        except (TransientError, CopyStopped, DeadlineExceeded):
            raise
        except RegistryError as exc:
            existing = self.dst_client.head_manifest(self.dst.repository, self.dst.reference)
            if existing is not None and existing.digest == top.digest:
                return  # another run got there first with the same image: that is success
            if existing is not None:
                raise TagConflict(
                    f"{self.dst} already holds {existing.digest} and the registry refused to move it to {top.digest}"
                    f" ({exc.message})",
                    existing_digest=existing.digest,
                    status=exc.status,
                    code=exc.code,
                ) from None
            raise
        if digest != top.digest:
            raise DigestMismatch(f"{self.dst} was stored as {digest}, not {top.digest}")
        self._verify_destination(top)

    def _verify_destination(self, top: Manifest) -> None:
        stored = self.dst_client.head_manifest(self.dst.repository, self.dst.reference)
        if stored is None:
            raise NotFound(f"{self.dst} is missing right after it was written")
        if stored.digest != top.digest:
            raise DigestMismatch(f"{self.dst} holds {stored.digest} after the copy, not {top.digest}")

    # --- one blob ------------------------------------------------------------------------------------------------

    def _copy_blob(self, blob: Descriptor) -> None:
        if self.abort.is_set():
            raise _Aborted()
        budgets.check(f"copy blob {blob.digest}")
        tracker = self.tracker
        assert tracker is not None
        dst_repo, src_repo = self.dst.repository, self.src.repository
        # HEAD first, then mount, then upload: a registry that refuses or ignores mounts (ECR without BLOB_MOUNTING,
        # Artifactory) may still have the blob, and a mount answer cannot be trusted to say so.
        if self.dst_client.head_blob(dst_repo, blob.digest) is not None:
            tracker.blob("skipped", blob.size)
            return
        location = None
        if self.same_registry and src_repo != dst_repo:
            mounted, location = self._try_mount(blob)
            if mounted:
                tracker.blob("mounted", blob.size)
                return

        reusable = [location] if location else []  # a refused mount's 202 session serves the first attempt

        def attempt(_: int) -> int:
            if self.abort.is_set():
                for session in reusable:  # the refused mount's session would otherwise linger on the registry
                    self.dst_client.cancel_upload(session, dst_repo)
                reusable.clear()
                raise _Aborted()
            upload = reusable.pop() if reusable else self.dst_client.start_upload(dst_repo)[1]
            try:
                if self.large.is_large(blob) and not self.chunking_refused:
                    return self._copy_large(blob, upload)
                return self._stream(blob, upload)
            except BaseException:
                self.dst_client.cancel_upload(upload, dst_repo)  # the next attempt gets a fresh session
                raise

        transport = self.dst_client.transport
        counted = with_retries(
            attempt,
            policy=transport.policy,
            what=f"copy blob {blob.digest}",
            host=transport.host,
            notify=transport.notify,
        )
        tracker.blob("copied", blob.size, counted=counted)

    def _try_mount(self, blob: Descriptor) -> tuple[bool, str | None]:
        """(True, None) when the registry mounted the blob; (False, upload URL or None) otherwise.

        Any answer but 201 or 202 is a refusal, whatever it says (Harbor's 401 for a project it will not name, 400 or
        405 from Nexus and keppel, ECR Public's failures): the blob is then uploaded like any other. Asked once, not
        retried: a refusal costs one round trip.
        """
        try:
            return self.dst_client.start_upload(
                self.dst.repository, mount=blob.digest, from_repository=self.src.repository, retry=False
            )
        except (CopyStopped, DeadlineExceeded):
            raise
        except RegistryError as exc:
            log.info(
                "mount of %s from %s refused (%s); uploading instead", blob.digest, self.src.repository, exc.message
            )
            return False, None

    def _copy_large(self, blob: Descriptor, upload: str) -> int:
        """A blob over the large-blob threshold: resumable download, chunked upload (large_blobs.py)."""
        tracker = self.tracker
        assert tracker is not None
        abort, budget = self.abort, budgets.current_budget()

        def keep_going() -> None:
            if abort.is_set():
                raise _Aborted()
            if budget is not None:
                budget.check(f"copy blob {blob.digest}")

        chunked = ChunkedUpload(
            self.src_client,
            self.src.repository,
            self.dst_client,
            self.dst.repository,
            blob,
            upload,
            chunk_size=self.large.chunk_size,
            on_bytes=tracker.bytes,
            keep_going=keep_going,
        )
        try:
            return chunked.run()
        except ChunkingRefused as refused:
            # Some registries take uploads in one PUT only: this blob and the rest of the copy go that way.
            self.chunking_refused = True
            announce(
                self.dst_client.transport.notify,
                f"{self.dst_client.host} refused a chunked upload ({refused.error.message}); uploading in one PUT",
                logger=log,
            )
            self.dst_client.cancel_upload(upload, self.dst.repository)
            _, fresh = self.dst_client.start_upload(self.dst.repository)
            try:
                return self._stream(blob, fresh)
            except BaseException:
                self.dst_client.cancel_upload(fresh, self.dst.repository)
                raise
        finally:
            self._count_read(chunked.bytes_read)

    def _count_read(self, n: int) -> None:
        with self._read_lock:
            self.bytes_read += n

    def _stream(self, blob: Descriptor, upload: str) -> int:
        """GET from the source and PUT to the upload URL in one pass, hashing as bytes flow; returns bytes sent.

        A source that breaks off is asked again from the next byte (Range) while the PUT waits, so the upload goes
        on rather than starting again (large_blobs.ResumingSource).
        """
        tracker = self.tracker
        assert tracker is not None
        source = ResumingSource(
            self.src_client,
            self.src.repository,
            blob,
            policy=self.src_client.transport.policy,
            notify=self.dst_client.transport.notify,
        )
        sent = 0
        try:
            hasher = hasher_for(blob.digest)
            expected_hex = blob.digest.partition(":")[2]
            read_into = source.read_into
            abort = self.abort
            budget = budgets.current_budget()

            def chunks() -> Iterator[memoryview]:
                # One buffer per stream, refilled in place: each chunk is sent (sendall) before the next read.
                nonlocal sent
                view = memoryview(bytearray(min(CHUNK_SIZE, blob.size)))
                remaining = blob.size
                while remaining > 0:
                    if abort.is_set():
                        raise _Aborted()
                    if budget is not None:
                        budget.check(f"copy blob {blob.digest}")
                    try:
                        chunk = read_into(view[: min(len(view), remaining)])
                    except SourceFailed:
                        raise
                    except Exception as exc:
                        raise SourceFailed(type(exc).__name__) from None
                    if not chunk:
                        raise SourceFailed("source closed the stream early")
                    hasher.update(chunk)
                    remaining -= len(chunk)
                    if remaining == 0 and hasher.hexdigest() != expected_hex:
                        # Raised before the last bytes go out: the registry never completes the upload.
                        raise CorruptSource()
                    sent += len(chunk)
                    tracker.bytes(len(chunk))
                    yield chunk

            try:
                response = self.dst_client.finish_upload(
                    upload, self.dst.repository, blob.digest, SizedBody(chunks(), blob.size), blob.size
                )
            except (SourceFailed, CorruptSource) as exc:
                raise source_failure(exc, blob, self.src_client.host) from None
            accept_upload_answer(response, blob.digest)
            return sent
        except BaseException:
            tracker.bytes(-sent)  # that attempt's bytes will be sent again (or never)
            raise
        finally:
            source.close()
            self._count_read(source.bytes_read)

    # --- attached artifacts --------------------------------------------------------------------------------------

    def _copy_attachment(self, reference: str, gate: _ImageGate) -> None:
        """One attached artifact, by digest or cosign tag, to the same reference at the destination."""
        child = ImageCopier(
            ImageLocation(self.src.registry, self.src.repository, reference),
            ImageLocation(self.dst.registry, self.dst.repository, reference),
            parallelism=self.parallelism,
            clients=(self.src_client, self.dst_client),
            gate=gate,
        )
        child.run()

    # --- preflight -----------------------------------------------------------------------------------------------

    def plan(self) -> CopyPlan:
        top = self.src_client.get_manifest(self.src.repository, self.src.reference)
        existing = self.dst_client.head_manifest(self.dst.repository, self.dst.reference)
        conflict = existing.digest if existing is not None and existing.digest != top.digest else None
        manifests = self._fetch_children(top) if top.is_index else [top]
        blobs: dict[str, Descriptor] = {}
        for manifest in manifests:
            for blob in manifest.blobs():
                blobs.setdefault(blob.digest, blob)
        present = self._parallel(
            lambda b: self.dst_client.head_blob(self.dst.repository, b.digest) is not None, list(blobs.values())
        )
        # What will really move: the blobs the destination lacks, unless the registry is expected to mount them.
        mountable = (
            self.same_registry
            and self.src.repository != self.dst.repository
            and provider_for(self.dst.registry).mounts_blobs(self.dst.registry)
        )
        to_move = sum(b.size for b, here in zip(blobs.values(), present, strict=True) if not here and not mountable)
        try:
            limit = provider_for(self.dst.registry).layer_limit(self.dst.registry)
            check_layer_limits(list(blobs.values()), limit, host=self.dst_client.host)
            too_large = None
        except LayerTooLarge as exc:
            too_large = exc.message
        return CopyPlan(
            layer_too_large=too_large,
            digest=top.digest,
            blobs_total=len(blobs),
            bytes_total=sum(b.size for b in blobs.values()),
            bytes_to_move=to_move,
            blobs_present=sum(present),
            blobs_mountable=sum(1 for here in present if not here) if mountable else 0,
            tag_conflict_digest=conflict,
        )


def _children_first(indexes: list[Manifest]) -> list[Manifest]:
    """Indexes ordered so that each comes after every index in the list that it names (registries refuse an index
    whose children are not there yet)."""
    names = {index.digest: {d.digest for d in index.children()} for index in indexes}
    pending = {index.digest: index for index in indexes}
    ordered: list[Manifest] = []
    while pending:
        ready = [index for digest, index in pending.items() if not names[digest] & pending.keys()]
        if not ready:  # cannot happen with verified digests (an index cannot name itself), but never loop forever
            raise ProtocolError("nested indexes name each other in a cycle")
        for index in ready:
            del pending[index.digest]
        ordered.extend(ready)
    return ordered


def copy_image(
    src: ImageLocation,
    dst: ImageLocation,
    *,
    progress: Callable[[CopyProgress], None] | None = None,
    parallelism: int = 6,
    copy_attached: bool = False,
    expected_digest: str | None = None,
    attached: str | None = None,
    require_signatures: bool = False,
    notify: RetryNotice | None = None,
    publish_gate: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> CopySummary:
    """Copy src to dst (a tag, or a digest to push by digest only); idempotent, verified by digest.

    `attached` (all, signatures, none; default none, or all with copy_attached) says which attached artifacts
    travel too; with `require_signatures`, a signature the destination refuses fails the copy. `notify` hears of
    every retry (a sentence naming the host and why); the tag is written inside `publish_gate()`, which may raise
    CopyStopped to keep the image from appearing. The current budget (budget.py) bounds the whole copy and can stop
    it.
    """
    copier = ImageCopier(src, dst, parallelism=parallelism, progress=progress, notify=notify, publish_gate=publish_gate)
    try:
        return copier.run(
            expected_digest=expected_digest,
            copy_attached=copy_attached,
            attached=attached,
            require_signatures=require_signatures,
        )
    finally:
        copier.close()


def plan_copy(src: ImageLocation, dst: ImageLocation) -> CopyPlan:
    """Preflight: what a copy would move, what is already there or mountable, and whether the tag conflicts."""
    copier = ImageCopier(src, dst)
    try:
        return copier.plan()
    finally:
        copier.close()


def resolve_manifest(location: ImageLocation) -> ManifestInfo:
    """Digest, media type and size of the manifest at location (HEAD, falling back to GET); NotFound if absent."""
    check_repository(location.repository)
    check_reference(location.reference)
    # A shared client: the HEAD reuses a keep-alive connection and a cached token (registration does one per call).
    info = shared_client(location.registry).head_manifest(location.repository, location.reference)
    if info is None:
        raise NotFound(f"{location} does not exist")
    return info


def check_access(location: ImageLocation, *, push: bool = False) -> None:
    """Raise a RegistryError if location cannot be read (or, with push=True, written).

    Read: the manifest must be there. Push: an upload session is opened and cancelled again, which needs push
    rights but writes nothing.
    """
    check_repository(location.repository)
    check_reference(location.reference)
    client = shared_client(location.registry)
    if push:
        _, upload = client.start_upload(location.repository)
        if upload:
            client.cancel_upload(upload, location.repository)
    elif client.head_manifest(location.repository, location.reference) is None:
        raise NotFound(f"{location} does not exist")


def push_credentials(spec: RegistrySpec, scope: PushScope) -> PushCredentials:
    """Short-lived credentials that can pull and push scope.repository on spec's registry and nothing else.

    CannotScope when the registry (as configured) can only give credentials good for more than that repository.
    """
    return provider_for(spec).push_credentials(spec, scope)
