#!/usr/bin/env python3
"""grpcio over aasp's Unix socket: grpcio sends the socket path (percent-encoded) as :authority,
which HTTP/2 servers that validate authorities reset with PROTOCOL_ERROR.

Usage: unix_socket.py AASP_BINARY STUBS_DIR   (exit status 0 only when every call succeeds)
"""
import os
import subprocess
import sys
import tempfile
import time


def main():
    aasp, stubs = sys.argv[1], sys.argv[2]
    sys.path.insert(0, stubs)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    import keyprovider_pb2, keyprovider_pb2_grpc

    with tempfile.TemporaryDirectory() as state:
        socket = os.path.join(state, "aasp.sock")
        server = subprocess.Popen(
            [aasp, "serve", "--attester", "sim", "--state-dir", state, "--listen", "unix://" + socket],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            for line in server.stdout:
                if line.startswith("aasp serving gRPC on"):
                    break
            else:
                sys.exit("aasp serve exited early")
            failed = 0
            for target in ("unix://" + socket, "unix:" + socket):
                channel = grpc.insecure_channel(target)
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                    reply = keyprovider_pb2_grpc.KeyProviderServiceStub(channel).SayHello(
                        keyprovider_pb2.HelloRequest(name="unix"), timeout=10)
                    ok = reply.message == "Hello unix"
                    print(f"{'ok  ' if ok else 'FAIL'} grpcio over {target}")
                    failed += 0 if ok else 1
                except grpc.RpcError as e:
                    print(f"FAIL grpcio over {target}: {e.code()} {e.details()}")
                    failed += 1
            sys.exit(1 if failed else 0)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
