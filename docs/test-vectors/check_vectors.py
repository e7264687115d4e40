#!/usr/bin/env python3
"""Checks docs/test-vectors/protocol.json with nothing of dcpipe's code.

Every signing input is written again from the `layouts` section and the entry's field values,
following docs/PROTOCOL.md section 3; every hash is computed again with Python's hashlib
(SHA-256, and SM3 where the OpenSSL under Python provides it); SM2's Z is computed from the
curve's published parameters; ECDSA P-256 signatures are verified with the `cryptography`
package, and the Confluent frames are decoded and encoded again with `fastavro` and the `.avsc`
files of schemas/avsc, when those packages are installed.

    python3 docs/test-vectors/check_vectors.py [path/to/protocol.json]

Exits 0 and prints a summary when everything matches, 1 at the first mismatch.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

SM2_ID = b"1234567812345678"
SM2_A = "fffffffeffffffffffffffffffffffffffffffff00000000fffffffffffffffc"
SM2_B = "28e9fa9e9d9f5e344d5a9e4bcf6509a7f39789f515ab8f92ddbcbd414d940e93"
SM2_GX = "32c4ae2c1f1981195f9904466a39c9948fe30bbff2660be1715a4589334c74c7"
SM2_GY = "bc3736a2f4f6779c59bdcee36b692153d0a9877cc62a474002df32e52139f0a0"


def sha256(data):
    return hashlib.sha256(data).digest()


def sm3(data):
    return hashlib.new("sm3", data).digest()


def length_prefixed(data):
    return struct.pack(">I", len(data)) + data


def encode_fields(fields, values):
    if sorted(values) != sorted(f["name"] for f in fields):
        raise ValueError(f"fields {sorted(values)} are not the layout's")
    out = b""
    for field in fields:
        value, kind = values[field["name"]], field["encoding"]
        if kind == "fixed":
            data = bytes.fromhex(value)
            assert len(data) == field["size"], field["name"]
            out += data
        elif kind == "fingerprint":
            data = bytes.fromhex(value)
            assert len(data) == 32, field["name"]
            out += data
        elif kind == "i32":
            out += struct.pack(">i", value)
        elif kind == "i64":
            out += struct.pack(">q", value)
        elif kind == "string":
            out += length_prefixed(value.encode())
        elif kind == "bytes":
            out += length_prefixed(bytes.fromhex(value))
        elif kind == "optional string":
            out += b"\x00" if value is None else b"\x01" + length_prefixed(value.encode())
        elif kind == "enum":
            assert value in field["symbols"], field["name"]
            out += length_prefixed(value.encode())
        elif kind == "party":
            out += length_prefixed(value["institution_id"].encode())
            out += length_prefixed(value["wallet_id"].encode())
        elif kind == "array":
            out += struct.pack(">I", len(value))
            for item in value:
                out += encode_fields(field["fields"], item)
        elif kind == "optional record":
            out += b"\x00" if value is None else b"\x01" + encode_fields(field["fields"], value)
        else:
            raise ValueError(f"unknown encoding {kind}")
    return out


def signing_input(layout, values):
    tag = layout["tag"].encode("ascii")
    return struct.pack(">H", len(tag)) + tag + encode_fields(layout["fields"], values)


def sm2_z(public_key_sec1):
    data = struct.pack(">H", len(SM2_ID) * 8) + SM2_ID
    for constant in (SM2_A, SM2_B, SM2_GX, SM2_GY):
        data += bytes.fromhex(constant)
    return sm3(data + public_key_sec1[1:])


def ecdsa_verify(public_key_sec1, message, signature):
    """True or False, or None without the `cryptography` package."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils
    except ImportError:
        return None
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key_sec1)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def avro_round_trip(frame, schemas_dir):
    """The frame decoded and written again with fastavro, or None without the package."""
    try:
        import io

        import fastavro
    except ImportError:
        return None
    if frame[0] != 0:
        raise ValueError("not a Confluent frame")
    (schema_id,) = struct.unpack(">I", frame[1:5])
    files = {1: "transaction_envelope", 2: "clearing_message", 3: "clearing_response",
             4: "payment_outcome", 6: "settlement_instruction", 14: "revocation_update"}
    schema = fastavro.parse_schema(json.loads((schemas_dir / f"{files[schema_id]}.avsc").read_text()))
    datum = io.BytesIO(frame[5:])
    record = fastavro.schemaless_reader(datum, schema, None)
    if datum.read(1):
        raise ValueError("bytes after the datum")
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return frame[:5] + out.getvalue()


