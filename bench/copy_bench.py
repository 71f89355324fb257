"""Copy-engine benchmark: P1–P5 of QUALITY.md, ours against skopeo and a raw parallel curl GET→PUT, side by side.

Starts its own docker-registry instances on free loopback ports and builds the images itself:
  P1  8 × 64 MiB layers, cross-registry (fresh destination each run)
  P2  same-registry promotion to another repository (mount)
  P3  re-promotion when the destination already has the digest
  P4  2-platform index (4 × 32 MiB layers per platform), `skopeo copy --all` for reference
  P5  one 1 GiB layer, peak RSS of a copy running in its own process
  A1  cross-registry promotion of a small image with a cosign signature and an SBOM referrer attached, against
      the same promotion with attached=none (fresh destination each run)
  P9  same-registry promotion, every mount refused, the destination already has the layers: bytes moved
  P10 one 1 GiB layer whose source stream is reset at 90 %: GiB read and sent, resumed against restarted

    .venv/bin/python bench/copy_bench.py            # medians of 5
    .venv/bin/python bench/copy_bench.py --quick    # one run each
    .venv/bin/python bench/copy_bench.py --only P9 P10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.streaming_proxy import StreamingProxy  # noqa: E402
from ci_integrations.registry import ImageLocation, RegistrySpec, copy_image  # noqa: E402
from tests.support.attachments import SPDX, push_fallback_index, push_referrer, referrer_entry  # noqa: E402
from tests.support.cosign import generate_key_pair, sign_image  # noqa: E402
from tests.support.images import (  # noqa: E402
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    get_manifest,
    push_blob,
    push_blob_stream,
    push_index,
    push_random_image,
    put_manifest,
    random_layer_stream,
)
from tests.support.registry_server import RegistryServer, start_registry  # noqa: E402

MiB = 1024 * 1024
SKOPEO_CACHES = [Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")]


def loc(server: RegistryServer, repository: str, reference: str) -> ImageLocation:
    return ImageLocation(RegistrySpec("generic", server.url), repository, reference)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def run_measured(argv: list[str]) -> tuple[float, float, str]:
    """Run a process; returns (seconds, peak RSS in MiB, stdout).

    Peak RSS is VmHWM from /proc, polled until exit: wait4's ru_maxrss is useless here because Linux carries the
    parent's high-water mark across fork and exec.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_kib = 0
    status_path = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status_path, encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {stderr.decode()[-800:]}")
    return seconds, peak_kib / 1024, stdout.decode()


def skopeo(src: str, dst: str, *, all_platforms: bool = False) -> tuple[float, int]:
    for cache in SKOPEO_CACHES + [Path.home() / ".local/share/containers/cache/blob-info-cache-v1.boltdb"]:
        cache.unlink(missing_ok=True)
    argv = ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--retry-times", "0"]
    if all_platforms:
        argv.append("--all")
    argv += [f"docker://{src}", f"docker://{dst}"]
    seconds, rss, _ = run_measured(argv)
    return seconds, rss


def raw_copy(src: RegistryServer, dst: RegistryServer, repository: str, tag: str, parallel: int = 6) -> float:
    """The floor: every blob as `curl GET | curl PUT`, as many at once as our copy runs (6), then the manifest.

    No HEAD, no hashing, no retries: the difference to ours is our overhead.
    """
    raw, media_type = get_manifest(src.url, repository, tag)
    manifest = json.loads(raw)
    blobs = [manifest["config"]] + manifest["layers"]
    started = time.perf_counter()

    def one(blob: dict) -> None:
        start = requests.post(f"{dst.url}/v2/{repository}/blobs/uploads/", timeout=30)
        location = requests.compat.urljoin(start.url, start.headers["Location"])
        put_url = f"{location}{'&' if '?' in location else '?'}digest={blob['digest']}"
        subprocess.run(
            f"curl -sf '{src.url}/v2/{repository}/blobs/{blob['digest']}' | "
            f"curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T - '{put_url}'",
            shell=True,
            check=True,
        )

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, blobs))
    put_manifest(dst.url, repository, tag, raw, media_type)
    return time.perf_counter() - started


