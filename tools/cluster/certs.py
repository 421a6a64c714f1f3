"""Certificates, made with the openssl CLI: the cluster's PKI (CA, API server, admin client,
service-account keys) and the training-operator's webhook serving certificate."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .settings import WEBHOOK_CERT_DIR, ClusterError


def openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", "/CN=datamix-local-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)

    def leaf(name: str, subj: str, ext: str) -> None:
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=pki)
        (pki / f"{name}.ext").write_text(ext)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", "0x" + secrets.token_hex(8), "-days", "3650",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)

    leaf("apiserver", "/CN=kube-apiserver",
         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
         "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,"
         "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
         "DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n")
    leaf("admin", "/O=system:masters/CN=datamix-admin",
         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
         "extendedKeyUsage=clientAuth\n")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def ensure_webhook_certs() -> None:
    """Self-signed serving certs where the training-operator's webhook server expects them.

    Shared by every local cluster on this machine and never removed by `down` (another
    cluster's operator may be using them); replaced only when missing or expiring."""
    crt, key = WEBHOOK_CERT_DIR / "tls.crt", WEBHOOK_CERT_DIR / "tls.key"
    if crt.is_file() and key.is_file():
        ok = subprocess.run(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(crt)],
                            capture_output=True)
        if ok.returncode == 0:
            return
    WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = WEBHOOK_CERT_DIR / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "tls.key", "-out", "tls.crt", "-days", "3650",
            "-subj", "/CN=training-operator.kubeflow.svc",
            "-addext", "subjectAltName=DNS:training-operator.kubeflow.svc,DNS:localhost,IP:127.0.0.1",
            cwd=tmp)
    for name in ("tls.key", "tls.crt"):
        os.replace(tmp / name, WEBHOOK_CERT_DIR / name)
    shutil.rmtree(tmp, ignore_errors=True)
