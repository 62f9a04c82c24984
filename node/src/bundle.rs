//! Pure translation of a pod's container into an OCI runtime spec (`config.json`), the way
//! Kubernetes' container runtimes do it: command/args over the image's Entrypoint/Cmd, env
//! layered over the image's, requests and limits as cgroup settings, the pod's shared
//! namespaces joined by path, volumes as bind mounts.

use crate::image::Image;
use serde_json::{json, Value};
use skiff_proto::api::{Container, PodSpec};
use skiff_proto::quantity;
use std::path::{Path, PathBuf};

/// The pod-level facts a container's spec is built from.
#[derive(Clone, Debug, Default)]
pub struct PodContext {
    /// Namespace files the pod's containers join (`None`: the host's, as with hostNetwork).
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// cgroup path of the container, relative to each controller's root.
    pub cgroups_path: String,
    pub pids_limit: i64,
}

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub destination: String,
    pub source: PathBuf,
    pub read_only: bool,
}

/// Kubernetes' rule: `command` replaces the Entrypoint (and drops Cmd), `args` replaces Cmd.
pub fn process_args(c: &Container, image: &Image) -> Vec<String> {
    match (c.command.is_empty(), c.args.is_empty()) {
        (false, _) => c.command.iter().chain(&c.args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&c.args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's env, then the container's (`resolved`, already looked up) overriding by name.
pub fn process_env(image: &Image, resolved: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    set("HOSTNAME", hostname);
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    for (k, v) in resolved {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The container with the pod's securityContext user settings (`runAsUser`, `runAsGroup`,
/// `runAsNonRoot`) where its own leave them unset, as the kubelet applies them.
pub fn with_pod_security(spec: &PodSpec, c: &Container) -> Container {
    let mut c = c.clone();
    if let Some(pod) = &spec.security_context {
        let sc = c.security_context.get_or_insert_with(Default::default);
        sc.run_as_user = sc.run_as_user.or(pod.run_as_user);
        sc.run_as_group = sc.run_as_group.or(pod.run_as_group);
        sc.run_as_non_root = sc.run_as_non_root.or(pod.run_as_non_root);
    }
    c
}

/// The kubelet's `runAsNonRoot` check: a container that must not run as root may not start
/// as uid 0, nor as an image user that is a name (it cannot be verified) or root. `pod` is
/// the pod as the kubelet names it in the message (`name_namespace(uid)`).
pub fn check_non_root(c: &Container, image: &Image, pod: &str) -> Result<(), String> {
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.run_as_non_root != Some(true) {
        return Ok(());
    }
    match sc.run_as_user {
        Some(0) => Err(format!("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {})", c.name)),
        Some(_) => Ok(()),
        None => {
            let user = image.user.split(':').next().unwrap_or_default();
            match user.parse::<u32>() {
                Ok(uid) if uid > 0 => Ok(()),
                Err(_) if !user.is_empty() => Err(format!(
                    "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is \
                     non-root (pod: {pod:?}, container: {})",
                    c.name
                )),
                _ => Err(format!(
                    "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {})",
                    c.name
                )),
            }
        }
    }
}

/// uid and gid: the container's securityContext, else the image's `User` (numeric, or a name
/// looked up in the image's /etc/passwd), else root.
pub fn user(c: &Container, image: &Image, rootfs: &Path) -> Result<(u32, u32), String> {
    let sc = c.security_context.as_ref();
    if let Some(uid) = sc.and_then(|s| s.run_as_user) {
        let gid = sc.and_then(|s| s.run_as_group).unwrap_or(uid);
        return Ok((uid as u32, gid as u32));
    }
    if image.user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = image.user.split_once(':').map_or((image.user.as_str(), None), |(u, g)| (u, Some(g)));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && f[0] == u);
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| format!("user {u:?} of image {} is not in its /etc/passwd", image.reference))?,
    };
    let gid = match g {
        Some(g) => g.parse().map_err(|_| format!("group {g:?} of image {} is not numeric", image.reference))?,
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(uid),
    };
    Ok((uid, gid))
}

fn millis(map: &std::collections::BTreeMap<String, String>, key: &str) -> Option<i64> {
    map.get(key).and_then(|q| quantity::parse_quantity(q)).map(|m| m as i64)
}

/// cgroup settings from requests and limits: cpu shares from the cpu request (1 cpu = 1024),
/// cfs quota from the cpu limit, memory limit, and the node's pid limit.
pub fn resources(c: &Container, pids_limit: i64) -> Value {
    let empty = Default::default();
    let r = c.resources.as_ref();
    let limits = r.map_or(&empty, |r| &r.limits);
    let requests = r.map_or(&empty, |r| &r.requests);
    let mut res = json!({ "pids": { "limit": pids_limit } });
    // Kubernetes defaults a missing request to the limit.
    let cpu_request = millis(requests, "cpu").or_else(|| millis(limits, "cpu"));
    let shares = cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2));
    res["cpu"] = json!({ "shares": shares });
    if let Some(limit) = millis(limits, "cpu") {
        res["cpu"]["period"] = json!(100_000);
        res["cpu"]["quota"] = json!((limit * 100).max(1000));
    }
    if let Some(mem) = millis(limits, "memory") {
        let bytes = mem / 1000;
        // No swap beyond the limit, so the limit is what the OOM killer enforces.
        res["memory"] = json!({ "limit": bytes, "swap": bytes });
    }
    res
}

