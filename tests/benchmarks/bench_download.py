"""Downloading a large recording: ``workers.downloads.download`` beside a bare httpx2 stream.

    .venv/bin/python -m tests.benchmarks.bench_download [--size-mb 500] [--rounds 3]
                                                        [--warmup 1]

Starts the VTS sandbox (``python -m devkit.sandbox.server``, its own uvicorn process on
loopback) and has it make one standalone WAV recording of ``--size-mb`` MB, streamed from
its generator. Then, after ``--warmup`` untimed rounds, in alternating rounds, two
worker-like processes each fetch it once:

- **bare**: ``httpx2.Client.stream("GET")`` with Basic auth, ``iter_bytes(65536)``, each
  chunk hashed (SHA-256) and written to a file, then flushed and fsynced: what
  ``download`` does, with none of its checks;
- **ours**: ``download(...)`` into a ``LocalStorage``, with ``build_client`` and a
  ``DownloadPolicy`` that allows this loopback host over http (as in development), and
  logging configured as the worker configures it (JSON, INFO, stderr).

Each child imports the same modules and builds its client (and storage) before its
baseline. It then resets its peak RSS (``/proc/self/clear_refs``), notes ``VmRSS``,
downloads (the timed part) and notes ``VmHWM``: the growth is the peak during the download
above the baseline. It finally reads the file back from disk and hashes it, untimed.
Both hashes, streamed and on disk, must equal the sandbox's.

Prints each run, then the medians of MB/s and of wall and CPU seconds (the child's user +
system time during the download), the ratio of ours to bare (target: at least 0.80) and
our largest peak RSS growth (target: under 64 MB). MB are 2**20 bytes. Exits 1
when a hash differs. The sandbox serves from one Python process on the same machine, so
both figures are bounded by it; compare only figures taken side by side in one run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx2

from service import logs
from service.settings import environment
from service.storage.local import LocalStorage
from tests.benchmarks.common import AUTH_ID, AUTH_TOKEN, ROOT, load, running, wait_for
from tests.servers import free_port
from workers.downloads import DownloadPolicy, build_client, download

MB = 2**20
CHUNK = 65536
TIMEOUT = 60.0  # seconds, per network operation, as a worker's client would have
CHILD_TIMEOUT = 900.0  # seconds for one whole child process
TARGET_RATIO = 0.80
TARGET_GROWTH_MB = 64
KINDS = ("bare", "ours")
LABELS = {"bare": "bare httpx2 stream", "ours": "workers.downloads"}
AUTH = (AUTH_ID, AUTH_TOKEN)

# (size, sha256 while streaming, path of the file written)
Fetch = Callable[[], tuple[int, str, Path]]


@dataclass(frozen=True)
class Sample:
    """One child's download; memory in kB as /proc reports it."""

    kind: str
    seconds: float
    cpu_seconds: float  # user + system time of the child during the download
    size: int
    sha256: str
    stored_sha256: str
    rss_before_kb: int
    peak_kb: int
    peak_source: str  # "VmHWM" after a reset; "ru_maxrss" (a lower bound) without one

    @property
    def mb_per_s(self) -> float:
        return self.size / MB / self.seconds

    @property
    def growth_mb(self) -> float:
        return max(0, self.peak_kb - self.rss_before_kb) / 1024


# The child: one download in a fresh process, as a worker makes it.


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _bare(client: httpx2.Client, url: str, directory: Path) -> Fetch:
    def fetch() -> tuple[int, str, Path]:
        path, digest, size = directory / "bare.wav", hashlib.sha256(), 0
        with client.stream("GET", url) as response, path.open("wb") as file:
            response.raise_for_status()
            for chunk in response.iter_bytes(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())  # as LocalUpload.commit does
        return size, digest.hexdigest(), path

    return fetch


def _ours(client: httpx2.Client, policy: DownloadPolicy, url: str, directory: Path) -> Fetch:
    storage = LocalStorage(directory / "recordings")

    def fetch() -> tuple[int, str, Path]:
        result = download(
            url,
            dest_name="rec_bench.wav",
            storage=storage,
            client=client,
            policy=policy,
            auth=AUTH,
        )
        return result.size, result.sha256, storage.root / "rec_bench.wav"

    return fetch


def _loopback_policy(max_bytes: int) -> DownloadPolicy:
    """The development policy: the sandbox's host, over http, on a private address."""
    hosts = frozenset({"127.0.0.1"})
    return DownloadPolicy(
        hosts=hosts,
        auth_origins=frozenset(),
        max_bytes=max_bytes,
        allow_http=True,
        allow_private=True,
    )


def _measure(kind: str, fetch: Fetch) -> Sample:
    exact = _reset_peak()
    before, max_before = _status_kb("VmRSS"), _max_rss_kb()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    size, digest, path = fetch()
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak = _status_kb("VmHWM") if exact else _max_rss_kb()
    return Sample(
        kind=kind,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        size=size,
        sha256=digest,
        stored_sha256=_file_sha256(path),
        rss_before_kb=before if exact else max_before,
        peak_kb=peak,
        peak_source="VmHWM" if exact else "ru_maxrss",
    )


def child(kind: str, url: str, directory: Path, result: Path) -> None:
    """Download ``url`` once the ``kind`` way; write the Sample to ``result`` as JSON."""
    logs.configure(fmt="json", level="INFO", stream=sys.stderr)
    if kind == "bare":
        client = httpx2.Client(trust_env=False, timeout=TIMEOUT, auth=AUTH)
        fetch = _bare(client, url, directory)
    else:
        policy = _loopback_policy(max_bytes=2**40)
        client = build_client(policy, timeout=TIMEOUT)
        fetch = _ours(client, policy, url, directory)
    with client:
        sample = _measure(kind, fetch)
    result.write_text(json.dumps(asdict(sample)))


