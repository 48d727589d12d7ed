#!/usr/bin/env python3
"""Owns the test image of scripts/bench-clients.sh: writes an OCI image layout of one image
with LAYERS gzip tar layers of random content, sizes spread evenly on a log scale from 4 KiB
to MAX (default 40 layers, 4 KiB to 12 MiB, 64.5 MiB in all), and prints shell assignments
describing it (digests, sizes) for the caller to source.

    scripts/gen-oci-image.py DIR [--tag T] [--layers N] [--max-mib M] [--seed S]

Standard library only, so the benchmark needs no image-building tool. The content comes from
a seeded generator: the same arguments give the same digests on every machine, so figures
from different runs describe the same image.
"""
import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import tarfile

TAR_OVERHEAD = 512 + 1024  # one header block, and the two zero blocks that end an archive


def layer_sizes(n, max_bytes):
    # Log-spaced so that most layers are small, as in real images, while a few big ones carry
    # most of the bytes; multiples of 512 so each tar is exactly that long (no padding). The
    # shuffle keeps big and small layers interleaved, so the client's parallel copies of
    # neighbouring layers mix both.
    lo = 4096
    sizes = [max(lo, round(lo * (max_bytes / lo) ** (i / (n - 1)) / 512) * 512) for i in range(n)]
    random.Random(n).shuffle(sizes)
    return sizes


def tar_of_one_file(name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1767225600
    pad = -len(data) % 512
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (pad + 1024)


def put_blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--tag", default="v1")
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--max-mib", type=float, default=12)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    os.makedirs(os.path.join(a.dir, "blobs", "sha256"), exist_ok=True)
    rng = random.Random(a.seed)
    layers, diff_ids, history = [], [], []
    for i, size in enumerate(layer_sizes(a.layers, int(a.max_mib * 2**20))):
        tar = tar_of_one_file(f"layer{i:02d}/data", rng.randbytes(size - TAR_OVERHEAD))
        # Level 0 (stored deflate blocks) is what any gzip level produces for random bytes,
        # at a fraction of the time. The layers must be gzip, not plain tar: skopeo gzips
        # uncompressed layers on their way to a docker:// destination, and that client CPU
        # would swamp the registry's share of a push.
        gz = gzip.compress(tar, compresslevel=0, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": put_blob(a.dir, gz), "size": len(gz)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        history.append({"created": "2026-01-01T00:00:00Z", "created_by": f"bench layer {i} ({size} B)"})

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({
        "created": "2026-01-01T00:00:00Z", "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/layer00/data"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history,
    }, separators=(",", ":")).encode()
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(a.dir, config), "size": len(config)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc, "layers": layers,
    }, separators=(",", ":")).encode()
    manifest_digest = put_blob(a.dir, manifest)
    with open(os.path.join(a.dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(a.dir, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": a.tag}}]}, f)

    # The layers closest to 16 KiB and to 1 MiB are the blobs that wrk fetches over and over.
    small, mib = (min(layers, key=lambda l: abs(l["size"] - want)) for want in (16384, 2**20))
    blobs = [manifest_digest, config_desc["digest"]] + [l["digest"] for l in layers]
    print(f"image_layers={len(layers)}")
    print(f"image_layer_bytes={sum(l['size'] for l in layers)}")
    print(f"image_min_layer={min(l['size'] for l in layers)}")
    print(f"image_max_layer={max(l['size'] for l in layers)}")
    print(f"image_manifest={manifest_digest}")
    print(f"image_manifest_size={len(manifest)}")
    print(f"image_config={config_desc['digest']}")
    print(f"image_config_size={len(config)}")
    print(f"image_small_blob={small['digest']}")
    print(f"image_small_blob_size={small['size']}")
    print(f"image_mib_blob={mib['digest']}")
    print(f"image_mib_blob_size={mib['size']}")
    print(f"image_blobs='{' '.join(blobs)}'")


if __name__ == "__main__":
    main()
