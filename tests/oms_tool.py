"""Helpers for tests/oms.rs, run with the Python of the model-signing virtual environment
(cryptography comes with model-signing). Independent of ucw: it computes what ucw must
agree with from the bundle and key files alone.

  keygen PRIV PUB             a fresh ECDSA P-256 key pair (PEM)
  fingerprint PUB             SHA-256 of the key's DER SubjectPublicKeyInfo (hex)
  resign BUNDLE PRIV OUT NAME re-sign BUNDLE's statement with one more resource NAME
                              (a file that is not in the pack), the way model-signing signs
  reseal PACK FILE            change FILE in PACK and rewrite the manifest so the pack is
                              self-consistent again (what only a signature can catch)
"""

import base64
import hashlib
import json
import pathlib
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding (model_signing/_signing/sign_sigstore_pb.py).
    head = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} ".encode()
    return head + payload


def keygen(priv: str, pub: str) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    pathlib.Path(priv).write_bytes(
        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pathlib.Path(pub).write_bytes(
        k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def fingerprint(pub: str) -> None:
    key = serialization.load_pem_public_key(pathlib.Path(pub).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    print(hashlib.sha256(der).hexdigest())


def resign(bundle: str, priv: str, out: str, name: str) -> None:
    b = json.loads(pathlib.Path(bundle).read_text())
    st = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
    res = st["predicate"]["resources"]
    res.append({"name": name, "algorithm": "sha256", "digest": hashlib.sha256(b"not in the pack").hexdigest()})
    res.sort(key=lambda r: r["name"])
    # The subject digest covers the raw resource digests in order, so the statement stays
    # self-consistent: only the comparison with the pack can catch the extra name.
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in res)).hexdigest()
    st["subject"][0]["digest"]["sha256"] = root
    payload = json.dumps(st, indent=2).encode()
    key = serialization.load_pem_private_key(pathlib.Path(priv).read_bytes(), None)
    sig = key.sign(pae(payload), ec.ECDSA(hashes.SHA256()))
    b["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    b["dsseEnvelope"]["signatures"] = [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]
    pathlib.Path(out).write_text(json.dumps(b, indent=2))


def reseal(pack: str, name: str) -> None:
    p = pathlib.Path(pack)
    f = p / name
    data = json.loads(f.read_bytes())
    data["ucw_test_edit"] = 1
    body = json.dumps(data, indent=2).encode()
    f.write_bytes(body)
    m = json.loads((p / "ucw-manifest.json").read_bytes())
    for entry in m["files"] + m["source"]["files"]:
        if entry["name"] == name:
            entry["sha256"] = hashlib.sha256(body).hexdigest()
            entry["size"] = len(body)
    # RFC 8785 for ASCII strings and non-negative integers (docs/DIGESTS.md).
    canon = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    (p / "ucw-manifest.json").write_bytes(canon.encode())


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"keygen": keygen, "fingerprint": fingerprint, "resign": resign, "reseal": reseal}[cmd](*args)
