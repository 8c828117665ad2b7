#!/usr/bin/env python3
"""JWE interop for the KBS backend: aasp against jwcrypto (an independent JOSE implementation).

For ECDH-ES+A256KW on P-256 and on P-521 (upstream's `tee_key_algorithm` ECDH-ES+A256KW-P521,
guest-components kbs_protocol/src/keypair.rs) and RSA-OAEP-256, each with A256GCM:
  1. jwcrypto makes a key and a JWE; `aasp kbs decrypt` must recover the plaintext;
  2. `aasp kbs encrypt` (what the emulated KBS sends) must decrypt in jwcrypto;
  3. `aasp kbs keygen` writes the PEM GetToken("kbs") hands out: jwcrypto must read it as the
     same key as the printed public JWK, and a jwcrypto JWE to it must decrypt in aasp;
  4. a JWE with one flipped ciphertext bit must be refused.
Keys are generated here, at run time, in a temporary directory.
  python kbs_jwe.py AASP_BINARY
"""
import json
import os
import subprocess
import sys
import tempfile

from jwcrypto import jwe, jwk
from jwcrypto.common import base64url_decode, base64url_encode

AASP = sys.argv[1]
# aasp's --alg name -> (the JWE `alg`, jwcrypto key parameters)
ALGS = {
    "ECDH-ES+A256KW": ("ECDH-ES+A256KW", dict(kty="EC", crv="P-256")),
    "ECDH-ES+A256KW-P521": ("ECDH-ES+A256KW", dict(kty="EC", crv="P-521")),
    "RSA-OAEP-256": ("RSA-OAEP-256", dict(kty="RSA", size=2048)),
}


def aasp(args, stdin=b"", check=True):
    run = subprocess.run([AASP, "kbs", *args], input=stdin, capture_output=True)
    if check and run.returncode != 0:
        sys.exit(f"aasp kbs {args[0]} failed: {run.stderr.decode()}")
    return run


def jwcrypto_encrypt(public, alg, plaintext):
    token = jwe.JWE(plaintext, protected=json.dumps({"alg": alg, "enc": "A256GCM"}))
    token.add_recipient(public)
    flat = json.loads(token.serialize(compact=False))
    assert "protected" in flat and "encrypted_key" in flat, flat.keys()
    return json.dumps(flat).encode()


def tee_pubkey(key, alg):
    public = json.loads(key.export_public())
    if public["kty"] == "EC":
        return {"kty": "EC", "crv": public["crv"], "alg": alg, "x": public["x"], "y": public["y"]}
    return {"kty": "RSA", "alg": alg, "n": public["n"], "e": public["e"]}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name, (alg, params) in ALGS.items():
            plaintext = os.urandom(73)
            key = jwk.JWK.generate(**params)
            pem = os.path.join(tmp, "key.pem")
            with open(pem, "wb") as f:
                f.write(key.export_to_pem(private_key=True, password=None))

            # 1. jwcrypto -> aasp
            blob = jwcrypto_encrypt(key, alg, plaintext)
            out = aasp(["decrypt", "--key", pem], blob).stdout
            assert out == plaintext, f"{alg}: aasp decrypted other bytes"

            # 4. a flipped ciphertext bit is refused
            flat = json.loads(blob)
            ct = bytearray(base64url_decode(flat["ciphertext"]))
            ct[0] ^= 1
            flat["ciphertext"] = base64url_encode(bytes(ct))
            bad = aasp(["decrypt", "--key", pem], json.dumps(flat).encode(), check=False)
            assert bad.returncode != 0 and bad.stdout == b"", f"{alg}: tampered JWE accepted"

            # 2. aasp -> jwcrypto
            pub = os.path.join(tmp, "pub.json")
            with open(pub, "w") as f:
                json.dump(tee_pubkey(key, alg), f)
            out = aasp(["encrypt", "--jwk", pub], plaintext).stdout
            token = jwe.JWE()
            token.deserialize(out.decode(), key=key)
            assert token.payload == plaintext, f"{alg}: jwcrypto decrypted other bytes"
            header = json.loads(token.objects["protected"])
            assert header["alg"] == alg and header["enc"] == "A256GCM", header

            # 3. aasp keygen PEM <-> jwcrypto
            gen_pem = os.path.join(tmp, "gen.pem")
            printed = json.loads(aasp(["keygen", "--alg", name, "--out", gen_pem]).stdout)
            with open(gen_pem, "rb") as f:
                loaded = jwk.JWK.from_pem(f.read())
            assert tee_pubkey(loaded, alg) == printed, f"{alg}: PEM and printed JWK differ"
            blob = jwcrypto_encrypt(loaded, alg, plaintext)
            assert aasp(["decrypt", "--key", gen_pem], blob).stdout == plaintext
            print(f"interop: KBS JWE {name}/A256GCM: jwcrypto <-> aasp ok")


main()
