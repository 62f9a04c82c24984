//! Container probes: startup, liveness and readiness, each an exec (run inside the container's
//! namespaces with `nsenter`), an httpGet (HTTP/1.1 to the pod IP; 200–399 is success) or a
//! tcpSocket (a connect), with Kubernetes' timing fields. One prober task per running
//! container run; it stops when that run ends.
//!
//! Semantics as in the kubelet: until the startup probe succeeds the others do not run; a
//! startup or liveness probe failing `failureThreshold` times in a row kills the container
//! (SIGTERM, SIGKILL after the grace period) so its restart policy applies; readiness drives
//! the container's `ready` and so the pod's Ready condition.

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`), in plaintext to the pod IP.
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Result<u16, String> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("port {n} is out of range"));
    }
    let name = v.as_str().ok_or("port is missing")?;
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("port {name:?} is not a named port of the container"))
}

/// Parses a probe of the container JSON (`livenessProbe` etc.).
pub fn parse(probe: &Value, container: &Value) -> Result<Probe, String> {
    let secs = |k: &str, default: u64| Duration::from_secs(probe[k].as_u64().unwrap_or(default));
    let action = if let Some(cmd) = probe["exec"]["command"].as_array() {
        let cmd: Vec<String> = cmd.iter().filter_map(|c| c.as_str().map(String::from)).collect();
        if cmd.is_empty() {
            return Err("exec.command is empty".into());
        }
        Action::Exec(cmd)
    } else if probe["httpGet"].is_object() {
        let h = &probe["httpGet"];
        if h["scheme"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            return Err("httpGet scheme HTTPS is not supported".into());
        }
        Action::Http {
            host: h["host"].as_str().filter(|s| !s.is_empty()).map(String::from),
            port: port(&h["port"], container)?,
            path: h["path"].as_str().filter(|s| !s.is_empty()).unwrap_or("/").to_string(),
            headers: h["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| Some((x["name"].as_str()?.to_string(), x["value"].as_str()?.to_string())))
                .collect(),
        }
    } else if probe["tcpSocket"].is_object() {
        let t = &probe["tcpSocket"];
        Action::Tcp {
            host: t["host"].as_str().filter(|s| !s.is_empty()).map(String::from),
            port: port(&t["port"], container)?,
        }
    } else if probe["grpc"].is_object() {
        let g = &probe["grpc"];
        Action::Grpc {
            port: g["port"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|p| *p > 0)
                .ok_or("grpc.port is out of range")?,
            service: g["service"].as_str().unwrap_or_default().to_string(),
        }
    } else {
        return Err("a probe needs exec, httpGet, tcpSocket or grpc".into());
    };
    Ok(Probe {
        action,
        initial_delay: secs("initialDelaySeconds", 0),
        period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
        timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
        success_threshold: probe["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
        failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
    })
}

/// How long a postStart hook may run before it counts as failed.
const POST_START_LIMIT: Duration = Duration::from_secs(120);

/// A lifecycle hook (`postStart`, `preStop`): a probe's action run once, or a sleep.
#[derive(Clone, Debug, PartialEq)]
pub enum Hook {
    Action(Action),
    Sleep(Duration),
}

/// Parses a lifecycle handler of the container JSON (`lifecycle.preStop`).
pub fn parse_hook(handler: &Value, container: &Value) -> Result<Hook, String> {
    if let Some(seconds) = handler["sleep"]["seconds"].as_u64() {
        return Ok(Hook::Sleep(Duration::from_secs(seconds)));
    }
    if handler["grpc"].is_object() {
        return Err("a lifecycle hook needs exec, httpGet, tcpSocket or sleep".into());
    }
    parse(handler, container).map(|p| Hook::Action(p.action)).map_err(|e| {
        e.replace(
            "a probe needs exec, httpGet, tcpSocket or grpc",
            "a lifecycle hook needs exec, httpGet, tcpSocket or sleep",
        )
    })
}

/// Runs a hook once against a container (init `pid`, pod `ip`), for at most `limit`.
pub async fn run_hook(hook: &Hook, pid: i32, ip: &str, limit: Duration) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        Hook::Action(action) => {
            let once = Probe {
                action: action.clone(),
                initial_delay: Duration::ZERO,
                period: Duration::ZERO,
                timeout: limit.max(Duration::from_secs(1)),
                success_threshold: 1,
                failure_threshold: 1,
            };
            run_once(&once, pid, ip).await
        }
    }
}

/// Runs a probe once against a container whose init has host `pid` and whose pod has `ip`.
pub async fn run_once(probe: &Probe, pid: i32, ip: &str) -> Result<(), String> {
    let work = async {
        match &probe.action {
            Action::Exec(cmd) => {
                let out = tokio::process::Command::new("nsenter")
                    .arg("-t")
                    .arg(pid.to_string())
                    .args(["-m", "-u", "-i", "-n", "-p", "--"])
                    .args(cmd)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| format!("exec {cmd:?}: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    let said =
                        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                    Err(format!("exec {cmd:?} exited {}: {}", out.status.code().unwrap_or(-1), said.trim()))
                }
            }
            Action::Tcp { host, port } => {
                let addr = format!("{}:{port}", host.as_deref().unwrap_or(ip));
                tokio::net::TcpStream::connect(&addr).await.map(|_| ()).map_err(|e| format!("dial tcp {addr}: {e}"))
            }
            Action::Grpc { port, service } => grpc_check(ip, *port, service, probe.timeout).await,
            Action::Http { host, port, path, headers } => {
                let target = host.as_deref().unwrap_or(ip);
                let addr = format!("{target}:{port}");
                let mut s = tokio::net::TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
                let mut req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff-probe/1.0\r\nConnection: close\r\n"
                );
                for (k, v) in headers {
                    req += &format!("{k}: {v}\r\n");
                }
                req += "\r\n";
                s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                let mut head = vec![0u8; 64];
                let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
                let line = String::from_utf8_lossy(&head[..n]).into_owned();
                let code: u16 =
                    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not an HTTP response")?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
        }
    };
    match tokio::time::timeout(probe.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", probe.timeout.as_secs())),
    }
}

/// One health check over gRPC, judged and worded as the kubelet's gRPC prober does.
async fn grpc_check(ip: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let target = format!("{ip}:{port}");
    let within = timeout.as_secs();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("invalid target {target:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("timeout: failed to connect service {target:?} within {within}s: {e}"))?;
    let request = HealthCheckRequest { service: service.to_string() };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("service unhealthy (responded with {:?})", other.as_str_name())),
        },
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Err(s) => Err(format!("error: health rpc probe failed: {}", s.message())),
    }
}

/// What the probers found, per container run directory.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Readiness (true when there is no readiness probe).
    pub ready: bool,
    /// Startup done (true when there is no startup probe).
    pub started: bool,
}

pub type Shared = Arc<Mutex<HashMap<PathBuf, Results>>>;

/// The probes of one container run.
pub struct Prober {
    pub run_dir: PathBuf,
    pub pid: i32,
    pub ip: String,
    pub started_at: std::time::Instant,
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    /// The container's postStart hook: run first; the container is neither started nor ready
    /// until it succeeds, and is killed (to restart by its policy) if it fails.
    pub post_start: Option<Hook>,
    pub grace: Duration,
    pub results: Shared,
    /// Called with (reason, message) for events: Unhealthy, Killing.
    pub event: Box<dyn Fn(&'static str, String) + Send + Sync>,
}

struct Counter {
    ok: u32,
    bad: u32,
    next: std::time::Instant,
}

impl Counter {
    fn new(p: &Probe, from: std::time::Instant) -> Counter {
        Counter { ok: 0, bad: 0, next: from + p.initial_delay }
    }
    fn record(&mut self, ok: bool) {
        if ok {
            self.ok += 1;
            self.bad = 0;
        } else {
            self.bad += 1;
            self.ok = 0;
        }
    }
}

impl Prober {
    fn set(&self, f: impl FnOnce(&mut Results)) {
        if let Ok(mut m) = self.results.lock() {
            f(m.entry(self.run_dir.clone()).or_default());
        }
    }

    fn alive(&self) -> bool {
        !self.run_dir.join("exit.json").exists() && std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    async fn kill(&self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.alive() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// Runs the postStart hook once per run (a marker in the run directory keeps a restarted
    /// daemon from running it again); whether the container may go on.
    async fn post_start(&self) -> bool {
        let Some(hook) = &self.post_start else { return true };
        let done = self.run_dir.join("poststart.done");
        if done.exists() {
            return true;
        }
        match run_hook(hook, self.pid, &self.ip, POST_START_LIMIT).await {
            Ok(()) => {
                let _ = std::fs::write(&done, b"");
                true
            }
            Err(e) => {
                (self.event)("FailedPostStartHook", format!("PostStartHook failed: {e}"));
                (self.event)("Killing", "FailedPostStartHook".into());
                self.kill().await;
                false
            }
        }
    }

    /// Probes until the run ends or a startup/liveness failure kills it.
    pub async fn run(self) {
        self.set(|r| {
            r.ready = false;
            r.started = false;
        });
        if !self.post_start().await {
            return;
        }
        self.set(|r| {
            r.ready = self.readiness.is_none();
            r.started = self.startup.is_none();
        });
        let start = self.started_at;
        let mut startup = self.startup.as_ref().map(|p| (p, Counter::new(p, start)));
        let mut liveness = self.liveness.as_ref().map(|p| (p, Counter::new(p, start)));
        let mut readiness = self.readiness.as_ref().map(|p| (p, Counter::new(p, start)));
        let mut started = startup.is_none();
        loop {
            if !self.alive() {
                break;
            }
            let now = std::time::Instant::now();
            if !started {
                if let Some((p, c)) = startup.as_mut().filter(|(_, c)| c.next <= now) {
                    let r = run_once(p, self.pid, &self.ip).await;
                    c.next = now + p.period;
                    c.record(r.is_ok());
                    if let Err(e) = r {
                        (self.event)("Unhealthy", format!("Startup probe failed: {e}"));
                        if c.bad >= p.failure_threshold {
                            (self.event)("Killing", "Container failed startup probe, will be restarted".into());
                            self.kill().await;
                            break;
                        }
                    } else if c.ok >= 1 {
                        started = true;
                        self.set(|r| r.started = true);
                        // The other probes' initial delays count from here.
                        let now = std::time::Instant::now();
                        for (p, c) in liveness.iter_mut().chain(readiness.iter_mut()) {
                            c.next = now + p.initial_delay;
                        }
                    }
                }
            } else {
                if let Some((p, c)) = liveness.as_mut().filter(|(_, c)| c.next <= now) {
                    let r = run_once(p, self.pid, &self.ip).await;
                    c.next = now + p.period;
                    c.record(r.is_ok());
                    if let Err(e) = r {
                        (self.event)("Unhealthy", format!("Liveness probe failed: {e}"));
                        if c.bad >= p.failure_threshold {
                            (self.event)("Killing", "Container failed liveness probe, will be restarted".into());
                            self.kill().await;
                            break;
                        }
                    }
                }
                if let Some((p, c)) = readiness.as_mut().filter(|(_, c)| c.next <= now) {
                    let r = run_once(p, self.pid, &self.ip).await;
                    c.next = now + p.period;
                    c.record(r.is_ok());
                    if let Err(e) = &r {
                        (self.event)("Unhealthy", format!("Readiness probe failed: {e}"));
                    }
                    if c.ok >= p.success_threshold {
                        self.set(|r| r.ready = true);
                    } else if c.bad >= p.failure_threshold {
                        self.set(|r| r.ready = false);
                    }
                }
            }
            let next = [&startup, &liveness, &readiness]
                .iter()
                .filter_map(|x| x.as_ref().map(|(_, c)| c.next))
                .min()
                .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(1));
            let wait = next.saturating_duration_since(std::time::Instant::now()).min(Duration::from_millis(500));
            tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
        }
        if let Ok(mut m) = self.results.lock() {
            m.remove(&self.run_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_parse_with_kubernetes_defaults_and_named_ports() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let p = parse(&json!({"httpGet": {"path": "/healthz", "port": "http"}}), &c).unwrap();
        assert_eq!(p.action, Action::Http { host: None, port: 8080, path: "/healthz".into(), headers: vec![] });
        assert_eq!(
            (p.period, p.timeout, p.failure_threshold, p.success_threshold),
            (Duration::from_secs(10), Duration::from_secs(1), 3, 1)
        );
        let p = parse(&json!({"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 1, "failureThreshold": 2}), &c)
            .unwrap();
        assert_eq!(p.action, Action::Exec(vec!["cat".into(), "/tmp/ok".into()]));
        assert_eq!(p.failure_threshold, 2);
        assert!(parse(&json!({"tcpSocket": {"port": "nope"}}), &c).unwrap_err().contains("nope"));
        assert!(parse(&json!({}), &c).unwrap_err().contains("exec, httpGet, tcpSocket or grpc"));
        assert!(parse_hook(&json!({}), &c).unwrap_err().contains("exec, httpGet, tcpSocket or sleep"));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_tell_success_from_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let code = if n == 0 { "200 OK" } else { "500 Internal Server Error" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                n += 1;
            }
        });
        let probe = |action| Probe {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let http = probe(Action::Http { host: None, port, path: "/".into(), headers: vec![] });
        assert_eq!(run_once(&http, 0, "127.0.0.1").await, Ok(()));
        assert!(run_once(&http, 0, "127.0.0.1").await.unwrap_err().contains("500"));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let tcp = probe(Action::Tcp { host: None, port: closed });
        assert!(run_once(&tcp, 0, "127.0.0.1").await.is_err());
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        use tonic_health::ServingStatus;
        let (mut reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("", ServingStatus::Serving).await;
        reporter.set_service_status("db", ServingStatus::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let probe = |service: &str, port| Probe {
            action: Action::Grpc { port, service: service.into() },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert_eq!(run_once(&probe("", port), 0, "127.0.0.1").await, Ok(()));
        assert_eq!(
            run_once(&probe("db", port), 0, "127.0.0.1").await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let unknown = run_once(&probe("cache", port), 0, "127.0.0.1").await.unwrap_err();
        assert!(unknown.starts_with("error: health rpc probe failed"), "{unknown}");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let refused = run_once(&probe("", closed), 0, "127.0.0.1").await.unwrap_err();
        assert!(refused.starts_with("timeout: failed to connect service"), "{refused}");
        let parsed = parse(&serde_json::json!({"grpc": {"port": 9090, "service": "db"}}), &serde_json::json!({}));
        assert_eq!(parsed.map(|p| p.action), Ok(Action::Grpc { port: 9090, service: "db".into() }));
    }
}
