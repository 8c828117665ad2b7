#!/usr/bin/env python3
"""The SKR sidecar's own client suite, replayed against aasp started the way the sidecar starts
(`/skr.sh` with SkrSideCarArgs, Port, ServerType). The requests are those of
microsoft/confidential-sidecar-containers `tests/skr/test.py` (REST, with `requests`) and of its
`tests/skr/proxy.py` (gRPC `key_provider.KeyProviderService`, here with grpcio instead of
grpcurl): same routes, headers, field names, runtime data and checks.

Usage: skr_client.py --rest HOST:PORT --grpc HOST:PORT --stubs DIR --maa HOST --hsm HOST
                     --key-path PATH --wrapped FILE --payload FILE
  --key-path: the `skr:<key_path>` key (PATH-info.json beside it), for WrapKey
  --wrapped:  the annotation `aasp wrap` (the sidecar's `skr -infile … -keypath … -outfile …`) wrote
Ends with "N passed, M failed"; exit status 0 only when nothing failed.
"""
import argparse
import base64
import hashlib
import json
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--rest", "--grpc", "--stubs", "--maa", "--hsm", "--key-path", "--wrapped", "--payload"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)

    import grpc
    import requests
    import key_provider_pb2 as kp, key_provider_pb2_grpc as kp_grpc

    results = {"passed": 0, "failed": 0}

    def check(name, condition, detail=""):
        if condition:
            results["passed"] += 1
            print(f"ok   {name}")
        else:
            results["failed"] += 1
            print(f"FAIL {name} {detail}")

    def report_data_is_sha256_of(report, data):
        # The sidecar's check: report_data (offset 0x50) starts with SHA-256 of the runtime data.
        return len(report) == 1184 and report[0x50:0x70] == hashlib.sha256(data).digest()

    rest = f"http://{args.rest}"
    json_headers = {"Content-Type": "application/json"}

    # GET /status: 200 (the sidecar's test checks the code; poll until ready, as a readiness
    # probe would: "Status NOT OK" until then).
    status = None
    for _ in range(150):
        status = requests.get(f"{rest}/status")
        if status.status_code == 200 and status.json().get("message") == "Status OK":
            break
        time.sleep(0.1)
    check("REST /status 200 Status OK", status.status_code == 200 and status.json() == {"message": "Status OK"},
          status.content)

    # POST /attest/raw, runtime data url-safe base64 as the sidecar's test sends it.
    data = b"EXAMPLE"
    r = requests.post(f"{rest}/attest/raw", headers=json_headers,
                      data=json.dumps({"runtime_data": base64.urlsafe_b64encode(data).decode()}))
    ok = r.status_code == 200 and report_data_is_sha256_of(bytes.fromhex(r.json()["report"]), data)
    check("REST /attest/raw report binds SHA-256(runtime data)", ok, r.content[:200])

    # Same body without a Content-Type (Gin binds it anyway).
    r = requests.post(f"{rest}/attest/raw", data=json.dumps({"runtime_data": base64.b64encode(data).decode()}))
    check("REST /attest/raw without Content-Type", r.status_code == 200, r.content[:200])

    # POST /attest/combined: evidence is base64 of the raw report.
    data = b"EXAMPLE_COMBINED"
    r = requests.post(f"{rest}/attest/combined", headers=json_headers,
                      data=json.dumps({"runtime_data": base64.urlsafe_b64encode(data).decode()}))
    body = r.json() if r.status_code == 200 else {}
    ok = r.status_code == 200 and report_data_is_sha256_of(base64.b64decode(body["evidence"]), data)
    check("REST /attest/combined evidence binds SHA-256(runtime data)", ok, r.content[:200])
    chain = base64.b64decode(body.get("endorsements", "")).decode(errors="replace")
    check("REST /attest/combined endorsements = base64(PEM chain)", chain.count("BEGIN CERTIFICATE") == 3)

    # POST /attest/maa with the sidecar test's key document.
    test_key = json.dumps({"keys": [{"key_ops": ["encrypt"], "kid": "test-key", "kty": "oct-HSM", "k": "example"}]})
    r = requests.post(f"{rest}/attest/maa", headers=json_headers,
                      data=json.dumps({"maa_endpoint": args.maa,
                                       "runtime_data": base64.urlsafe_b64encode(test_key.encode()).decode()}))
    check("REST /attest/maa token", r.status_code == 200 and r.json()["token"] != "", r.content[:200])

    # POST /key/release: the key is a JSON document inside a JSON string.
    r = requests.post(f"{rest}/key/release", headers=json_headers,
                      data=json.dumps({"maa_endpoint": args.maa, "akv_endpoint": args.hsm, "kid": "demo-oct"}))
    ok = r.status_code == 200
    if ok:
        key = json.loads(json.loads(r.content.decode())["key"])
        ok = key["kty"].startswith("oct") and key["k"] != "" and isinstance(key.get("key_ops"), list)
    check("REST /key/release oct key", ok, r.content[:200])

    # A release the HSM refuses: 403 and one JSON body (the sidecar writes two on some paths).
    r = requests.post(f"{rest}/key/release", headers=json_headers,
                      data=json.dumps({"maa_endpoint": args.maa, "akv_endpoint": args.hsm, "kid": "no-such-key"}))
    try:
        single = "error" in json.loads(r.content.decode())
    except ValueError:
        single = False
    check("REST /key/release failure: 403, one JSON body", r.status_code == 403 and single, r.content[:200])

    # gRPC key_provider.KeyProviderService, the requests the sidecar's proxy.py sends.
    stub = kp_grpc.KeyProviderServiceStub(grpc.insecure_channel(args.grpc))
    hello = stub.SayHello(kp.HelloRequest(name="GRPC interface test!"))
    check("gRPC SayHello", hello.message == "Hello GRPC interface test!", hello.message)

    runtime = base64.urlsafe_b64encode(b"EXAMPLE").decode()
    report = stub.GetReport(kp.KeyProviderGetReportInput(report_data_hex_string=runtime))
    ok = report_data_is_sha256_of(bytes.fromhex(report.report_hex_string), runtime.encode())
    check("gRPC GetReport binds SHA-256 of the string's text", ok)

    data = stub.GetAttestationData(kp.KeyProviderGetAttestationDataInput(b64_runtime_data_string=runtime))
    check("gRPC GetAttestationData attestation_report = base64, binds SHA-256(runtime data)",
          report_data_is_sha256_of(base64.b64decode(data.attestation_report), b"EXAMPLE"))
    certs = base64.b64decode(data.certs).decode(errors="replace")
    check("gRPC GetAttestationData certs = base64(PEM chain)", certs.count("BEGIN CERTIFICATE") == 3)
    check("gRPC GetAttestationData endorsed_tcb is the TCB as hex", len(data.endorsed_tcb) == 16
          and int(data.endorsed_tcb, 16) >= 0, data.endorsed_tcb)

    # UnWrapKey exactly as proxy.py builds it: "skr" decryption parameter, empty keywrapparams.
    with open(args.wrapped) as f:
        wrapped = f.read()
    with open(args.payload, "rb") as f:
        payload = f.read()
    request = {"op": "keyunwrap", "keywrapparams": {},
               "keyunwrapparams": {"dc": {"Parameters": {"attestation-agent": [base64.b64encode(b"skr").decode()]}},
                                   "annotation": wrapped}}
    out = stub.UnWrapKey(kp.KeyProviderKeyWrapProtocolInput(
        key_provider_key_wrap_protocol_input=json.dumps(request).encode()))
    unwrapped = base64.b64decode(json.loads(out.key_provider_key_wrap_protocol_output)["keyunwrapresults"]["optsdata"])
    check("gRPC UnWrapKey of the offline-wrapped file", unwrapped == payload, unwrapped[:40])

    # WrapKey with the sidecar's recipient form skr:<key_path>, then UnWrapKey of its annotation.
    secret = b"a layer key of 32 bytes, roughly"
    wrap = {"op": "keywrap",
            "keywrapparams": {"ec": {"Parameters": {"attestation-agent": [base64.b64encode(f"skr:{args.key_path}".encode()).decode()]}},
                              "optsdata": base64.b64encode(secret).decode()}}
    out = stub.WrapKey(kp.KeyProviderKeyWrapProtocolInput(key_provider_key_wrap_protocol_input=json.dumps(wrap).encode()))
    annotation = json.loads(out.key_provider_key_wrap_protocol_output)["keywrapresults"]["annotation"]
    request["keyunwrapparams"]["annotation"] = annotation
    out = stub.UnWrapKey(kp.KeyProviderKeyWrapProtocolInput(
        key_provider_key_wrap_protocol_input=json.dumps(request).encode()))
    unwrapped = base64.b64decode(json.loads(out.key_provider_key_wrap_protocol_output)["keyunwrapresults"]["optsdata"])
    check("gRPC WrapKey skr:<key_path> then UnWrapKey", unwrapped == secret)

    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