def our_copy_in_subprocess(src: ImageLocation, dst: ImageLocation) -> tuple[float, float, dict]:
    """Our copy in a fresh interpreter, as a worker would run it; the child reports its own VmHWM too."""
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]);"
        "from ci_integrations.registry import ImageLocation, RegistrySpec, copy_image;"
        "s=copy_image(ImageLocation(RegistrySpec('generic',sys.argv[2]),sys.argv[3],sys.argv[4]),"
        "ImageLocation(RegistrySpec('generic',sys.argv[5]),sys.argv[6],sys.argv[7])).as_dict();"
        "s['vmhwm_kib']=int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]);"
        "print(json.dumps(s))"
    )
    argv = [sys.executable, "-c", code, str(ROOT), src.registry.url, src.repository, src.reference]
    argv += [dst.registry.url, dst.repository, dst.reference]
    seconds, polled, stdout = run_measured(argv)
    summary = json.loads(stdout)
    return seconds, max(polled, summary["vmhwm_kib"] / 1024), summary


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# Registry storage on tmpfs when there is room: the comparison is about the copy, not the disk's writeback mood.
STORAGE_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 6 << 30 else None


def fresh() -> RegistryServer:
    data_dir = tempfile.mkdtemp(prefix="p2p-bench-", dir=STORAGE_ROOT)
    server = start_registry(data_dir=data_dir)
    server.owns_data_dir = True  # stop() removes it
    return server


def attachment_rows(source: RegistryServer, runs: int) -> list[dict]:
    """A1: the cost of carrying a signature and an SBOM with a promotion."""
    rows: list[dict] = []
    digest_a1 = push_random_image(source.url, "team/signed", "a1", layers=2, layer_size=MiB)
    sign_image(source.url, "team/signed", digest_a1, generate_key_pair())
    sbom = push_referrer(source.url, "team/signed", digest_a1, artifact_type=SPDX, payload=os.urandom(32 * 1024))
    sbom_size = len(get_manifest(source.url, "team/signed", sbom)[0])
    push_fallback_index(source.url, "team/signed", digest_a1, [referrer_entry(sbom, sbom_size, SPDX)])
    with_them, without = [], []
    for i in range(runs):
        for mode in ("all", "none") if i % 2 == 0 else ("none", "all"):
            dst = fresh()
            try:
                seconds, summary = timed(
                    lambda dst=dst, mode=mode: copy_image(
                        loc(source, "team/signed", "a1"), loc(dst, "prod/signed", "a1"), attached=mode
                    )
                )
                assert summary.attached == (2 if mode == "all" else 0)
                (with_them if mode == "all" else without).append(seconds)
            finally:
                dst.stop()
    added = median(with_them) - median(without)
    rows.append(
        {
            "id": "A1",
            "what": "promotion, signature + SBOM attached",
            "ours": median(with_them),
            "skopeo": None,
            "raw": None,
            "bar": f"+{added:.3f}s over none; ≤ +0.1 s",
            "ok": added <= 0.1,
        }
    )
    rows.append(
        {
            "id": "A1",
            "what": "same promotion, attached=none",
            "ours": median(without),
            "skopeo": None,
            "raw": None,
            "bar": "(reference)",
            "ok": None,
        }
    )
    return rows


def push_big_image(source: RegistryServer, repository: str, tag: str) -> int:
    """One image with a single 1 GiB layer, built without holding it in memory; returns the layer's size."""
    print("building the 1 GiB layer…", file=sys.stderr)
    digest, size = push_blob_stream(source.url, repository, random_layer_stream(1024 * MiB))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    config_digest = push_blob(source.url, repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": size}],
    }
    put_manifest(source.url, repository, tag, json.dumps(manifest).encode(), OCI_MANIFEST)
    return size


