//! The harness's private network: one network namespace per master, each with a veth link to a
//! bridge that exists only for this run, and one per node machine ([`Machine`]) on the same
//! bridge. Nothing is routed off the machine: the bridge has no address in the host's namespace,
//! and the harness reaches each master's client listener (on its bridge address) through
//! [`Net::channel`], a socket opened inside that master's namespace.
//!
//! Faults on links are routes and packet filters inside the namespaces: a partition is a
//! blackhole route to each peer on the other side (both directions, so established streams stall
//! as a cut cable would); a lossy link drops a share of the namespace's outgoing packets; a
//! slow link holds each of them for a fixed time ([`crate::delay`]). A machine is lost by pulling
//! its cable ([`Machine::unplug`]).

use crate::delay::Delay;
use anyhow::{bail, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// The port every master's client listener uses on its bridge address.
pub const CLIENT_PORT: u16 = 2379;
/// The port every master's peer listener uses on its veth address.
pub const PEER_PORT: u16 = 2380;

type ConnectRequest = (SocketAddr, tokio::sync::oneshot::Sender<std::io::Result<TcpStream>>);

/// One master's namespace.
pub struct Ns {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Asks the thread that lives in this namespace to open a connection there.
    connect: mpsc::Sender<ConnectRequest>,
}

/// The namespaces, the bridge, and the link faults currently in force.
pub struct Net {
    /// Tells this run's bridges, namespaces and addresses apart from other runs'.
    pub tag: u32,
    bridge: String,
    pub members: Vec<Ns>,
    /// (from, to) member indices whose traffic is currently blackholed.
    cut: BTreeSet<(usize, usize)>,
    lossy: BTreeSet<usize>,
    slow: BTreeMap<usize, Delay>,
    /// What [`channel`](Self::channel)s dial: a client listener, over TLS after
    /// [`use_tls`](Self::use_tls).
    endpoint: Endpoint,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs `cmd` and fails with its stderr unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Net {
    /// Creates `n` namespaces `skc<tag>-<i>` on a bridge `skcb<tag>`; addresses 10.213.0.(i+2).
    pub fn create(n: usize) -> anyhow::Result<Net> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the chaos harness needs root: it creates network namespaces and signals masters");
        }
        if n == 0 || n > 200 {
            bail!("--masters must be between 1 and 200, not {n}");
        }
        let tag = std::process::id() % 1_000_000;
        let bridge = format!("skcb{tag}");
        let mut net = Net {
            tag,
            bridge,
            members: Vec::new(),
            cut: BTreeSet::new(),
            lossy: BTreeSet::new(),
            slow: BTreeMap::new(),
            endpoint: Endpoint::from_static("http://127.0.0.1:2379"),
        };
        // From here on, Drop removes whatever was made if a later step fails.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let name = format!("skc{}-{i}", net.tag);
            let host = format!("skc{}h{i}", net.tag);
            let addr = Ipv4Addr::new(10, 213, 0, (i + 2) as u8);
            plug_in(&net.bridge, &name, &host, addr)?;
            let connect = spawn_connector(&name)?;
            net.members.push(Ns { name, ip: addr, connect });
        }
        Ok(net)
    }

    pub fn peer_addr(&self, i: usize) -> String {
        format!("{}:{PEER_PORT}", self.members[i].ip)
    }

    /// Member `i`'s client listener: its bridge address, so node machines reach it too.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.members[i].ip, CLIENT_PORT))
    }

    /// Node machine `k` (at most [`MAX_MACHINES`]): a namespace `skc<tag>-n<k>` plugged into
    /// the bridge at 10.213.0.(210+k).
    pub fn add_machine(&self, k: usize) -> anyhow::Result<Machine> {
        if k >= MAX_MACHINES {
            bail!("at most {MAX_MACHINES} node machines, not {}", k + 1);
        }
        let ip = Ipv4Addr::new(10, 213, 0, (210 + k) as u8);
        Machine::plug_in(&self.bridge, format!("skc{}-n{k}", self.tag), format!("skc{}c{k}", self.tag), ip)
    }

    /// Channels from here on speak TLS to the client listeners with `tls` (its CA and identity).
    pub fn use_tls(&mut self, tls: tonic::transport::ClientTlsConfig) -> anyhow::Result<()> {
        self.endpoint = Endpoint::from_static("https://127.0.0.1:2379").tls_config(tls)?;
        Ok(())
    }

    /// A lazily connecting gRPC channel to member `i`'s client listener, opened inside its
    /// namespace (over TLS after [`use_tls`](Self::use_tls)); every request gives up after `timeout`.
    pub fn channel(&self, i: usize, timeout: Duration) -> Channel {
        self.channel_to(i, self.endpoint.clone().timeout(timeout))
    }

    /// A lazily connecting channel to member `i`'s client listener dialed as `endpoint` says
    /// (its scheme, TLS and deadlines), opened inside the member's namespace.
    pub fn channel_to(&self, i: usize, endpoint: Endpoint) -> Channel {
        let tx = self.members[i].connect.clone();
        let listener = self.client_addr(i);
        let connector = tower::service_fn(move |_: Uri| {
            let tx = tx.clone();
            async move {
                let (reply, rx) = tokio::sync::oneshot::channel();
                tx.send((listener, reply))
                    .map_err(|_| std::io::Error::other("the namespace's connector thread is gone"))?;
                let stream = rx.await.map_err(|_| std::io::Error::other("the connector dropped the request"))??;
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
            }
        });
        endpoint.connect_timeout(Duration::from_secs(1)).connect_with_connector_lazy(connector)
    }

    /// Cuts traffic between every member of `a` and every member of `b`, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    if from != to && self.cut.insert((from, to)) {
                        let dst = format!("{}/32", self.members[to].ip);
                        ip(&["-n", &self.members[from].name, "route", "add", "blackhole", &dst])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops `percent` of member `i`'s outgoing packets.
    pub fn lossy(&mut self, i: usize, percent: u32) -> anyhow::Result<()> {
        if self.lossy.insert(i) {
            let p = format!("{:.2}", f64::from(percent) / 100.0);
            let ns = &self.members[i].name;
            let args =
                ["netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", "eth0", "-m", "statistic", "--mode", "random"];
            let mut args: Vec<&str> = args.to_vec();
            args.extend(["--probability", &p, "-j", "DROP"]);
            ip(&args)?;
        }
        Ok(())
    }

    /// Delays every packet member `i` sends to its peers by `delay` (both directions slow down
    /// when both ends are slowed; one end slowed is a slow uplink).
    pub fn slow(&mut self, i: usize, delay: Duration) -> anyhow::Result<()> {
        if self.slow.contains_key(&i) {
            return Ok(());
        }
        let ns = self.members[i].name.clone();
        // The queue first, so the rule never sends packets to a queue nobody reads.
        let held = Delay::start(&ns, 0, delay)?;
        self.slow.insert(i, held);
        let rule = ["netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE"];
        let mut args: Vec<&str> = rule.to_vec();
        args.extend(["--queue-num", "0", "--queue-bypass"]);
        ip(&args)
    }

    /// Removes every partition, lossy and slow link.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (from, to) in std::mem::take(&mut self.cut) {
            let dst = format!("{}/32", self.members[to].ip);
            ip(&["-n", &self.members[from].name, "route", "del", "blackhole", &dst])?;
        }
        let filtered: BTreeSet<usize> =
            std::mem::take(&mut self.lossy).into_iter().chain(self.slow.keys().copied()).collect();
        for i in filtered {
            ip(&["netns", "exec", &self.members[i].name, "iptables", "-F", "OUTPUT"])?;
        }
        // With the rules gone nothing more is queued: dropping each delay releases what it holds.
        self.slow.clear();
        Ok(())
    }

    /// The `ip netns exec` prefix that runs a program in member `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> [String; 3] {
        ["netns".into(), "exec".into(), self.members[i].name.clone()]
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for m in &self.members {
            let _ = ip(&["netns", "del", &m.name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Creates namespace `ns` with `eth0` at `addr`/24, its other end `host` a port of `bridge`,
/// and waits until the link carries frames.
fn plug_in(bridge: &str, ns: &str, host: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    ip(&["link", "set", host, "master", bridge, "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    wait_plugged_in(ns, host, Duration::from_secs(10))
}

/// How many node machines a run may have (their addresses follow the masters' up to .249).
pub const MAX_MACHINES: usize = 40;

/// A machine: a network namespace with its own address on a bridge (a chaos run's node hosts,
/// the machines of `tests/src/machines.rs`). Processes run in it through
/// [`command`](Self::command); it is lost by [`unplug`](Self::unplug) plus killing what runs in
/// it, and comes back by [`plug`](Self::plug). Dropping it kills what is left in it and removes
/// it.
pub struct Machine {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its veth's end on the bridge, in the harness's namespace.
    cable: String,
}

impl Machine {
    /// Namespace `name` plugged into `bridge` by the veth `cable`, at `ip`/24, carrying frames.
    pub fn plug_in(bridge: &str, name: String, cable: String, ip: Ipv4Addr) -> anyhow::Result<Machine> {
        // The machine cleans up after itself from here on, if a later step fails too.
        let machine = Machine { name, ip, cable };
        plug_in(bridge, &machine.name, &machine.cable, ip)?;
        Ok(machine)
    }

    /// A command that runs `program` in this machine's network namespace (the host's mounts,
    /// so the node daemon's overlays and bind mounts are where its cleanup looks for them).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        c
    }

    /// Every process in this machine's network namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip").args(["netns", "pids", &self.name]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The cable is pulled: nothing reaches the machine and nothing leaves it.
    pub fn unplug(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.cable, "down"])
    }

    /// The cable is back, and carries frames when this returns.
    pub fn plug(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.cable, "up"])?;
        wait_plugged_in(&self.name, &self.cable, Duration::from_secs(10))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = ip(&["link", "del", &self.cable]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Waits until the veth pair `host` (a port of a bridge, in this namespace) ↔ `eth0` (in
/// namespace `ns`) carries frames: both ends operationally up and the bridge port forwarding.
/// `ip link set up` returns before the kernel's link watcher has run; until it has, the device
/// still has its no-op queue and the bridge port is disabled, so the first packets (an ARP
/// request, a SYN) are dropped and the first connection waits out a retransmit.
pub fn wait_plugged_in(ns: &str, host: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let host_state = std::fs::read_to_string(format!("/sys/class/net/{host}/operstate"))
            .with_context(|| format!("reading {host}'s operstate"))?;
        let port_state = std::fs::read_to_string(format!("/sys/class/net/{host}/brport/state"))
            .with_context(|| format!("reading {host}'s bridge port state"))?;
        let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", "eth0"]).output()?;
        let inside = String::from_utf8_lossy(&out.stdout);
        // Bridge port state 3 is BR_STATE_FORWARDING.
        if host_state.trim() == "up" && port_state.trim() == "3" && inside.contains(" state UP ") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{host} ↔ {ns}/eth0 not carrying frames after {timeout:?}: {host} is {}, its bridge \
                 port state {} (3 is forwarding), eth0: {}",
                host_state.trim(),
                port_state.trim(),
                inside.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A thread that enters namespace `name` and opens TCP connections there on request: a socket
/// belongs to the namespace it was created in, whichever thread uses it later.
fn spawn_connector(name: &str) -> anyhow::Result<mpsc::Sender<ConnectRequest>> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let (tx, rx) = mpsc::channel::<ConnectRequest>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new().name(format!("connect-{name}")).spawn(move || {
        let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
        let ok = entered.is_ok();
        let _ = ready_tx.send(entered);
        if !ok {
            return;
        }
        for (addr, reply) in rx {
            let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
        }
    })?;
    ready_rx.recv().context("connector thread")?.with_context(|| format!("entering {path}"))?;
    Ok(tx)
}

/// `n` distinct free loopback ports for listeners that separate processes will bind later.
///
/// Chosen below the kernel's ephemeral range: a port from `bind(:0)` is free only until the
/// listener closes, and then any outgoing connection on the machine may take it as its source
/// port before the process binds it (seen under parallel tests). Ports below that range are never
/// handed out implicitly, so only another explicit bind can race us.
pub fn free_loopback_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Hold every listener until all are chosen so no port is handed out twice.
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    let mut rng = rand::thread_rng();
    if ephemeral_low > 12_000 {
        for _ in 0..n * 200 {
            if held.len() == n {
                break;
            }
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", rng.gen_range(10_000..ephemeral_low))) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a TCP connection from member `from` to `addr` (inside `from`'s namespace) and
    /// returns how long the handshake took.
    fn connect_time(net: &Net, from: usize, addr: SocketAddr) -> Duration {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        net.members[from].connect.send((addr, reply)).unwrap();
        rx.blocking_recv().unwrap().unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        started.elapsed()
    }

    #[test]
    fn a_slow_link_holds_packets_for_its_delay_and_heal_restores_it() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must run there");
            eprintln!("skipped: needs root for network namespaces");
            return;
        }
        let mut net = Net::create(2).unwrap();
        // A listener in member 1's namespace.
        let file = std::fs::File::open(format!("/run/netns/{}", net.members[1].name)).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            for s in l.incoming() {
                drop(s);
            }
        });
        let addr = SocketAddr::from((net.members[1].ip, rx.recv().unwrap()));
        let fast = connect_time(&net, 0, addr);
        assert!(fast < Duration::from_millis(100), "an unslowed handshake took {fast:?}");

        // phase: member 0's packets wait 300 ms, so its handshake takes at least that
        net.slow(0, Duration::from_millis(300)).unwrap();
        let slowed = connect_time(&net, 0, addr);
        eprintln!("handshake: {fast:?} fast, {slowed:?} through 300 ms");
        assert!(slowed >= Duration::from_millis(300), "a handshake through a 300 ms link took {slowed:?}");
        assert!(slowed < Duration::from_millis(1500), "a handshake through a 300 ms link took {slowed:?}");

        // phase: healed, the link is fast again
        net.heal().unwrap();
        let healed = connect_time(&net, 0, addr);
        assert!(healed < Duration::from_millis(100), "a handshake after heal took {healed:?}");
    }
}
