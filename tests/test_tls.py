"""Both services over TLS with a self-signed certificate."""

import shutil
import subprocess

import httpx
import pytest

from edgecnn import serving
from edgecnn.cloud import service as cloud_service


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_cloud_service_over_tls(tmp_path, tiny_cloud):
  cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
  subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                  "-keyout", str(key), "-out", str(cert), "-days", "1",
                  "-subj", "/CN=127.0.0.1", "-addext",
                  "subjectAltName=IP:127.0.0.1"], check=True,
                 capture_output=True)
  runtime = cloud_service.CloudRuntime(tiny_cloud / "cloud", tmp_path / "cs",
                                       token="tok")
  server = serving.BackgroundServer(cloud_service.create_app(runtime),
                                    ssl_certfile=str(cert),
                                    ssl_keyfile=str(key)).start()
  try:
    assert server.url.startswith("https://")
    r = httpx.get(server.url + "/v1/models/cloud_cnn", verify=str(cert),
                  headers={"Authorization": "Bearer tok"})
    assert r.status_code == 200
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
      httpx.get(server.url + "/healthz")
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
      httpx.get(server.url.replace("https", "http") + "/healthz", timeout=5)
  finally:
    server.stop()