/// containerd's default capability set, less `CAP_NET_RAW`: raw sockets let a pod forge
/// packets (ARP and DNS spoofing, the localnet attack) and no ordinary workload needs them;
/// a pod that does (ping) adds NET_RAW in its securityContext.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn capabilities(c: &Container) -> Vec<String> {
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    if let Some(sc_caps) = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref()) {
        let name =
            |s: &String| if s.starts_with("CAP_") { s.to_uppercase() } else { format!("CAP_{}", s.to_uppercase()) };
        let drop: Vec<String> = sc_caps.drop.iter().map(name).collect();
        if drop.iter().any(|d| d == "CAP_ALL") {
            caps.clear();
        }
        caps.retain(|c| !drop.contains(c));
        for add in sc_caps.add.iter().map(name) {
            if !caps.contains(&add) {
                caps.push(add);
            }
        }
    }
    caps
}

/// The complete OCI runtime spec of one container.
#[allow(clippy::too_many_arguments)]
pub fn spec(
    c: &Container,
    image: &Image,
    rootfs: &Path,
    env: &[(String, String)],
    hostname: &str,
    mounts: &[Mount],
    pod: &PodContext,
) -> Result<Value, String> {
    let args = process_args(c, image);
    if args.is_empty() {
        return Err(format!(
            "container {}: no command: the image {} has no Entrypoint or Cmd",
            c.name, image.reference
        ));
    }
    let (uid, gid) = user(c, image, rootfs)?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".into()
    };
    let caps = capabilities(c);
    let mut all_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in mounts {
        all_mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", if m.read_only { "ro" } else { "rw" }],
        }));
    }
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (kind, path) in [("network", &pod.net_ns), ("ipc", &pod.ipc_ns), ("uts", &pod.uts_ns)] {
        if let Some(p) = path {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    }
    let read_only_root = c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(image, env, hostname),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": c.security_context.as_ref().and_then(|s| s.allow_privilege_escalation) == Some(false),
        },
        "root": {"path": rootfs, "readonly": read_only_root},
        "mounts": all_mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": pod.cgroups_path,
            "resources": resources(c, pod.pids_limit),
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::ResourceRequirements;

    fn image() -> Image {
        Image {
            reference: "docker.io/library/busybox:latest".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let mut c = Container::default();
        assert_eq!(process_args(&c, &image()), ["/entry", "sh"]);
        c.args = vec!["-c".into(), "x".into()];
        assert_eq!(process_args(&c, &image()), ["/entry", "-c", "x"]);
        c.command = vec!["echo".into()];
        assert_eq!(process_args(&c, &image()), ["echo", "-c", "x"]);
    }

    #[test]
    fn container_env_overrides_the_images() {
        let env = process_env(&image(), &[("A".into(), "pod".into()), ("B".into(), "1".into())], "web-0");
        assert_eq!(env, ["PATH=/bin", "HOSTNAME=web-0", "A=pod", "B=1"]);
    }

    #[test]
    fn requests_and_limits_become_cgroup_settings() {
        let c = Container {
            resources: Some(ResourceRequirements {
                requests: [("cpu".to_string(), "250m".to_string())].into(),
                limits: [("cpu".to_string(), "500m".to_string()), ("memory".to_string(), "32Mi".to_string())].into(),
            }),
            ..Default::default()
        };
        let r = resources(&c, 100);
        assert_eq!(r["cpu"]["shares"], 256);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["memory"]["limit"], 32 * 1024 * 1024);
        assert_eq!(r["pids"]["limit"], 100);
        assert_eq!(resources(&Container::default(), 100)["cpu"]["shares"], 2);
    }

    #[test]
    fn the_spec_deserialises_as_an_oci_runtime_spec() {
        let c = Container { name: "app".into(), ..Default::default() };
        let pod = PodContext {
            net_ns: Some("/run/netns/x".into()),
            cgroups_path: "/skiff/p/app".into(),
            ..Default::default()
        };
        let v = spec(&c, &image(), Path::new("/tmp/rootfs"), &[], "p", &[], &pod).unwrap();
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        assert_eq!(parsed.process().as_ref().unwrap().args().as_ref().unwrap(), &["/entry", "sh"]);
    }

    #[test]
    fn run_as_non_root_refuses_root_and_unverifiable_users_in_the_kubelet_s_words() {
        let spec = |pod_sc: serde_json::Value, c_sc: serde_json::Value| -> (PodSpec, Container) {
            let spec: PodSpec = serde_json::from_value(
                json!({"securityContext": pod_sc, "containers": [{"name": "app", "securityContext": c_sc}]}),
            )
            .unwrap();
            let c = spec.containers[0].clone();
            (spec, c)
        };
        let check = |pod_sc, c_sc, user: &str| {
            let (spec, c) = spec(pod_sc, c_sc);
            check_non_root(&with_pod_security(&spec, &c), &Image { user: user.into(), ..image() }, "web_default(u1)")
        };
        // The pod's setting applies to a container that sets none; the container's wins.
        assert_eq!(
            check(json!({"runAsNonRoot": true}), json!({}), ""),
            Err("container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: app)"
                .into())
        );
        assert_eq!(check(json!({"runAsNonRoot": true}), json!({"runAsNonRoot": false}), ""), Ok(()));
        assert_eq!(check(json!({"runAsNonRoot": true}), json!({}), "1000:1000"), Ok(()));
        assert_eq!(check(json!({"runAsNonRoot": true, "runAsUser": 1000}), json!({}), ""), Ok(()));
        assert_eq!(
            check(json!({"runAsNonRoot": true}), json!({"runAsUser": 0}), "1000"),
            Err("container's runAsUser breaks non-root policy (pod: \"web_default(u1)\", container: app)".into())
        );
        assert_eq!(
            check(json!({}), json!({"runAsNonRoot": true}), "nobody"),
            Err("container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: \"web_default(u1)\", container: app)".into())
        );
        assert_eq!(check(json!({}), json!({}), ""), Ok(()));
        // The pod's user is the container's when it names none.
        let (spec, c) = spec(json!({"runAsUser": 1000, "runAsGroup": 2000}), json!({}));
        let merged = with_pod_security(&spec, &c);
        assert_eq!(user(&merged, &image(), Path::new("/nonexistent")), Ok((1000, 2000)));
    }
}