def refused_mount_row(source: RegistryServer) -> dict:
    """P9: a same-registry promotion where the registry refuses every mount (ECR without BLOB_MOUNTING, Artifactory,
    Harbor) and the destination repository already has the layers: layer bytes moved, measured by a proxy."""
    image = push_random_image(source.url, "team/p9", "1.0", layers=8, layer_size=64 * MiB)
    copy_image(loc(source, "team/p9", "1.0"), loc(source, "prod/p9", "before"))  # the layers are there now
    proxy = StreamingProxy(source.url, refuse_mounts=True)
    try:
        spec = RegistrySpec("generic", proxy.url)
        summary = copy_image(ImageLocation(spec, "team/p9", "1.0"), ImageLocation(spec, "prod/p9", "2.0"))
        assert summary.digest == image
        moved = proxy.blob_bytes_down + proxy.bytes_up
    finally:
        proxy.stop()
    image_size = summary.bytes_skipped + summary.bytes_transferred + summary.bytes_mounted
    return {
        "id": "P9",
        "what": f"mount refused, layers there: MiB moved (image {image_size / MiB:.0f})",
        "ours": moved / MiB,
        "skopeo": None,
        "raw": None,
        "bar": "0 layer bytes (was the whole image)",
        "ok": moved == 0,
        "unit": "MiB",
    }


def resumed_download_rows(source: RegistryServer) -> list[dict]:
    """P10: one 1 GiB layer whose source stream is reset at 90 %: GiB read from the source and GiB sent to the
    destination, each counted by a proxy, with the resumed download and chunked upload ("ours") against the copy as
    the engine made it before ("raw" column): one streamed PUT, and no resumes (the source's retry_attempts 1), so
    the blob starts again from byte 0."""
    push_big_image(source, "team/p10", "1.0")
    down: dict[str, float] = {}
    up: dict[str, float] = {}
    before = ({"retry_attempts": 1}, {"large_blob_threshold": 4 * 1024 * MiB})
    for how, (source_options, options) in (("resumed", ({}, {})), ("restarted", before)):
        proxy = StreamingProxy(source.url, cut_blob_at=0.9, cut_min_bytes=512 * MiB)
        dst = fresh()
        counter = StreamingProxy(dst.url)
        try:
            summary = copy_image(
                ImageLocation(RegistrySpec("generic", proxy.url, options=source_options), "team/p10", "1.0"),
                ImageLocation(RegistrySpec("generic", counter.url, options=options), "prod/p10", "1.0"),
            )
            assert summary.bytes_transferred >= 1024 * MiB and proxy.cut_blob_at is None  # the cut happened
            down[how] = proxy.blob_bytes_down / (1024 * MiB)
            up[how] = counter.bytes_up / (1024 * MiB)
        finally:
            proxy.stop()
            counter.stop()
            dst.stop()
    return [
        {
            "id": "P10",
            "what": f"1 GiB layer cut at 90 %: GiB {direction}",
            "ours": figures["resumed"],
            "skopeo": None,
            "raw": figures["restarted"],
            "bar": "≤1.1 GiB (raw: restarted)",
            "ok": figures["resumed"] <= 1.1,
            "unit": "GiB",
        }
        for direction, figures in (("read from the source", down), ("sent to the destination", up))
    ]


