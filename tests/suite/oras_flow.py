#!/usr/bin/env python3
# The oras client flow of issue 2 ("oras pushes an artifact with a subject and finds it
# through referrers"), driven through oras-py: the PyPI `oras` package is a library with no
# command line, so this script is its "CLI". Run by tests/suite/oras.rs against a real berth:
#     python3 oras_flow.py HOST:PORT WORKDIR
# It exits non-zero with a message on any mismatch, and prints one JSON line naming what it
# pushed so the Rust test can check the same facts over its own HTTP client.
import hashlib
import json
import os
import sys

import oras.oci
import oras.provider

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGNATURE = "application/vnd.example.signature.v1"
SBOM = "application/vnd.example.sbom.v1"


def check(condition, message):
    if not condition:
        sys.exit(f"oras flow: {message}")


def main():
    addr, work = sys.argv[1], sys.argv[2]
    os.chdir(work)
    registry = oras.provider.Registry(hostname=addr, insecure=True)
    repo = f"{addr}/oras/demo"

    def get(path, accept=MANIFEST):
        return registry.do_request(f"http://{addr}{path}", "GET", headers={"Accept": accept})

    # The subject: a plain artifact with one file.
    with open("artifact.txt", "wb") as f:
        f.write(b"the subject artifact\n" * 100)
    registry.push(target=f"{repo}:base", files=["artifact.txt:text/plain"], quiet=True)
    raw = get("/v2/oras/demo/manifests/base").content
    subject = oras.oci.Subject(
        mediaType=MANIFEST, digest="sha256:" + hashlib.sha256(raw).hexdigest(), size=len(raw)
    )

    # Two referrers, typed through their config media type (oras-py sets no artifactType,
    # so the registry must fall back to config.mediaType as the spec says). One goes up in
    # chunks, exercising PATCH from a third-party client.
    referrers = {}
    for tag, kind, chunked in (("sig", SIGNATURE, True), ("sbom", SBOM, False)):
        name = f"{tag}.json"
        with open(name, "w") as f:
            json.dump({"kind": kind, "payload": "x" * 3000}, f)
        registry.push(
            target=f"{repo}:{tag}",
            files=[f"{name}:application/json"],
            subject=subject,
            manifest_config=f"missing-config.json:{kind}",
            do_chunked=chunked,
            chunk_size=1024,
            quiet=True,
        )
        pushed = get(f"/v2/oras/demo/manifests/{tag}")
        check(pushed.status_code == 200, f"{tag} not pullable: {pushed.status_code}")
        check(pushed.json().get("subject", {}).get("digest") == subject.digest, f"{tag} lost its subject")
        referrers[kind] = "sha256:" + hashlib.sha256(pushed.content).hexdigest()

    listed = get(f"/v2/oras/demo/referrers/{subject.digest}", "application/vnd.oci.image.index.v1+json")
    check(listed.status_code == 200, f"referrers: HTTP {listed.status_code}: {listed.text}")
    found = {m["artifactType"]: m["digest"] for m in listed.json()["manifests"]}
    check(found == referrers, f"referrers listed {found}, pushed {referrers}")

    filtered = get(f"/v2/oras/demo/referrers/{subject.digest}?artifactType={SIGNATURE}")
    check(filtered.headers.get("OCI-Filters-Applied") == "artifactType", "filter not reported")
    only = [m["digest"] for m in filtered.json()["manifests"]]
    check(only == [referrers[SIGNATURE]], f"filtered referrers {only}")

    # Pull the signature back with oras and compare the file.
    out = os.path.join(work, "out")
    files = registry.pull(target=f"{repo}:sig", outdir=out)
    check(len(files) == 1, f"pulled {files}")
    with open(files[0], "rb") as f, open("sig.json", "rb") as g:
        check(f.read() == g.read(), "pulled file differs from pushed file")

    print(json.dumps({"subject": subject.digest, "referrers": referrers}))


if __name__ == "__main__":
    main()
