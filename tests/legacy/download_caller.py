"""A caller shaped like the Flask API in front of the original service: stubs generated
from the original proto only, a long-lived insecure channel to `host:50051`-style address,
submit, poll every few seconds, then download the CSV over plain HTTP from the gRPC host
on the original's HTTP port, by the basename of `csv_path`, following redirects.

Run by tests/system/test_old_callers.py in its own process (the generated module would clash with
the current one in a shared descriptor pool). Prints one JSON document of what it saw and
writes the downloaded bytes to the file named by `--out`.
"""

import argparse
import json
import os
import time
import urllib.error
import urllib.request

import grpc
from distance.v1 import distance_pb2, distance_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--device", default="")
    parser.add_argument("--traceparent")
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # What its gRPC instrumentation sends: the caller's trace context as metadata.
    metadata = [("traceparent", args.traceparent)] if args.traceparent else None
    seen: dict[str, object] = {}
    channel = grpc.insecure_channel(
        args.endpoint,
        options=[
            ("grpc.keepalive_time_ms", 10000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", True),
        ],
    )
    stub = distance_pb2_grpc.DistanceServiceStub(channel)
    try:
        queued = stub.CalculateDistanceFromHome(
            distance_pb2.CalculateDistanceRequest(date=args.date, device_id=args.device),
            timeout=30,
            metadata=metadata,
        )
        seen["job_id"] = queued.job_id
        deadline = time.monotonic() + 90
        polls = 0
        while True:
            status = stub.GetJobStatus(
                distance_pb2.GetJobStatusRequest(job_id=queued.job_id),
                timeout=30,
                metadata=metadata,
            )
            polls += 1
            seen["polls"] = polls
            if status.status in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(args.poll_seconds)
    except grpc.RpcError as exc:
        seen["grpc_error"] = exc.code().name
        print(json.dumps(seen))
        return
    finally:
        channel.close()
    seen["status"] = status.status
    seen["error"] = status.error_message
    seen["csv_path"] = status.result.csv_path
    if status.status != "completed":
        print(json.dumps(seen))
        return
    host = args.endpoint.rsplit(":", 1)[0]
    basename = os.path.basename(status.result.csv_path)
    url = f"http://{host}:{args.http_port}/download/{basename}"
    seen["url"] = url
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            seen["http_status"] = response.status
            seen["final_url"] = response.url
            seen["content_type"] = response.headers.get("Content-Type")
            with open(args.out, "wb") as out:
                out.write(response.read())
    except urllib.error.HTTPError as exc:
        seen["http_status"] = exc.code
        seen["http_error"] = exc.read().decode(errors="replace")
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