def bench(runs: int, big: bool) -> list[dict]:
    rows: list[dict] = []
    source = fresh()
    try:
        print("building images…", file=sys.stderr)
        t, digest_p1 = timed(lambda: push_random_image(source.url, "team/app", "p1", layers=8, layer_size=64 * MiB))
        print(f"  8×64 MiB image in {t:.1f}s", file=sys.stderr)
        digest_p4 = push_index(source.url, "team/multi", "p4", layers=4, layer_size=32 * MiB)

        # P1: cross-registry, destination empty. One untimed warm-up of each first (page cache, connections).
        for warm in ("ours", "skopeo"):
            dst = fresh()
            try:
                if warm == "ours":
                    copy_image(loc(source, "team/app", "p1"), loc(dst, "prod/app", "p1"))
                else:
                    skopeo(f"{source.host}/team/app:p1", f"{dst.host}/prod/app:p1")
            finally:
                dst.stop()
        ours, theirs, raw = [], [], []
        for i in range(runs):
            for who in ["ours", "skopeo", "raw"] if i % 2 == 0 else ["raw", "skopeo", "ours"]:
                dst = fresh()
                try:
                    if who == "ours":
                        seconds, summary = timed(
                            lambda dst=dst: copy_image(loc(source, "team/app", "p1"), loc(dst, "prod/app", "p1"))
                        )
                        assert summary.digest == digest_p1 and summary.blobs_copied == 9
                        ours.append(seconds)
                    elif who == "skopeo":
                        theirs.append(skopeo(f"{source.host}/team/app:p1", f"{dst.host}/prod/app:p1")[0])
                    else:
                        raw.append(raw_copy(source, dst, "team/app", "p1"))
                finally:
                    dst.stop()
        rows.append(
            {
                "id": "P1",
                "what": "cross-registry 8×64 MiB",
                "ours": median(ours),
                "skopeo": median(theirs),
                "raw": median(raw),
                "bar": "≤0.95×skopeo, ≤1.05×raw",
                "ok": median(ours) <= 0.95 * median(theirs) and median(ours) <= 1.05 * median(raw),
            }
        )

        # P2: same-registry promotion (mount), and skopeo for reference.
        ours, theirs, moved = [], [], []
        for i in range(runs):
            seconds, summary = timed(
                lambda i=i: copy_image(loc(source, "team/app", "p1"), loc(source, f"promoted{i}/app", "p1"))
            )
            ours.append(seconds)
            moved.append(summary.bytes_transferred)
            theirs.append(skopeo(f"{source.host}/team/app:p1", f"{source.host}/skopeo{i}/app:p1")[0])
        rows.append(
            {
                "id": "P2",
                "what": f"same-registry promotion (bytes moved: {max(moved)})",
                "ours": median(ours),
                "skopeo": median(theirs),
                "raw": None,
                "bar": "0 layer bytes, ≤0.15 s",
                "ok": max(moved) == 0 and median(ours) <= 0.15,
            }
        )

        # P3: re-promotion of a digest the destination already has.
        dst = fresh()
        try:
            copy_image(loc(source, "team/app", "p1"), loc(dst, "prod/app", "p1"))
            skopeo(f"{source.host}/team/app:p1", f"{dst.host}/prod/app:p1")
            ours, theirs = [], []
            for _ in range(runs):
                seconds, summary = timed(lambda: copy_image(loc(source, "team/app", "p1"), loc(dst, "prod/app", "p1")))
                assert summary.bytes_transferred == 0
                ours.append(seconds)
                theirs.append(skopeo(f"{source.host}/team/app:p1", f"{dst.host}/prod/app:p1")[0])
        finally:
            dst.stop()
        rows.append(
            {
                "id": "P3",
                "what": "re-promotion, digest already there",
                "ours": median(ours),
                "skopeo": median(theirs),
                "raw": None,
                "bar": "≤0.1 s, no blob traffic",
                "ok": median(ours) <= 0.1,
            }
        )

        # P4: 2-platform index.
        ours, theirs = [], []
        for i in range(runs):
            for who in ("ours", "skopeo") if i % 2 == 0 else ("skopeo", "ours"):
                dst = fresh()
                try:
                    if who == "ours":
                        seconds, summary = timed(
                            lambda dst=dst: copy_image(loc(source, "team/multi", "p4"), loc(dst, "prod/multi", "p4"))
                        )
                        assert summary.digest == digest_p4
                        ours.append(seconds)
                    else:
                        theirs.append(
                            skopeo(f"{source.host}/team/multi:p4", f"{dst.host}/prod/multi:p4", all_platforms=True)[0]
                        )
                finally:
                    dst.stop()
        rows.append(
            {
                "id": "P4",
                "what": "2-platform index (8×32 MiB)",
                "ours": median(ours),
                "skopeo": median(theirs),
                "raw": None,
                "bar": "digest kept, ≤0.7×skopeo --all",
                "ok": median(ours) <= 0.7 * median(theirs),
            }
        )

        rows.extend(attachment_rows(source, runs))
        rows.append(refused_mount_row(source))
        if big:
            rows.extend(resumed_download_rows(source))

        # P5: 1 GiB layer, peak RSS of our copy in its own process (and skopeo's, for reference).
        if big:
            push_big_image(source, "team/big", "p5")
            ours_t, ours_rss, theirs_t, theirs_rss = [], [], [], []
            for _ in range(max(1, min(runs, 3))):
                dst = fresh()
                try:
                    seconds, rss, summary = our_copy_in_subprocess(
                        loc(source, "team/big", "p5"), loc(dst, "prod/big", "p5")
                    )
                    assert summary["bytes_transferred"] >= 1024 * MiB
                    ours_t.append(seconds)
                    ours_rss.append(rss)
                finally:
                    dst.stop()
                dst = fresh()
                try:
                    seconds, rss = skopeo(f"{source.host}/team/big:p5", f"{dst.host}/prod/big:p5")
                    theirs_t.append(seconds)
                    theirs_rss.append(rss)
                finally:
                    dst.stop()
            rows.append(
                {
                    "id": "P5",
                    "what": "1 GiB layer: wall time (s)",
                    "ours": median(ours_t),
                    "skopeo": median(theirs_t),
                    "raw": None,
                    "bar": "(process incl. start-up)",
                    "ok": None,
                }
            )
            rows.append(
                {
                    "id": "P5",
                    "what": "1 GiB layer: peak RSS (MiB)",
                    "ours": max(ours_rss),
                    "skopeo": max(theirs_rss),
                    "raw": None,
                    "bar": "≤120 MiB",
                    "ok": max(ours_rss) <= 120,
                    "unit": "MiB",
                }
            )
    finally:
        source.stop()
    return rows


