#!/usr/bin/env python3
"""What a workload container runs to obtain its secret: an ocicrypt keyprovider UnWrapKey call to
the aasp sidecar with the annotation `aasp wrap` produced. Writes the secret to --out."""
import argparse
import base64
import json
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--annotation", required=True, help="file written by `aasp wrap`")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    import keyprovider_pb2, keyprovider_pb2_grpc

    annotation = open(args.annotation).read().strip()
    request = {
        "op": "keyunwrap",
        "keyunwrapparams": {
            "dc": {"Parameters": {"attestation-agent": [base64.b64encode(b"aasp").decode()]}},
            "annotation": annotation,
        },
    }
    stub = keyprovider_pb2_grpc.KeyProviderServiceStub(grpc.insecure_channel(args.target))
    reply = stub.UnWrapKey(keyprovider_pb2.keyProviderKeyWrapProtocolInput(
        KeyProviderKeyWrapProtocolInput=json.dumps(request).encode()), timeout=60)
    # Byte fields in keyprovider replies are JSON arrays of numbers.
    secret = bytes(json.loads(reply.KeyProviderKeyWrapProtocolOutput)["keyunwrapresults"]["optsdata"])
    with open(args.out, "wb") as f:
        f.write(secret)
    print(f"provisioned {len(secret)} bytes into {args.out}")


if __name__ == "__main__":
    main()
