//! Pulling images from an OCI distribution registry (Docker Registry HTTP API v2): HTTPS by
//! default, plain HTTP for registries marked insecure (`--insecure-registry`, e.g. one on
//! loopback); when the registry asks for credentials, the pod's (its imagePullSecrets') as Basic
//! auth or for a bearer token, else an anonymous bearer token; multi-platform indexes
//! resolved to linux/<this arch>; every blob verified against its digest before it is stored.

use crate::error::NodeError;
use crate::image::{Image, ImageStore};
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A parsed image reference: registry host, repository and tag or digest.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(image: &str) -> Reference {
        let full = crate::image::normalize(image);
        let (name, reference) = match full.split_once('@') {
            Some((n, d)) => (n.to_string(), d.to_string()),
            None => {
                let colon = full.rfind(':').expect("normalize adds a tag");
                (full[..colon].to_string(), full[colon + 1..].to_string())
            }
        };
        let (registry, repository) = name.split_once('/').expect("normalize adds a registry");
        let registry = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
        Reference { registry: registry.into(), repository: repository.into(), reference }
    }
}

/// A user name and password for a registry (from a pod's imagePullSecrets).
#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl Credential {
    fn basic(&self) -> String {
        use base64::Engine;
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// The credential a Docker config (`.dockerconfigjson`'s `{"auths": {…}}`, or the older
    /// `.dockercfg`'s map) holds for `registry`: an entry keyed by the host, with or without a
    /// scheme or path (`https://index.docker.io/v1/` stands for Docker Hub), giving `auth`
    /// (base64 of `user:password`) or `username` and `password`.
    pub fn from_docker_config(config: &Value, registry: &str) -> Option<Credential> {
        use base64::Engine;
        let entries = config.get("auths").unwrap_or(config).as_object()?;
        let host_of = |key: &str| {
            let host = key.split_once("://").map_or(key, |(_, rest)| rest);
            let host = host.split('/').next().unwrap_or_default();
            match host {
                "index.docker.io" | "docker.io" => "registry-1.docker.io".to_string(),
                h => h.to_string(),
            }
        };
        let entry = entries.iter().find(|(k, _)| host_of(k) == registry)?.1;
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
            let (username, password) =
                String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
            return Some(Credential { username, password });
        }
        Some(Credential {
            username: entry["username"].as_str()?.to_string(),
            password: entry["password"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// How requests of one pull authenticate: the credential it may use, and the Authorization
/// header the registry's challenge called for.
struct Auth {
    credential: Option<Credential>,
    header: Option<String>,
}

pub struct Puller {
    http: reqwest::Client,
    /// Registries reached over plain HTTP.
    pub insecure: Vec<String>,
}

fn err(image: &str, msg: impl std::fmt::Display) -> NodeError {
    NodeError::Image(format!("failed to pull image {image:?}: {msg}"))
}

/// The registry's own words for a failed request (`{"errors":[{"code","message"}]}`).
async fn registry_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let said = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
        let e = v["errors"].as_array()?.first()?.clone();
        Some(format!("{}: {}", e["code"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
    });
    format!("{status}{}", said.map(|s| format!(" ({s})")).unwrap_or_default())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

impl Puller {
    pub fn new(insecure: Vec<String>) -> Result<Puller, NodeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .map_err(|e| NodeError::Image(format!("http client: {e}")))?;
        Ok(Puller { http, insecure })
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure.iter().any(|i| i == &r.registry) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.registry, r.repository)
    }

    /// GET, answering the registry's challenge once: Basic with the credentials, or a bearer
    /// token (asked for with the credentials, if any).
    async fn get(&self, url: &str, accept: Option<&str>, auth: &mut Auth) -> Result<reqwest::Response, String> {
        for _ in 0..2 {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(h) = auth.header.as_ref() {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if resp.status() != StatusCode::UNAUTHORIZED || auth.header.is_some() {
                return Ok(resp);
            }
            let challenge =
                resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            auth.header = Some(match (&auth.credential, challenge.starts_with("Basic ")) {
                (Some(c), true) => c.basic(),
                (None, true) => return Ok(resp),
                (credential, false) => format!("Bearer {}", self.token(&challenge, credential.as_ref()).await?),
            });
        }
        Err("unauthorized".into())
    }

    async fn token(&self, challenge: &str, credential: Option<&Credential>) -> Result<String, String> {
        let params =
            challenge.strip_prefix("Bearer ").ok_or_else(|| format!("unsupported auth challenge {challenge:?}"))?;
        let mut realm = String::new();
        let mut query = Vec::new();
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else { continue };
            let v = v.trim_matches('"').to_string();
            if k == "realm" {
                realm = v;
            } else {
                query.push((k.to_string(), v));
            }
        }
        let mut req = self.http.get(&realm).query(&query);
        if let Some(c) = credential {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("token service: {}", registry_error(resp).await));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("token service: {e}"))?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(String::from)
            .ok_or_else(|| "token service sent no token".into())
    }

    /// Fetches a blob into the store's tmp dir, verifying its digest on the way.
    async fn blob(
        &self,
        store_tmp: &std::path::Path,
        base: &str,
        digest: &str,
        auth: &mut Auth,
    ) -> Result<PathBuf, String> {
        let resp = self.get(&format!("{base}/blobs/{digest}"), None, auth).await?;
        if !resp.status().is_success() {
            return Err(format!("blob {digest}: {}", registry_error(resp).await));
        }
        let bytes = resp.bytes().await.map_err(|e| format!("blob {digest}: {e}"))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(format!("blob {digest}: content has digest {actual}, refusing it"));
        }
        let path = store_tmp.join(format!("pull-{}", digest.trim_start_matches("sha256:")));
        tokio::fs::write(&path, &bytes).await.map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Pulls `image` into `store`, with `credential` if the registry asks for one.
    pub async fn pull(
        &self,
        store: &ImageStore,
        image: &str,
        credential: Option<Credential>,
    ) -> Result<Image, NodeError> {
        let r = Reference::parse(image);
        let base = self.base(&r);
        let mut auth = Auth { credential, header: None };
        let mut manifest_ref = r.reference.clone();
        let mut resolved = None;
        for _ in 0..2 {
            let resp = self
                .get(&format!("{base}/manifests/{manifest_ref}"), Some(MANIFEST_TYPES), &mut auth)
                .await
                .map_err(|e| err(image, e))?;
            if !resp.status().is_success() {
                return Err(err(image, registry_error(resp).await));
            }
            let bytes = resp.bytes().await.map_err(|e| err(image, e))?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if manifest_ref.starts_with("sha256:") && manifest_ref != digest {
                return Err(err(image, format!("manifest has digest {digest}, not {manifest_ref}")));
            }
            let m: Value = serde_json::from_slice(&bytes).map_err(|e| err(image, format!("manifest: {e}")))?;
            if let Some(list) = m["manifests"].as_array() {
                let pick =
                    list.iter().find(|d| d["platform"]["os"] == "linux" && d["platform"]["architecture"] == arch());
                manifest_ref = pick
                    .and_then(|d| d["digest"].as_str())
                    .ok_or_else(|| err(image, format!("no linux/{} image in the index", arch())))?
                    .to_string();
                continue;
            }
            resolved = Some((digest, m));
            break;
        }
        let (digest, manifest) = resolved.ok_or_else(|| err(image, "nested indexes are not supported"))?;
        let tmp = store.tmp_dir();
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        let config_path = self.blob(&tmp, &base, config_digest, &mut auth).await.map_err(|e| err(image, e))?;
        let config: Value =
            serde_json::from_slice(&std::fs::read(&config_path)?).map_err(|e| err(image, format!("config: {e}")))?;
        let _ = std::fs::remove_file(&config_path);
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().into_iter().flatten() {
            let d = l["digest"].as_str().unwrap_or_default();
            let path = self.blob(&tmp, &base, d, &mut auth).await.map_err(|e| err(image, e))?;
            layers.push((path, l["mediaType"].as_str().unwrap_or_default().to_string()));
        }
        let stored = store.store(crate::image::normalize(image), &digest, &config, &layers);
        for (p, _) in &layers {
            let _ = std::fs::remove_file(p);
        }
        stored
    }
}

impl Puller {
    /// Pushes the one image of an OCI layout directory to `target` (e.g.
    /// `127.0.0.1:5000/tools/busybox:test`): blobs the registry lacks, then the manifest.
    pub async fn push(&self, layout: &std::path::Path, target: &str) -> Result<String, NodeError> {
        let r = Reference::parse(target);
        let base = self.base(&r);
        let fail = |m: String| NodeError::Image(format!("pushing {target}: {m}"));
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json"))?).map_err(|e| fail(e.to_string()))?;
        let desc = index["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .cloned()
            .ok_or_else(|| fail("index.json lists no image".into()))?;
        let blob_path = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
        let manifest_digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let manifest_bytes = std::fs::read(blob_path(&manifest_digest))?;
        let manifest: Value = serde_json::from_slice(&manifest_bytes).map_err(|e| fail(e.to_string()))?;
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap_or_default().to_string()];
        digests.extend(
            manifest["layers"].as_array().into_iter().flatten().filter_map(|l| l["digest"].as_str().map(String::from)),
        );
        for d in &digests {
            let head = self.http.head(format!("{base}/blobs/{d}")).send().await.map_err(|e| fail(e.to_string()))?;
            if head.status().is_success() {
                continue;
            }
            let start =
                self.http.post(format!("{base}/blobs/uploads/")).send().await.map_err(|e| fail(e.to_string()))?;
            if start.status() != StatusCode::ACCEPTED {
                return Err(fail(format!("starting the upload of {d}: {}", registry_error(start).await)));
            }
            let location =
                start.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let url = if location.starts_with("http") {
                location
            } else {
                let scheme_host = base.split("/v2/").next().unwrap_or_default();
                format!("{scheme_host}{location}")
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let body = std::fs::read(blob_path(d))?;
            let put = self
                .http
                .put(format!("{url}{sep}digest={d}"))
                .body(body)
                .send()
                .await
                .map_err(|e| fail(e.to_string()))?;
            if put.status() != StatusCode::CREATED {
                return Err(fail(format!("uploading {d}: {}", registry_error(put).await)));
            }
        }
        let media = manifest["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
        let put = self
            .http
            .put(format!("{base}/manifests/{}", r.reference))
            .header("content-type", media)
            .body(manifest_bytes)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if put.status() != StatusCode::CREATED {
            return Err(fail(format!("manifest: {}", registry_error(put).await)));
        }
        Ok(manifest_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_tag() {
        let r = Reference::parse("127.0.0.1:5000/tools/busybox:test");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "tools/busybox", "test")
        );
        let r = Reference::parse("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("registry-1.docker.io", "library/busybox", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/app@{d}"));
        assert_eq!(r.reference, d);
    }

    #[test]
    fn docker_configs_give_the_credential_for_a_registry() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
            "127.0.0.1:5000": {"username": "alice", "password": "s3cret"},
        }});
        let hub = Credential { username: "hub".into(), password: "pw".into() };
        assert_eq!(Credential::from_docker_config(&config, "registry-1.docker.io"), Some(hub));
        let local = Credential::from_docker_config(&config, "127.0.0.1:5000").unwrap();
        assert_eq!((local.username.as_str(), local.basic().as_str()), ("alice", "Basic YWxpY2U6czNjcmV0"));
        assert_eq!(Credential::from_docker_config(&config, "quay.io"), None);
        // The older .dockercfg: the map itself.
        let old = serde_json::json!({"quay.io": {"auth": "aHViOnB3"}});
        assert!(Credential::from_docker_config(&old, "quay.io").is_some());
    }
}
