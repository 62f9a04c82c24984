//! What a pod's containers see besides their image: environment from ConfigMaps, Secrets and
//! the downward API, volume mounts (emptyDir, hostPath, claims, projected ConfigMaps and
//! Secrets, kept current while the pod runs).

use super::*;

impl Agent {
    /// Container env: every key of the `envFrom` ConfigMaps and Secrets (later sources win,
    /// keys that are not valid variable names skipped, as the kubelet does), then `env` over
    /// them: literal values, ConfigMap and Secret keys, the downward API fields and resources.
    pub(super) async fn resolve_env(
        &self,
        pod: &Value,
        spec: &skiff_proto::api::PodSpec,
        c: &Container,
        ip: Option<Ipv4Addr>,
    ) -> Result<Vec<(String, String)>, String> {
        let ns = meta(pod, "namespace");
        let mut out: Vec<(String, String)> = Vec::new();
        let set = |out: &mut Vec<(String, String)>, name: String, value: String| match out
            .iter_mut()
            .find(|(n, _)| *n == name)
        {
            Some(slot) => slot.1 = value,
            None => out.push((name, value)),
        };
        for from in &c.env_from {
            let (resource, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
                (Some(r), _) => ("configmaps", &r.name, r.optional.unwrap_or(false)),
                (None, Some(r)) => ("secrets", &r.name, r.optional.unwrap_or(false)),
                (None, None) => continue,
            };
            for (key, value) in self.all_keys(resource, ns, name, optional).await? {
                let var = format!("{}{key}", from.prefix);
                if skiff_proto::env::is_env_var_name(&var) {
                    set(&mut out, var, value);
                }
            }
        }
        for e in &c.env {
            let Some(from) = &e.value_from else {
                set(&mut out, e.name.clone(), e.value.clone());
                continue;
            };
            let value = if let Some(r) = &from.config_map_key_ref {
                self.key_of("configmaps", ns, &r.name, &r.key, r.optional.unwrap_or(false)).await?
            } else if let Some(r) = &from.secret_key_ref {
                self.key_of("secrets", ns, &r.name, &r.key, r.optional.unwrap_or(false)).await?
            } else if let Some(f) = &from.field_ref {
                let ip = Some(ip.map_or_else(|| self.config.node_ip.clone(), |a| a.to_string()));
                Some(self.field_of(pod, &f.field_path, ip).map_err(|why| format!("env {}: {why}", e.name))?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(self.resource_value(spec, &c.name, r).map_err(|why| format!("env {}: {why}", e.name))?)
            } else {
                None
            };
            if let Some(v) = value {
                set(&mut out, e.name.clone(), v);
            }
        }
        Ok(out)
    }

    /// A field of the pod (the downward API): its name, namespace, uid, one label or
    /// annotation (`metadata.labels['k']`), all of them (`key="value"` lines, volumes only),
    /// its node, service account, the node's address and (`ip`, env only) its own.
    fn field_of(&self, pod: &Value, path: &str, ip: Option<String>) -> Result<String, String> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let all = |m: &Value| {
            let mut lines: Vec<String> = m
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", serde_json::Value::String(text(v))))
                .collect();
            lines.sort();
            lines.join("\n")
        };
        Ok(match path {
            "metadata.name" => meta(pod, "name").to_string(),
            "metadata.namespace" => meta(pod, "namespace").to_string(),
            "metadata.uid" => meta(pod, "uid").to_string(),
            "metadata.labels" => all(&pod["metadata"]["labels"]),
            "metadata.annotations" => all(&pod["metadata"]["annotations"]),
            "spec.nodeName" => self.config.name.clone(),
            "spec.serviceAccountName" => text(&pod["spec"]["serviceAccountName"]),
            "status.hostIP" => self.config.node_ip.clone(),
            "status.podIP" => ip.ok_or("status.podIP is not available in a volume")?,
            p => {
                let key = |prefix: &str| p.strip_prefix(prefix).and_then(|k| k.strip_suffix("']"));
                match (key("metadata.labels['"), key("metadata.annotations['")) {
                    (Some(k), _) => text(&pod["metadata"]["labels"][k]),
                    (_, Some(k)) => text(&pod["metadata"]["annotations"][k]),
                    _ => return Err(format!("fieldRef {p:?} is not supported")),
                }
            }
        })
    }

