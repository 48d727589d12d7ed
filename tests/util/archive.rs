//! Real image content for the real clients: a minimal ustar writer and gzip (flate2), so the
//! skopeo tests push an image whose layer is a genuine `.tar.gz` of bytes the test made,
//! and a `docker-archive` writer (the format `docker save` produces) for the import test.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;

use super::oci::{Image, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256};

/// A tar archive of regular files (`name`, `contents`): ustar headers, 512-byte blocks,
/// mode 0644, mtime 0 so the same files always give the same bytes.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, contents) in files {
        assert!(name.len() < 100, "ustar names are limited to 100 bytes");
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_octal(&mut header[100..108], 0o644);
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], contents.len() as u64);
        put_octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces (POSIX ustar).
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(contents);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Octal, zero-padded, NUL-terminated, filling the field.
fn put_octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A runnable-looking OCI image with one gzip layer holding two small files: what a user
/// would build and push with skopeo. `seed` varies the file contents.
pub fn tar_image(seed: u64) -> Image {
    tar_image_of(seed, &[40_000])
}

/// `tar_image` with one gzip layer per entry of `payloads`, each holding a text file and that
/// many random (so incompressible: the layer is about as large) bytes.
pub fn tar_image_of(seed: u64, payloads: &[usize]) -> Image {
    let tars: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let seed = seed + i as u64;
            tar(&[
                (
                    "hello.txt",
                    format!("hello from berth test {seed}\n").as_bytes(),
                ),
                ("data.bin", &super::oci::random_bytes(seed, size)),
            ])
        })
        .collect();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids }
    }))
    .unwrap();
    Image::assemble(
        OCI_MANIFEST,
        config,
        OCI_CONFIG,
        tars.iter().map(|t| gzip(t)).collect(),
        OCI_LAYER_GZIP,
        json!({}),
    )
}

/// A `docker-archive` tarball (as `docker save` writes) of an image with one uncompressed
/// tar layer: `manifest.json`, the config, and the layer. Returns the archive, the config
/// digest and the layer's diff id so the test can find them after the import.
pub fn docker_archive(seed: u64, repo_tag: &str) -> (Vec<u8>, String, String) {
    let layer = tar(&[("seed.txt", format!("docker archive {seed}\n").as_bytes())]);
    let diff_id = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let config_name = format!("{}.json", &config_digest["sha256:".len()..]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": ["layer.tar"]
    }]))
    .unwrap();
    let archive = tar(&[
        ("manifest.json", &manifest),
        (&config_name, &config),
        ("layer.tar", &layer),
    ]);
    (archive, config_digest, diff_id)
}
