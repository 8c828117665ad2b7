#!/usr/bin/env python3
"""Runs every command `aasp dev` printed (its "  $ " lines) as a newcomer would paste them.

Shell lines run with bash from the repository root. grpcurl lines are replayed with grpcio when
grpcurl is not installed (Debian has none): the same target, method and JSON body (proto JSON,
as grpcurl sends it), through the stubs generated from proto/. Every line must succeed.

Usage: dev_guide.py DEV_LOG STUBS_DIR REPO_ROOT
Ends with "N passed, M failed"; exit status 0 only when nothing failed.
"""
import json
import shlex
import shutil
import subprocess
import sys


def main():
    log, stubs, root = sys.argv[1:4]
    sys.path.insert(0, stubs)
    import grpc
    from google.protobuf import json_format
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    import keyprovider_pb2, keyprovider_pb2_grpc
    import attestation_agent_pb2, attestation_agent_pb2_grpc
    import getresource_pb2, getresource_pb2_grpc

    modules = {
        "keyprovider.KeyProviderService": (keyprovider_pb2, keyprovider_pb2_grpc, "KeyProviderServiceStub"),
        "attestation_agent.AttestationAgentService": (attestation_agent_pb2, attestation_agent_pb2_grpc,
                                                      "AttestationAgentServiceStub"),
        "getresource.GetResourceService": (getresource_pb2, getresource_pb2_grpc, "GetResourceServiceStub"),
        "grpc.health.v1.Health": (health_pb2, health_pb2_grpc, "HealthStub"),
    }
    results = {"passed": 0, "failed": 0}

    def check(name, ok, detail=""):
        results["passed" if ok else "failed"] += 1
        print(f"{'ok  ' if ok else 'FAIL'} {name} {'' if ok else detail}")

    def grpcurl_replay(argv):
        body, rest = None, [a for a in argv[1:] if a != "-plaintext"]
        if rest and rest[0] == "-d":
            body, rest = rest[1], rest[2:]
        target, call = rest[0], rest[1]
        channel = grpc.insecure_channel(target)
        if call == "list":
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            return [s.name for r in replies for s in r.list_services_response.service]
        service, method = call.rsplit("/", 1)
        pb2, pb2_grpc, stub_name = modules[service]
        stub = getattr(pb2_grpc, stub_name)(channel)
        rpc = getattr(stub, method)
        # The request type from the service descriptor.
        descriptor = pb2.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[method]
        request_class = getattr(pb2, descriptor.input_type.name)
        request = json_format.Parse(body or "{}", request_class())
        return json_format.MessageToDict(rpc(request))

    lines = [l.strip()[2:] for l in open(log) if l.startswith("  $ ")]
    check("aasp dev printed runnable commands", len(lines) >= 10, len(lines))
    have_grpcurl = shutil.which("grpcurl") is not None
    for line in lines:
        argv = shlex.split(line)
        name = line if len(line) < 110 else line[:107] + "..."
        if argv[0] == "grpcurl" and not have_grpcurl:
            try:
                reply = grpcurl_replay(argv)
                if argv[-1].endswith("/UnWrapKey"):
                    doc = json.loads(__import__("base64").b64decode(reply["KeyProviderKeyWrapProtocolOutput"]))
                    secret = bytes(doc["keyunwrapresults"]["optsdata"])
                    check(name, secret == b"hello from aasp dev", secret)
                else:
                    check(name, True)
            except Exception as e:  # noqa: BLE001 - report every failure the same way
                check(name, False, e)
        else:
            # Bytes: a command may print a binary resource.
            done = subprocess.run(["bash", "-c", line], cwd=root, capture_output=True)
            check(name, done.returncode == 0, (done.stdout + done.stderr)[-600:].decode(errors="replace"))

    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
