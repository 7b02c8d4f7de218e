"""A Beam job service and an SDK worker pool on loopback: a cluster rehearsed on one machine.

Flink, Spark and Dataflow Runner v2 run Python pipelines through Beam's portability
framework: a job service receives the pipeline, SDK worker processes execute it over gRPC.
Beam ships both halves in Python; this module starts them bound to 127.0.0.1 (Beam's own
``*_main`` modules listen on every address) so that a test or a rehearsal can run

    python -m pipelines.portable job_service --port P &
    python -m pipelines.portable worker_pool --port Q &
    python -m pipelines.preprocess ... --runner PortableRunner --job_endpoint localhost:P \
        --environment_type EXTERNAL --environment_config localhost:Q --direct_num_workers 2

which catches what a cluster would: closures that do not pickle, state kept in the driver,
files written where workers cannot see them. SIGTERM stops a service and its workers.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import grpc
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.portability.api import beam_fn_api_pb2_grpc, beam_job_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor

from pipelines.cli import ArgumentParser

LOOPBACK = "127.0.0.1"


class ParallelBeamJob(local_job_service.BeamJob):
    """A job that asks the worker pool for ``--direct_num_workers`` SDK workers.

    Beam's local job service runs every job on one SDK worker: it calls the FnApiRunner's
    ``run_via_runner_api``, which skips the option handling of ``run_pipeline`` where the
    worker count is read. A cluster runs several workers, so the rehearsal does too.
    """

    def _invoke_runner(self):
        self.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = self.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
        # Options arrive through the job API as strings.
        runner._num_workers = max(1, int(options.view_as(DirectOptions).direct_num_workers or 1))
        return runner.run_via_runner_api(self._pipeline_proto, options)


class LoopbackJobServicer(local_job_service.LocalJobServicer):
    """Beam's local job service, listening on loopback only, running jobs on several workers."""

    def __init__(self):
        super().__init__(beam_job_type=ParallelBeamJob)

    def get_bind_address(self) -> str:
        return LOOPBACK


def start_worker_pool(port: int) -> tuple[int, grpc.Server]:
    """Beam's external worker pool (one SDK worker process per request) on loopback."""
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    bound_port = server.add_insecure_port(f"{LOOPBACK}:{port}")
    # The pool starts each SDK worker as `python -c ...` found on PATH: make that this
    # interpreter (the virtualenv's), or workers start without Beam and the job hangs.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    pool = worker_pool_main.BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    def stop_workers() -> None:
        for process in list(pool._worker_processes.values()):
            worker_pool_main.kill_process_gracefully(process)

    atexit.register(stop_workers)
    return bound_port, server


def start_job_service(port: int) -> tuple[int, LoopbackJobServicer]:
    servicer = LoopbackJobServicer()
    return servicer.start_grpc_server(port), servicer


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m pipelines.portable", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=["job_service", "worker_pool"])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # SIGTERM -> SystemExit, so that atexit stops the SDK worker processes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.service == "job_service":
        port, _ = start_job_service(args.port)
    else:
        port, _ = start_worker_pool(args.port)
    print(f"{args.service} listening on {LOOPBACK}:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