class Checker:
    def __init__(self):
        self.checks = 0

    def equal(self, what, actual, expected):
        if actual != expected:
            print(f"MISMATCH {what}:\n  computed {actual}\n  vector   {expected}")
            sys.exit(1)
        self.checks += 1


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("protocol.json")
    vectors = json.loads(path.read_text())
    layouts = vectors["layouts"]
    check = Checker()
    have_sm3 = "sm3" in hashlib.algorithms_available
    ecdsa_checked = 0
    frames_checked = 0
    schemas_dir = Path(__file__).resolve().parent.parent.parent / "schemas" / "avsc"

    # The transaction factor over fixed fingerprints, and the payee's consent.
    f = vectors["factor_input"]
    factor_fields = {
        "payment_id": f["payment_id"],
        "payer": {"institution_id": f["payer_institution_id"], "wallet_id": f["payer_wallet_id"]},
        "payee": {"institution_id": f["payee_institution_id"], "wallet_id": f["payee_wallet_id"]},
        "amount_fen": f["amount_fen"],
        "currency": f["currency"],
        "created_at_ms": f["created_at_ms"],
        "channel": f["channel"],
        "payer_nonce": f["payer_nonce"],
        "payee_nonce": f["payee_nonce"],
        "payer_certificate": f["payer_certificate_fingerprint"],
        "payee_certificate": f["payee_certificate_fingerprint"],
    }
    factor_input = signing_input(layouts["transaction factor"], factor_fields)
    check.equal("factor_signing_input", factor_input.hex(), vectors["factor_signing_input"])
    for case in vectors["cases"]:
        hash_fn = sha256 if case["factor_hash"] == "SHA-256" else sm3
        if hash_fn is sm3 and not have_sm3:
            continue
        factor = hash_fn(factor_input)
        check.equal(f"{case['algorithm']} factor", factor.hex(), case["transaction_factor"])
        consent = signing_input(layouts["payee consent"], {"transaction_factor": factor.hex()})
        check.equal(f"{case['algorithm']} consent", consent.hex(), case["payee_consent_input"])

    # The parties and the message entries, per algorithm.
    for algorithm, parties in vectors["parties"].items():
        fingerprints = set()
        for name, party in parties.items():
            fingerprint = sha256(bytes.fromhex(party["certificate"])).hex()
            check.equal(f"{algorithm} {name} fingerprint", fingerprint, party["certificate_fingerprint"])
            fingerprints.add(fingerprint)
        for name, entry in vectors["signed"][algorithm].items():
            what = f"{algorithm} {name}"
            layout = layouts[entry["layout"]]
            data = signing_input(layout, entry["fields"])
            check.equal(f"{what} signing input", data.hex(), entry["signing_input"])
            for field in layout["fields"]:
                if field["encoding"] == "fingerprint":
                    value = entry["fields"][field["name"]]
                    check.equal(f"{what} {field['name']} is a party's", value in fingerprints, True)
            if "transaction_factor" in entry:
                if entry["factor_hash"] == "SHA-256":
                    check.equal(f"{what} factor", sha256(data).hex(), entry["transaction_factor"])
                elif have_sm3:
                    check.equal(f"{what} factor", sm3(data).hex(), entry["transaction_factor"])
            if "envelope_digest" in entry:
                check.equal(f"{what} envelope digest", sha256(data).hex(), entry["envelope_digest"])
            if "submission_digest" in entry:
                frame = bytes.fromhex(entry["frame"])
                check.equal(f"{what} submission digest", sha256(frame).hex(), entry["submission_digest"])
            if "frame" in entry:
                frame = bytes.fromhex(entry["frame"])
                again = avro_round_trip(frame, schemas_dir)
                if again is not None:
                    check.equal(f"{what} frame through fastavro", again.hex(), entry["frame"])
                    frames_checked += 1
            if "signature" not in entry:
                continue
            public_key = bytes.fromhex(parties[entry["signed_by"]]["public_key_sec1"])
            signature = bytes.fromhex(entry["signature"])
            if algorithm == "ecdsa-p256-sha256":
                check.equal(f"{what} signed digest", sha256(data).hex(), entry["signed_digest"])
                verified = ecdsa_verify(public_key, data, signature)
                if verified is not None:
                    check.equal(f"{what} ECDSA signature verifies", verified, True)
                    check.equal(f"{what} tampered", ecdsa_verify(public_key, data + b"\x00", signature), False)
                    ecdsa_checked += 1
            elif have_sm3:
                z = sm2_z(public_key)
                check.equal(f"{what} SM2 Z", z.hex(), entry["sm2_z"])
                check.equal(f"{what} SM2 e", sm3(z + data).hex(), entry["signed_digest"])

    print(
        f"{path}: {check.checks} checks passed"
        f" (SM3 {'checked' if have_sm3 else 'skipped: no sm3 in hashlib'},"
        f" {ecdsa_checked} ECDSA signatures verified with the cryptography package,"
        f" {frames_checked} frames decoded and encoded again by fastavro)"
    )


if __name__ == "__main__":
    main()
