//! The node's local image store: OCI images imported from an image layout directory, every
//! blob checked against its sha256 digest before it is used, and each image's layers applied
//! in order (whiteouts and opaque directories honoured) into one read-only root filesystem
//! that containers share as the lower layer of their overlay.
//!
//! Layout under `root`: `blobs/sha256/<hex>` (verified blobs), `rootfs/<manifest hex>/`
//! (the applied layers), `images/<manifest hex>.json` (the image record) and `refs.json`
//! (normalised reference → manifest digest).

use crate::error::NodeError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// What a container needs from its image (the OCI image config, as Kubernetes uses it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// Normalised reference it was stored under, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Manifest digest, `sha256:<hex>`; the container status's imageID.
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

pub struct ImageStore {
    root: PathBuf,
}

/// `busybox` → `docker.io/library/busybox:latest`, `reg:5000/a/b` → `reg:5000/a/b:latest`,
/// as the container runtimes behind Kubernetes normalise image names.
pub fn normalize(reference: &str) -> String {
    let reference = reference.trim();
    let (name, suffix) = match reference.find('@') {
        Some(at) => (&reference[..at], &reference[at..]),
        None => {
            let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
            match reference[last_slash..].find(':') {
                Some(colon) => reference.split_at(last_slash + colon),
                None => (reference, ":latest"),
            }
        }
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{name}{suffix}")
}

fn hex_of(digest: &str) -> Result<&str, NodeError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| NodeError::Image(format!("unsupported digest {digest:?} (want sha256:<64 hex>)")))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn read_json(path: &Path) -> Result<Value, NodeError> {
    let text = fs::read(path).map_err(|e| NodeError::Image(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| NodeError::Image(format!("{}: {e}", path.display())))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, NodeError> {
        let root = root.into();
        for d in ["blobs/sha256", "rootfs", "images", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        Ok(ImageStore { root })
    }

    /// Scratch space on the store's filesystem (downloads land here before they are applied).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn refs(&self) -> BTreeMap<String, String> {
        fs::read(self.root.join("refs.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The image a pod's `image` field names, if it is in the store.
    pub fn resolve(&self, reference: &str) -> Option<(Image, PathBuf)> {
        let digest = self.refs().get(&normalize(reference)).cloned()?;
        let hex = hex_of(&digest).ok()?;
        let record: Image =
            serde_json::from_slice(&fs::read(self.root.join(format!("images/{hex}.json"))).ok()?).ok()?;
        let rootfs = self.root.join("rootfs").join(hex);
        rootfs.is_dir().then_some((record, rootfs))
    }

    /// Every stored reference with its manifest digest.
    pub fn list(&self) -> BTreeMap<String, String> {
        self.refs()
    }

    /// Copies `src` into the blob store, refusing it unless its sha256 is `digest`.
    fn verified_blob(&self, src: &Path, digest: &str) -> Result<PathBuf, NodeError> {
        let hex = hex_of(digest)?;
        let dest = self.root.join("blobs/sha256").join(hex);
        // Verified even when the store has it: a corrupt source is reported, not masked.
        let actual = sha256_file(src).map_err(|e| NodeError::Image(format!("blob {digest}: {e}")))?;
        if actual != hex {
            return Err(NodeError::Image(format!("blob {digest}: content has digest sha256:{actual}, refusing it")));
        }
        if dest.exists() {
            return Ok(dest);
        }
        let tmp = self.root.join("tmp").join(hex);
        fs::copy(src, &tmp)?;
        fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    /// Imports the image an OCI layout directory holds under `tag` (or its one image if the
    /// layout has a single manifest and `tag` is empty). Nothing is recorded unless every blob
    /// verifies and every layer applies.
    pub fn import_layout(&self, layout: &Path, tag: &str) -> Result<Image, NodeError> {
        let index = read_json(&layout.join("index.json"))?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let chosen = match manifests.as_slice() {
            [] => return Err(NodeError::Image(format!("{}: index.json lists no image", layout.display()))),
            [only] => only.clone(),
            many => many
                .iter()
                .find(|m| {
                    let name = m.pointer("/annotations/org.opencontainers.image.ref.name").and_then(Value::as_str);
                    name.is_some_and(|n| normalize(n) == normalize(tag) || tag.ends_with(&format!(":{n}")))
                })
                .cloned()
                .ok_or_else(|| {
                    NodeError::Image(format!("{}: no image named {tag:?} in index.json", layout.display()))
                })?,
        };
        let reference = if tag.is_empty() {
            chosen
                .pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                .map(normalize)
                .ok_or_else(|| NodeError::Image("the image has no ref.name annotation: give --tag".into()))?
        } else {
            normalize(tag)
        };
        let blob = |digest: &str| -> Result<PathBuf, NodeError> {
            let src = layout.join("blobs/sha256").join(hex_of(digest)?);
            self.verified_blob(&src, digest)
        };
        let manifest_digest = chosen["digest"].as_str().unwrap_or_default().to_string();
        let manifest = read_json(&blob(&manifest_digest)?)?;
        if manifest.get("manifests").is_some() {
            return Err(NodeError::Image(format!("{manifest_digest}: multi-platform indexes are not supported")));
        }
        let config = read_json(&blob(manifest["config"]["digest"].as_str().unwrap_or_default())?)?;
        let mut layers = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let media = layer["mediaType"].as_str().unwrap_or_default().to_string();
            layers.push((blob(digest)?, media));
        }
        self.store(reference, &manifest_digest, &config, &layers)
    }

    /// Applies verified layers into the image's rootfs and records the image under `reference`.
    pub fn store(
        &self,
        reference: String,
        manifest_digest: &str,
        config: &Value,
        layers: &[(PathBuf, String)],
    ) -> Result<Image, NodeError> {
        let hex = hex_of(manifest_digest)?.to_string();
        let rootfs = self.root.join("rootfs").join(&hex);
        if !rootfs.is_dir() {
            let staging = self.root.join("tmp").join(format!("rootfs-{hex}"));
            let _ = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging)?;
            for (path, media) in layers {
                apply_layer(path, media, &staging)
                    .map_err(|e| NodeError::Image(format!("layer {}: {e}", path.display())))?;
            }
            fs::rename(&staging, &rootfs)?;
        }
        let c = &config["config"];
        let image = Image {
            reference: reference.clone(),
            digest: manifest_digest.to_string(),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        };
        let record = self.root.join(format!("images/{hex}.json"));
        fs::write(&record, serde_json::to_vec(&image).map_err(|e| NodeError::Image(e.to_string()))?)?;
        let mut refs = self.refs();
        refs.insert(reference, manifest_digest.to_string());
        let tmp = self.root.join("tmp/refs.json");
        fs::write(&tmp, serde_json::to_vec_pretty(&refs).map_err(|e| NodeError::Image(e.to_string()))?)?;
        fs::rename(&tmp, self.root.join("refs.json"))?;
        Ok(image)
    }
}

fn open_layer(path: &Path, media: &str) -> std::io::Result<Box<dyn Read>> {
    let mut f = fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let gz = f.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    f.rewind()?;
    if gz || media.ends_with("+gzip") {
        Ok(Box::new(flate2::read::GzDecoder::new(f)))
    } else if media.ends_with("+zstd") {
        Err(std::io::Error::other(format!("layer media type {media} is not supported")))
    } else {
        Ok(Box::new(f))
    }
}

/// Applies one layer onto `dest`: first its whiteouts (`.wh.NAME` removes NAME,
/// `.wh..wh..opq` empties its directory of what lower layers put there), then its contents.
fn apply_layer(path: &Path, media: &str, dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(open_layer(path, media)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let rel = entry.path()?.into_owned();
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(target_name) = name.strip_prefix(".wh.") else { continue };
        let parent = safe_join(dest, rel.parent().unwrap_or(Path::new("")))?;
        if target_name == ".wh..opq" {
            if let Ok(children) = fs::read_dir(&parent) {
                for child in children.flatten() {
                    remove_any(&child.path())?;
                }
            }
        } else {
            remove_any(&parent.join(target_name))?;
        }
    }
    let mut archive = tar::Archive::new(open_layer(path, media)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        if rel.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".wh.")) {
            continue;
        }
        // A directory replacing a file (or the other way round) from a lower layer.
        if let Ok(existing) = fs::symlink_metadata(safe_join(dest, &rel)?) {
            let incoming_dir = entry.header().entry_type().is_dir();
            if existing.is_dir() != incoming_dir || existing.file_type().is_symlink() {
                remove_any(&safe_join(dest, &rel)?)?;
            }
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

/// `base/rel` with `rel` confined to `base` (no `..`, no absolute escape).
fn safe_join(base: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    let mut out = base.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => return Err(std::io::Error::other(format!("path {} leaves the layer", rel.display()))),
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(normalize("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(normalize("reg.io/a/b@sha256:ab"), "reg.io/a/b@sha256:ab");
    }

    fn layer(dir: &Path, name: &str, files: &[(&str, Option<&str>)]) -> PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        for (p, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(c) => {
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_cksum();
                    b.append_data(&mut h, p, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_cksum();
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
            }
        }
        b.finish().unwrap();
        path
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        fs::create_dir(&dest).unwrap();
        let l1 = layer(
            dir.path(),
            "l1.tar",
            &[("etc", None), ("etc/a", Some("1")), ("etc/b", Some("1")), ("opt", None), ("opt/x", Some("1"))],
        );
        let l2 = layer(
            dir.path(),
            "l2.tar",
            &[("etc/.wh.a", Some("")), ("opt/.wh..wh..opq", Some("")), ("opt/y", Some("2")), ("etc/b", Some("2"))],
        );
        apply_layer(&l1, "application/vnd.oci.image.layer.v1.tar", &dest).unwrap();
        apply_layer(&l2, "application/vnd.oci.image.layer.v1.tar", &dest).unwrap();
        assert!(!dest.join("etc/a").exists(), "whiteout must remove etc/a");
        assert_eq!(fs::read_to_string(dest.join("etc/b")).unwrap(), "2");
        assert!(!dest.join("opt/x").exists(), "opaque dir must hide opt/x");
        assert_eq!(fs::read_to_string(dest.join("opt/y")).unwrap(), "2");
        assert!(!dest.join("opt/.wh..wh..opq").exists());
    }

    #[test]
    fn a_blob_with_the_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("blob");
        fs::write(&src, b"hello").unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = store.verified_blob(&src, &wrong).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(fs::read_dir(dir.path().join("store/blobs/sha256")).unwrap().next().is_none());
    }
}