# The parent: the sandbox, the rounds and the summary.


def run_child(kind: str, url: str, directory: Path) -> Sample:
    """One download in a fresh ``kind`` child process; its files are removed after."""
    work = directory / kind
    work.mkdir()
    result = directory / f"{kind}.json"
    command = [
        sys.executable, "-m", "tests.benchmarks.bench_download",
        "--child", kind, "--url", url, "--dir", str(work), "--result", str(result),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"the {kind} download exited with {done.returncode}:\n{tail}")
        return Sample(**json.loads(result.read_text()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result.unlink(missing_ok=True)


def _answers(control: httpx2.Client) -> bool:
    try:
        return control.get("/_sandbox/stats").status_code == 200
    except httpx2.TransportError:
        return False


def create_recording(control: httpx2.Client, size: int) -> dict[str, object]:
    """A standalone WAV of at most ``size`` bytes, with its url, size and sha256."""
    response = control.post("/_sandbox/recordings", json={"format": "wav", "size_bytes": size})
    response.raise_for_status()
    made: dict[str, object] = response.json()
    return made


HEADER = f"{'':<28}{'MB/s':>8}{'wall s':>9}{'CPU s':>8}{'peak RSS':>11}"


def row(label: str, mb_per_s: float, seconds: float, cpu: float, growth_mb: float) -> str:
    return f"{label:<28}{mb_per_s:8.1f}{seconds:9.2f}{cpu:8.2f}{growth_mb:+8.1f} MB"


def hashes_match(sample: Sample, expected: str) -> bool:
    return sample.sha256 == sample.stored_sha256 == expected


def summary(samples: Sequence[Sample], rounds: int, size: int, expected: str) -> list[str]:
    """The medians of each kind (peak RSS: the largest), the ratio and the targets."""

    def median(kind: str, figure: Callable[[Sample], float]) -> float:
        return statistics.median(figure(s) for s in samples if s.kind == kind)

    speed = {kind: median(kind, lambda s: s.mb_per_s) for kind in KINDS}
    growth = {kind: max(s.growth_mb for s in samples if s.kind == kind) for kind in KINDS}
    ratio = speed["ours"] / speed["bare"]
    cpu_ratio = median("bare", lambda s: s.cpu_seconds) / median("ours", lambda s: s.cpu_seconds)
    matching = sum(hashes_match(s, expected) for s in samples)
    ratio_verdict = "met" if ratio >= TARGET_RATIO else "BELOW TARGET"
    growth_verdict = "met" if growth["ours"] < TARGET_GROWTH_MB else "ABOVE TARGET"
    return [
        f"medians of {rounds} rounds, {size} bytes ({size / MB:.0f} MB), MB = 2**20 bytes",
        HEADER,
        *(
            row(
                LABELS[kind],
                speed[kind],
                median(kind, lambda s: s.seconds),
                median(kind, lambda s: s.cpu_seconds),
                growth[kind],
            )
            for kind in KINDS
        ),
        f"{'ratio (MB/s)':<28}{ratio:8.2f}  (target >= {TARGET_RATIO:.2f}: {ratio_verdict})",
        f"{'ratio (CPU s, bare/ours)':<28}{cpu_ratio:8.2f}",
        f"{'peak RSS growth, ours':<28}{growth['ours']:8.1f} MB  "
        f"(target < {TARGET_GROWTH_MB} MB: {growth_verdict}; from {samples[0].peak_source})",
        f"{'sha256':<28}{matching}/{len(samples)} match the sandbox's {expected[:16]}...",
    ]


def bench(size_mb: int, rounds: int, warmups: int) -> int:
    with TemporaryDirectory(prefix="bench-download-") as tmp:
        directory, port = Path(tmp), free_port()
        log_path = directory / "sandbox.log"
        command = [
            sys.executable, "-m", "devkit.sandbox.server", "--port", str(port),
            "--auth-id", AUTH_ID, "--auth-token", AUTH_TOKEN,
        ]  # fmt: skip
        with (
            running(command, {}, log_path) as process,
            httpx2.Client(
                base_url=f"http://127.0.0.1:{port}", auth=AUTH, trust_env=False, timeout=120
            ) as control,
        ):
            ready = functools.partial(_answers, control)
            wait_for(ready, what="the sandbox", timeout=30, process=process, log_path=log_path)
            made = create_recording(control, size_mb * MB)
            url, size, expected = str(made["url"]), int(str(made["size"])), str(made["sha256"])
            print(f"{load()}; a recording of {size} bytes at {url}")
            print(HEADER, flush=True)
            for _ in range(warmups):  # untimed: a first fetch can be slow (cold page cache)
                for kind in KINDS:
                    run_child(kind, url, directory)
            samples: list[Sample] = []
            for number in range(1, rounds + 1):
                for kind in KINDS:
                    sample = run_child(kind, url, directory)
                    samples.append(sample)
                    ok = "sha256 ok" if hashes_match(sample, expected) else "sha256 MISMATCH"
                    figures = (sample.mb_per_s, sample.seconds, sample.cpu_seconds)
                    label = f"round {number}  {LABELS[kind]}"
                    print(f"{row(label, *figures, sample.growth_mb)}  {ok}", flush=True)
    print()
    print("\n".join(summary(samples, rounds, size, expected)))
    print(load())
    return 0 if all(hashes_match(s, expected) for s in samples) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=500, help="recording size, 2**20 bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    # A child process's own arguments: one download, its Sample written to --result.
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        child(args.child, args.url, args.dir, args.result)
        return 0
    return bench(args.size_mb, args.rounds, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
