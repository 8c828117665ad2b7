#!/usr/bin/env python3
"""Calls the attestation-agent API as a CoCo/Kata component does: TEE type, evidence bound to a
nonce, an MAA token; checks the binding and prints the token's key claims."""
import argparse
import base64
import json
import os
import sys


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--evidence-out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    import attestation_agent_pb2 as pb, attestation_agent_pb2_grpc as pb_grpc

    agent = pb_grpc.AttestationAgentServiceStub(grpc.insecure_channel(args.target))
    print("tee:", agent.GetTeeType(pb.GetTeeTypeRequest(), timeout=30).tee)
    nonce = os.urandom(32)
    evidence = agent.GetEvidence(pb.GetEvidenceRequest(RuntimeData=nonce), timeout=30).Evidence
    # Upstream's SNP evidence: the nonce is report_data itself, zero-padded to 64 bytes.
    report_data = bytes(json.loads(evidence)["attestation_report"]["report_data"])
    assert report_data == nonce.ljust(64, b"\0"), "report_data does not bind the nonce"
    print("evidence: report_data is the nonce")
    with open(args.evidence_out, "wb") as f:
        f.write(evidence)
    token = agent.GetToken(pb.GetTokenRequest(TokenType="maa"), timeout=60).Token.decode()
    claims = json.loads(b64url_decode(token.split(".")[1]))
    for claim in ["iss", "x-ms-attestation-type", "x-ms-compliance-status", "x-ms-sevsnpvm-hostdata",
                  "x-ms-sevsnpvm-is-debuggable", "x-ms-sevsnpvm-launchmeasurement"]:
        print(f"token {claim}: {claims.get(claim)}")


if __name__ == "__main__":
    main()