def print_table(rows: list[dict], runs: int) -> None:
    print(f"\ncopy engine benchmark: medians of {runs} run(s), seconds unless noted; ratio = ours / reference\n")
    header = f"{'id':<4} {'what':<44} {'ours':>9} {'skopeo':>9} {'raw curl':>9} {'÷skopeo':>8} {'÷raw':>6}"
    header += f"  {'bar':<32} ok"
    print(header)
    print("-" * len(header))
    for row in rows:

        def cell(value):
            return f"{value:9.3f}" if isinstance(value, float) else f"{'—':>9}"

        ratio_s = f"{row['ours'] / row['skopeo']:8.2f}" if row.get("skopeo") else f"{'—':>8}"
        ratio_r = f"{row['ours'] / row['raw']:6.2f}" if row.get("raw") else f"{'—':>6}"
        ok = {True: "yes", False: "NO", None: ""}[row["ok"]]
        print(
            f"{row['id']:<4} {row['what']:<44} {cell(row['ours'])} {cell(row.get('skopeo'))} {cell(row.get('raw'))}"
            f" {ratio_s} {ratio_r}  {row['bar']:<32} {ok}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    parser.add_argument("--no-big", action="store_true", help="skip the 1 GiB layers (P5, P10)")
    parser.add_argument("--attachments-only", action="store_true", help="only A1 (attached signature and SBOM)")
    parser.add_argument("--only", choices=["P9", "P10"], nargs="+", help="run only these rows (no skopeo needed)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    if args.only:
        source = fresh()
        try:
            rows = ([refused_mount_row(source)] if "P9" in args.only else []) + (
                resumed_download_rows(source) if "P10" in args.only else []
            )
        finally:
            source.stop()
        print_table(rows, 1)
        return
    if args.attachments_only:
        source = fresh()
        try:
            print_table(attachment_rows(source, runs), runs)
        finally:
            source.stop()
        return
    if not shutil.which("skopeo"):
        sys.exit("skopeo is not installed")
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    rows = bench(runs, big=not args.no_big)
    print_table(rows, runs)


if __name__ == "__main__":
    main()
