"""python -m saganet.serve --model BUNDLE [--host 127.0.0.1] [--port 8000] ..."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..cli import HelpWithDefaults
from ..config import BACKENDS
from .app import Settings


def main(argv=None, prog: str = "python -m saganet.serve") -> int:
    d = Settings(model="")
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpWithDefaults)
    ap.add_argument("--model", required=True, help="model bundle directory (saganet export)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only unless changed)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on")
    ap.add_argument("--backend", default=d.backend, choices=("auto", *BACKENDS),
                    help="inference backend; auto times them once and remembers the fastest in the state dir")
    ap.add_argument("--retime-backend", action="store_true", help="with --backend auto: time the backends again")
    ap.add_argument("--max-batch", type=int, default=d.max_batch, help="tiles per network batch")
    ap.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms, help="longest wait for a batch to fill")
    ap.add_argument("--slide-root", default=None, help="folder slides may be submitted from by path (none: only uploads)")
    ap.add_argument("--state-dir", default=d.state_dir, help="SQLite job store, uploads and job outputs")
    ap.add_argument("--token", default=None, help="bearer token required on every endpoint but /healthz "
                                                  "(also from $SAGANET_TOKEN)")
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
    ap.add_argument("--max-queue-tiles", type=int, default=d.max_queue_tiles,
                    help="tiles waiting for the network; beyond it requests get 503 and Retry-After")
    ap.add_argument("--max-upload-mb", type=int, default=d.max_upload_mb, help="largest uploaded slide (413 beyond)")
    ap.add_argument("--max-plain-pixels", type=int, default=d.max_plain_pixels,
                    help="largest plain PNG/JPEG/TIFF slide accepted, in pixels (decoded whole by its job)")
    ap.add_argument("--header-timeout-s", type=float, default=10.0,
                    help="close a connection whose request headers are not complete this long after they begin "
                         "(slow clients)")
    ap.add_argument("--http", default="auto", choices=("auto", "httptools", "h11"),
                    help="HTTP parser: httptools (C) where installed, else h11 (pure Python)")
    ap.add_argument("--body-idle-s", type=float, default=d.body_idle_s,
                    help="refuse (408) a request body that sends nothing for this long")
    ap.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run slide jobs on a Dask cluster: local:N or tcp://HOST:PORT (docs/scaling.md)")
    ap.add_argument("--cluster-upload-bundle", action="store_true",
                    help="with --cluster: send the bundle's files to the workers instead of loading it from its path")
    a = ap.parse_args(argv)
    if not 1 <= a.max_batch <= 1024 or a.max_delay_ms < 0 or a.max_queue_tiles < a.max_batch:
        ap.error("--max-batch must be 1..1024, --max-delay-ms >= 0, --max-queue-tiles >= --max-batch")
    if not 0 < a.body_idle_s <= 3600 or not 0 < a.header_timeout_s <= 3600:
        ap.error("--body-idle-s and --header-timeout-s must be in (0, 3600]")
    if not 1 <= a.max_plain_pixels <= 178_956_970:
        ap.error("--max-plain-pixels must be 1..178956970 (Pillow's own limit)")
    if a.slide_root and not os.path.isdir(a.slide_root):
        ap.error(f"--slide-root {a.slide_root}: not a directory")
    settings = Settings(model=a.model, backend=a.backend, max_batch=a.max_batch, max_delay_ms=a.max_delay_ms,
                        slide_root=a.slide_root, state_dir=a.state_dir, token=a.token or os.environ.get("SAGANET_TOKEN"),
                        threads=a.threads, max_queue_tiles=a.max_queue_tiles, max_upload_mb=a.max_upload_mb, body_idle_s=a.body_idle_s,
                        max_plain_pixels=a.max_plain_pixels,
                        cluster=a.cluster, cluster_upload_bundle=a.cluster_upload_bundle, retime_backend=a.retime_backend)
    import uvicorn

    from .app import create_app

    scratch = private_tmp(settings.state_dir)
    settings = replace(settings, scratch_dir=str(scratch))
    try:
        app = create_app(settings)
    except (ValueError, OSError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"saganet.serve: error: {e}", file=sys.stderr)
        return 2
    from .http import header_deadline_protocol

    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=30,
                http=header_deadline_protocol(a.header_timeout_s, a.http))
    return 0


def private_tmp(state_dir) -> Path:
    """STATE/tmp as this process's temporary folder, emptied now and at exit: the AOTInductor loaders
    (Python and C++) unpack a package there (6.5 MB a start) instead of leaving it in /tmp, and what a
    `kill -9` left behind goes at the next start."""
    scratch = Path(state_dir) / "tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.environ["TMPDIR"] = str(scratch.resolve())
    tempfile.tempdir = None  # re-read TMPDIR
    return scratch


if __name__ == "__main__":
    sys.exit(main())
