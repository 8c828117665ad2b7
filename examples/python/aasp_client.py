#!/usr/bin/env python3
"""A grpcio client for aasp: calls every service the way an ocicrypt keyprovider client, a Kata /
confidential-containers component and a workload would, and checks each answer.

Usage: aasp_client.py --target HOST:PORT --keys-dir DIR --stubs DIR
  --stubs: where `python -m grpc_tools.protoc -Iproto --python_out=DIR --grpc_python_out=DIR proto/*.proto` wrote.
Ends with "N passed, M failed"; exit status 0 only when nothing failed.
"""
import argparse
import base64
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="aasp gRPC address, host:port")
    parser.add_argument("--keys-dir", required=True, help="key-info directory aasp dev wrote")
    parser.add_argument("--stubs", required=True, help="directory of the generated Python stubs")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    import keyprovider_pb2, keyprovider_pb2_grpc
    import attestation_agent_pb2 as aa_pb2, attestation_agent_pb2_grpc as aa_grpc
    import getresource_pb2, getresource_pb2_grpc

    channel = grpc.insecure_channel(args.target)
    results = {"passed": 0, "failed": 0}

    def check(name, condition, detail=""):
        if condition:
            results["passed"] += 1
            print(f"ok   {name}")
        else:
            results["failed"] += 1
            print(f"FAIL {name} {detail}")

    def b64(data):
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()

    # Health: wait until the attester and certificate chain are ready.
    health = health_pb2_grpc.HealthStub(channel)
    status = None
    for _ in range(100):
        status = health.Check(health_pb2.HealthCheckRequest(service="")).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.1)
    check("health SERVING", status == health_pb2.HealthCheckResponse.SERVING, status)

    # Reflection lists every service.
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    for service in ["keyprovider.KeyProviderService", "key_provider.KeyProviderService",
                    "attestation_agent.AttestationAgentService", "getresource.GetResourceService", "grpc.health.v1.Health"]:
        check(f"reflection lists {service}", service in names, sorted(names))

    kp = keyprovider_pb2_grpc.KeyProviderServiceStub(channel)
    hello = kp.SayHello(keyprovider_pb2.HelloRequest(name="python"))
    check("SayHello", hello.message == "Hello python", hello.message)

    report = bytes.fromhex(kp.GetReport(keyprovider_pb2.keyProviderGetReportInput(reportDataHexString="c0ffee")).reportHexString)
    check("GetReport size", len(report) == 1184, len(report))
    check("GetReport report_data", report[0x50:0x53] == bytes.fromhex("c0ffee") and report[0x53:0x90] == bytes(61))
    try:
        kp.GetReport(keyprovider_pb2.keyProviderGetReportInput(reportDataHexString="not hex"))
        check("GetReport bad hex is refused", False)
    except grpc.RpcError as e:
        check("GetReport bad hex is INVALID_ARGUMENT", e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code())

    layer_key = os.urandom(32)
    wrap_input = {"op": "keywrap", "keywrapparams": {"ec": {"Parameters": {"attestation-agent": [b64("aasp:demo-rsa")]}},
                                                      "optsdata": b64(layer_key)}}
    out = kp.WrapKey(keyprovider_pb2.keyProviderKeyWrapProtocolInput(KeyProviderKeyWrapProtocolInput=json.dumps(wrap_input).encode()))
    wrapped = json.loads(out.KeyProviderKeyWrapProtocolOutput)
    # Byte fields come back as arrays of numbers (what ocicrypt-rs and Go's []byte both read).
    annotation = bytes(wrapped["keywrapresults"]["annotation"])
    check("WrapKey output has both result keys", set(wrapped) == {"keywrapresults", "keyunwrapresults"}, wrapped.keys())
    packet = json.loads(annotation)
    check("annotation packet fields", set(packet) == {"kid", "wrapped_data", "wrap_type", "kms_endpoint", "attester_endpoint"}, packet.keys())
    unwrap_input = {"op": "keyunwrap", "keyunwrapparams": {"dc": {"Parameters": {"attestation-agent": [b64("aasp")]}},
                                                            "annotation": b64(annotation)}}
    out = kp.UnWrapKey(keyprovider_pb2.keyProviderKeyWrapProtocolInput(KeyProviderKeyWrapProtocolInput=json.dumps(unwrap_input).encode()))
    unwrapped = json.loads(out.KeyProviderKeyWrapProtocolOutput)
    check("UnWrapKey returns the layer key", bytes(unwrapped["keyunwrapresults"]["optsdata"]) == layer_key)
    try:
        kp.WrapKey(keyprovider_pb2.keyProviderKeyWrapProtocolInput(KeyProviderKeyWrapProtocolInput=b"{broken"))
        check("WrapKey bad JSON is refused", False)
    except grpc.RpcError as e:
        check("WrapKey bad JSON is INVALID_ARGUMENT", e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code())

    agent = aa_grpc.AttestationAgentServiceStub(channel)
    evidence = json.loads(agent.GetEvidence(aa_pb2.GetEvidenceRequest(RuntimeData=b"python nonce")).Evidence)
    report_data = bytes(evidence["attestation_report"]["report_data"])
    check("GetEvidence binds the runtime data as report_data", report_data == b"python nonce".ljust(64, b"\0"))
    check("GetEvidence carries the VCEK chain", [c["cert_type"] for c in evidence["cert_chain"]] == ["VCEK", "ASK", "ARK"])
    token = agent.GetToken(aa_pb2.GetTokenRequest(TokenType="maa")).Token.decode()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    check("GetToken returns an MAA token", claims.get("x-ms-attestation-type") == "sevsnpvm", claims.get("x-ms-attestation-type"))
    check("GetTeeType", agent.GetTeeType(aa_pb2.GetTeeTypeRequest()).tee == "snp")

    with open(os.path.join(args.keys_dir, "demo-oct-info.json")) as f:
        info = json.load(f)
    resources = getresource_pb2_grpc.GetResourceServiceStub(channel)
    resource = resources.GetResource(getresource_pb2.GetResourceRequest(
        ResourcePath="demo-oct", KbcName="aasp", KbsUri=f"{info['kms_endpoint']}?maa={info['attester_endpoint']}"))
    jwk = json.loads(resource.Resource)
    check("GetResource returns the released key as JWK", jwk.get("kty") == "oct" and len(jwk.get("k", "")) == 43, jwk.get("kty"))

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