    /// The files of downward API items: each a field of the pod or a container's resource.
    fn downward_files(
        &self,
        pod: &Value,
        spec: &skiff_proto::api::PodSpec,
        items: &[skiff_proto::api::DownwardApiVolumeFile],
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for item in items {
            let value = if let Some(f) = &item.field_ref {
                self.field_of(pod, &f.field_path, None)?
            } else if let Some(r) = &item.resource_field_ref {
                self.resource_value(spec, "", r)?
            } else {
                return Err(format!("downward API item {:?} names no field", item.path));
            };
            out.push((item.path.clone(), value.into_bytes()));
        }
        Ok(out)
    }

    /// The keys of a ConfigMap's or Secret's data as files: all of them, or the `items` named
    /// (key to path); nothing when it is missing and `optional`.
    async fn keys_as_files(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        items: &[skiff_proto::api::KeyToPath],
        optional: bool,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let keys = self.all_keys(resource, ns, name, optional).await?;
        if items.is_empty() {
            return Ok(keys.into_iter().map(|(k, v)| (k, v.into_bytes())).collect());
        }
        let mut out = Vec::new();
        for item in items {
            match keys.iter().find(|(k, _)| *k == item.key) {
                Some((_, v)) => out.push((item.path.clone(), v.clone().into_bytes())),
                None if optional => {}
                None => return Err(format!("{resource} \"{name}\": no key {:?}", item.key)),
            }
        }
        Ok(out)
    }

    /// A container's limit or request (`limits.cpu`, `requests.memory`, …) in units of the
    /// divisor, cpu rounded up; a limit not set is the node's allocatable, as the kubelet gives.
    fn resource_value(
        &self,
        spec: &skiff_proto::api::PodSpec,
        this: &str,
        r: &skiff_proto::api::ResourceFieldSelector,
    ) -> Result<String, String> {
        let name = if r.container_name.is_empty() { this } else { r.container_name.as_str() };
        let c = spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .find(|c| c.name == name)
            .ok_or(format!("resourceFieldRef names container {name:?}, which the pod does not have"))?;
        let (which, resource) =
            r.resource.split_once('.').ok_or(format!("resource {:?} is not supported", r.resource))?;
        let resources = c.resources.clone().unwrap_or_default();
        let set = match which {
            "limits" => resources.limits.get(resource),
            "requests" => resources.requests.get(resource),
            _ => return Err(format!("resource {:?} is not supported", r.resource)),
        };
        let fallback = crate::heartbeat::capacity(&self.config)[resource].as_str().map(String::from);
        let amount = match (set, which) {
            (Some(q), _) => q.clone(),
            (None, "requests") if resource == "cpu" || resource == "memory" => "0".into(),
            (None, _) => fallback.ok_or(format!("resource {:?} is not supported", r.resource))?,
        };
        let amount = skiff_proto::quantity::parse_quantity(&amount).ok_or(format!("{amount:?} is not a quantity"))?;
        let divisor = if r.divisor.is_empty() { "1" } else { r.divisor.as_str() };
        let divisor = skiff_proto::quantity::parse_quantity(divisor)
            .filter(|d| *d > 0)
            .ok_or(format!("divisor {divisor:?} is not a positive quantity"))?;
        // Rounded up, so a container with 250m of cpu reads 1 (the kubelet's ceiling).
        Ok(((amount + divisor - 1) / divisor).to_string())
    }

    /// Every key of a ConfigMap's or Secret's data, decoded.
    pub(super) async fn all_keys(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<Vec<(String, String)>, String> {
        let secret = resource == "secrets";
        let kind = if secret { "secret" } else { "configmap" };
        let obj = match self.client.get(resource, ns, name).await {
            Ok(o) => o,
            Err(s) if s.code() == tonic::Code::NotFound && optional => return Ok(Vec::new()),
            Err(s) if s.code() == tonic::Code::NotFound => return Err(format!("{kind} \"{name}\" not found")),
            Err(s) => return Err(format!("{kind} \"{name}\": {}", s.message())),
        };
        let mut out = Vec::new();
        for (key, value) in obj["data"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let text = if secret {
                let bytes = decode_base64(text).ok_or(format!("secret \"{name}\": key {key} is not base64"))?;
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                text.to_string()
            };
            out.push((key.clone(), text));
        }
        Ok(out)
    }

    /// One key of a ConfigMap's or Secret's data, decoded; `None` when it (or the object) is
    /// missing and `optional`.
    pub(super) async fn key_of(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, String> {
        let keys = self.all_keys(resource, ns, name, optional).await?;
        match keys.into_iter().find(|(k, _)| k == key) {
            Some((_, v)) => Ok(Some(v)),
            None if optional => Ok(None),
            None => {
                let kind = if resource == "secrets" { "secret" } else { "configmap" };
                Err(format!("couldn't find key {key} in {kind} {ns}/{name}"))
            }
        }
    }

    /// Bind mounts for the container's volumeMounts plus the pod's /etc/hosts and /etc/hostname.
    pub(super) async fn mounts(
        &self,
        pod: &Value,
        spec: &skiff_proto::api::PodSpec,
        c: &Container,
        dir: &Path,
    ) -> Result<Vec<Mount>, String> {
        let ns = meta(pod, "namespace");
        let mut out = Vec::new();
        if !spec.host_network {
            for f in ["hosts", "hostname"] {
                out.push(Mount { destination: format!("/etc/{f}"), source: dir.join("etc").join(f), read_only: false });
            }
        }
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        let resolv = resolv_conf(spec, ns, &self.network.gateway().to_string(), &self.config.cluster_domain);
        std::fs::write(etc.join("resolv.conf"), resolv).map_err(|e| format!("resolv.conf: {e}"))?;
        out.push(Mount { destination: "/etc/resolv.conf".into(), source: etc.join("resolv.conf"), read_only: false });
        // The service account's directory, as Kubernetes mounts it into every pod.
        let sa = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa).map_err(|e| format!("{}: {e}", sa.display()))?;
        std::fs::write(sa.join("namespace"), ns).map_err(|e| format!("serviceaccount namespace: {e}"))?;
        let ca = self.client.config.ca.as_deref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
        std::fs::write(sa.join("ca.crt"), ca).map_err(|e| format!("serviceaccount ca.crt: {e}"))?;
        // The token, asked for once per pod: it is bound to the pod and lasts as long as it.
        // Static pods get none (as in Kubernetes: their mirror is not theirs to act through).
        let token = sa.join("token");
        let mirror = pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some();
        if spec.automount_service_account_token != Some(false) && !mirror && !token.exists() {
            let account = if spec.service_account_name.is_empty() { "default" } else { &spec.service_account_name };
            let issued = self
                .client
                .service_account_token(ns, account, meta(pod, "name"), meta(pod, "uid"))
                .await
                .map_err(|s| format!("service account {account:?} token: {}", s.message()))?;
            let tmp = sa.join(".token.tmp");
            std::fs::write(&tmp, issued)
                .and_then(|_| std::fs::rename(&tmp, &token))
                .map_err(|e| format!("serviceaccount token: {e}"))?;
        }
        out.push(Mount {
            destination: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            source: sa.clone(),
            read_only: true,
        });
        for vm in &c.volume_mounts {
            let v = spec
                .volumes
                .iter()
                .find(|v| v.name == vm.name)
                .ok_or_else(|| format!("volumeMount {:?}: no volume of that name in the pod", vm.name))?;
            let source = if v.empty_dir.is_some() {
                let d = dir.join("volumes").join(&v.name);
                std::fs::create_dir_all(&d).map_err(|e| format!("emptyDir {}: {e}", v.name))?;
                d
            } else if let Some(h) = &v.host_path {
                let p = PathBuf::from(&h.path);
                if matches!(h.r#type.as_str(), "DirectoryOrCreate") {
                    std::fs::create_dir_all(&p).map_err(|e| format!("hostPath {}: {e}", h.path))?;
                } else if !p.exists() && !h.r#type.is_empty() {
                    return Err(format!("hostPath {}: does not exist (type {})", h.path, h.r#type));
                }
                p
            } else if let Some(cm) = &v.config_map {
                self.project(dir, &v.name, "configmaps", ns, &cm.name, cm.optional.unwrap_or(false)).await?
            } else if let Some(s) = &v.secret {
                self.project(dir, &v.name, "secrets", ns, &s.secret_name, s.optional.unwrap_or(false)).await?
            } else if let Some(claim) = &v.persistent_volume_claim {
                self.claim_path(ns, &claim.claim_name).await?
            } else if let Some(d) = &v.downward_api {
                let files = self.downward_files(pod, spec, &d.items)?;
                write_files(&dir.join("volumes").join(&v.name), files)?
            } else if let Some(p) = &v.projected {
                let mut files = Vec::new();
                for source in &p.sources {
                    if let Some(cm) = &source.config_map {
                        let optional = cm.optional.unwrap_or(false);
                        files.extend(self.keys_as_files("configmaps", ns, &cm.name, &cm.items, optional).await?);
                    }
                    if let Some(s) = &source.secret {
                        let optional = s.optional.unwrap_or(false);
                        files.extend(self.keys_as_files("secrets", ns, &s.name, &s.items, optional).await?);
                    }
                    if let Some(d) = &source.downward_api {
                        files.extend(self.downward_files(pod, spec, &d.items)?);
                    }
                    if let Some(t) = &source.service_account_token {
                        // The pod's own bound token (issued above), whatever audience is asked.
                        let token = std::fs::read(sa.join("token")).map_err(|e| format!("serviceAccountToken: {e}"))?;
                        files.push((t.path.clone(), token));
                    }
                }
                write_files(&dir.join("volumes").join(&v.name), files)?
            } else {
                let kind = unmountable_type(v).unwrap_or("this");
                return Err(format!(
                    "{MOUNT_FAILED} for volume {:?} : {kind} volumes cannot be mounted on this node",
                    v.name
                ));
            };
            let source = if vm.sub_path.is_empty() { source } else { source.join(&vm.sub_path) };
            out.push(Mount { destination: vm.mount_path.clone(), source, read_only: vm.read_only });
        }
        Ok(out)
    }

    /// The host directory behind a bound PersistentVolumeClaim (a hostPath PersistentVolume).
    pub(super) async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let pvc = self
            .client
            .get("persistentvolumeclaims", ns, claim)
            .await
            .map_err(|s| format!("persistentvolumeclaim \"{claim}\": {}", s.message()))?;
        let volume = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
        if volume.is_empty() {
            return Err(format!("persistentvolumeclaim \"{claim}\" is not bound to a volume"));
        }
        let pv = self
            .client
            .get("persistentvolumes", "", volume)
            .await
            .map_err(|s| format!("persistentvolume \"{volume}\": {}", s.message()))?;
        if let Some(path) = pv["spec"]["hostPath"]["path"].as_str() {
            std::fs::create_dir_all(path).map_err(|e| format!("persistentvolume \"{volume}\": {path}: {e}"))?;
            return Ok(PathBuf::from(path));
        }
        if pv["spec"]["nfs"].is_object() {
            return Err(format!("persistentvolume \"{volume}\": nfs volumes are not supported on this node yet"));
        }
        Err(format!("persistentvolume \"{volume}\" has no hostPath"))
    }

    /// Re-projects a running pod's ConfigMap and Secret volumes (every 5 s), so files follow
    /// their objects as the kubelet's do.
    pub(super) async fn refresh_projections(&mut self, pod_json: &Value, spec: &skiff_proto::api::PodSpec, dir: &Path) {
        let uid = meta(pod_json, "uid").to_string();
        if self.projected.get(&uid).is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        self.projected.insert(uid, Instant::now());
        let ns = meta(pod_json, "namespace");
        for v in &spec.volumes {
            let r = if let Some(cm) = &v.config_map {
                self.project(dir, &v.name, "configmaps", ns, &cm.name, true).await
            } else if let Some(s) = &v.secret {
                self.project(dir, &v.name, "secrets", ns, &s.secret_name, true).await
            } else {
                continue;
            };
            if let Err(e) = r {
                tracing::debug!("pod {}: refreshing volume {}: {e}", meta(pod_json, "name"), v.name);
            }
        }
    }

    /// Writes a ConfigMap's or Secret's keys as files under the pod's volume directory.
    pub(super) async fn project(
        &self,
        dir: &Path,
        volume: &str,
        resource: &str,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<PathBuf, String> {
        let files = self.keys_as_files(resource, ns, name, &[], optional).await;
        files
            .and_then(|files| write_files(&dir.join("volumes").join(volume), files))
            .map_err(|e| format!("volume {volume}: {e}"))
    }
}

/// How a mount error starts, as the kubelet words it: the pod waits in ContainerCreating and a
/// FailedMount event says why.
pub(super) const MOUNT_FAILED: &str = "MountVolume.SetUp failed";

/// The volume type a node here cannot mount that `v` names (the in-tree drivers, CSI).
fn unmountable_type(v: &skiff_proto::api::Volume) -> Option<&'static str> {
    let raw = [
        ("gcePersistentDisk", &v.gce_persistent_disk),
        ("awsElasticBlockStore", &v.aws_elastic_block_store),
        ("gitRepo", &v.git_repo),
        ("iscsi", &v.iscsi),
        ("glusterfs", &v.glusterfs),
        ("rbd", &v.rbd),
        ("flexVolume", &v.flex_volume),
        ("cinder", &v.cinder),
        ("cephfs", &v.cephfs),
        ("flocker", &v.flocker),
        ("fc", &v.fc),
        ("azureFile", &v.azure_file),
        ("vsphereVolume", &v.vsphere_volume),
        ("quobyte", &v.quobyte),
        ("azureDisk", &v.azure_disk),
        ("photonPersistentDisk", &v.photon_persistent_disk),
        ("portworxVolume", &v.portworx_volume),
        ("scaleIO", &v.scale_io),
        ("storageos", &v.storageos),
        ("csi", &v.csi),
        ("ephemeral", &v.ephemeral),
        ("image", &v.image),
    ];
    if let Some((name, _)) = raw.iter().find(|(_, set)| !set.is_empty()) {
        return Some(name);
    }
    if v.nfs.is_some() {
        return Some("nfs");
    }
    None
}

/// Writes `files` (relative paths, subdirectories allowed) under `d`, each replaced atomically;
/// a path that would leave `d` is refused.
fn write_files(d: &Path, files: Vec<(String, Vec<u8>)>) -> Result<PathBuf, String> {
    std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    for (path, bytes) in files {
        let rel = Path::new(&path);
        let inside = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if path.is_empty() || !inside {
            return Err(format!("{MOUNT_FAILED}: path {path:?} must be relative and may not contain '..'"));
        }
        let target = d.join(rel);
        if std::fs::read(&target).is_ok_and(|old| old == bytes) {
            continue;
        }
        let parent = target.parent().unwrap_or(d);
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = parent.join(format!(".{}.tmp", target.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &target))
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(d.to_path_buf())
}
