//! Slow links without `sch_netem`: the kernel here has no netem qdisc, so a delayed link is an
//! iptables `NFQUEUE` rule in the master's namespace and a thread of the harness, inside that
//! namespace, that holds each queued packet for the delay before it accepts it.
//!
//! The thread speaks nfnetlink_queue directly (a raw `NETLINK_NETFILTER` socket): it binds the
//! queue with metadata-only copies and fail-open (a full queue lets packets through rather than
//! dropping them), notes each packet's id and arrival, and accepts everything that has waited
//! long enough with one batch verdict ("every id up to N"). The delay is the same for every
//! packet, so release order is arrival order and the link stays FIFO, as a slow cable is. A
//! notification the socket dropped costs nothing: the next batch verdict releases its packet.
//!
//! Teardown order matters: the rule goes first (nothing new is queued), then the thread accepts
//! whatever it still holds and unbinds.

use anyhow::{bail, Context};
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AF_UNSPEC: u8 = 0;
const NFNETLINK_V0: u8 = 0;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NF_ACCEPT: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
/// Packets the kernel holds for one queue before fail-open lets the rest through.
const QUEUE_MAXLEN: u32 = 20_000;

/// Appends a netlink attribute (host-order header, payload padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// One nfnetlink_queue message for queue `queue`: netlink header, nfgenmsg, attributes.
fn message(kind: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![AF_UNSPEC, NFNETLINK_V0];
    body.extend_from_slice(&queue.to_be_bytes());
    for (k, p) in attrs {
        attr(&mut body, *k, p);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The messages that bind queue `queue`: metadata copies, a long queue, fail-open.
fn config_messages(queue: u16) -> Vec<Vec<u8>> {
    let mut params = 0u32.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_META);
    vec![
        message(NFQNL_MSG_CONFIG, NLM_F_ACK, 1, queue, &[(NFQA_CFG_CMD, vec![NFQNL_CFG_CMD_BIND, 0, 0, 0])]),
        message(NFQNL_MSG_CONFIG, NLM_F_ACK, 2, queue, &[(NFQA_CFG_PARAMS, params)]),
        message(NFQNL_MSG_CONFIG, NLM_F_ACK, 3, queue, &[(NFQA_CFG_QUEUE_MAXLEN, QUEUE_MAXLEN.to_be_bytes().to_vec())]),
        message(
            NFQNL_MSG_CONFIG,
            NLM_F_ACK,
            4,
            queue,
            &[
                (NFQA_CFG_FLAGS, NFQA_CFG_F_FAIL_OPEN.to_be_bytes().to_vec()),
                (NFQA_CFG_MASK, NFQA_CFG_F_FAIL_OPEN.to_be_bytes().to_vec()),
            ],
        ),
    ]
}

/// Accepts every queued packet with an id up to `id`.
fn accept_up_to(queue: u16, id: u32) -> Vec<u8> {
    let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
    verdict.extend_from_slice(&id.to_be_bytes());
    message(NFQNL_MSG_VERDICT_BATCH, 0, 0, queue, &[(NFQA_VERDICT_HDR, verdict)])
}

/// What a buffer read from the socket holds: queued packet ids, and errors the kernel
/// answered requests with (the acks of successful requests are left out).
fn parse(buf: &[u8]) -> (Vec<u32>, Vec<i32>) {
    let (mut ids, mut errors) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < 16 || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        if kind == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes(msg[16..20].try_into().expect("4 bytes"));
            if code != 0 {
                errors.push(code);
            }
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // Attributes start after the nfgenmsg (4 bytes).
            let mut a = 20;
            while a + 4 <= msg.len() {
                let alen = u16::from_ne_bytes(msg[a..a + 2].try_into().expect("2 bytes")) as usize;
                let akind = u16::from_ne_bytes(msg[a + 2..a + 4].try_into().expect("2 bytes")) & 0x3fff;
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes(msg[a + 4..a + 8].try_into().expect("4 bytes")));
                }
                a += alen.next_multiple_of(4);
            }
        }
        at += len.next_multiple_of(4);
    }
    (ids, errors)
}

/// A running delay on one namespace's queue; dropping it releases what it holds and unbinds
/// the queue.
pub struct Delay {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Delay {
    /// Enters namespace `ns` (a name under /run/netns) on a thread of its own, binds queue
    /// `queue` there and holds every packet queued to it for `delay`. Returns once the queue is
    /// bound, so a rule sending packets to it can go in right after.
    pub fn start(ns: &str, queue: u16, delay: Duration) -> anyhow::Result<Delay> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name(format!("delay-{ns}")).spawn(move || {
            let bound = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(anyhow::Error::from)
                .and_then(|()| bind(queue));
            match bound {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    hold(&fd, queue, delay, &stopping)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        ready_rx.recv().context("the delay thread ended before binding its queue")??;
        Ok(Delay { stop, thread: Some(thread) })
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the netlink socket in the current namespace and binds `queue`.
fn bind(queue: u16) -> anyhow::Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::empty(), SockProtocol::NetlinkNetFilter)
        .context("opening a netfilter netlink socket")?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("binding the netlink socket")?;
    // Room for bursts of notifications; a lost one is released by the next batch verdict.
    let _ = socket::setsockopt(&fd, socket::sockopt::RcvBufForce, &(8 << 20));
    let mut buf = vec![0u8; 8192];
    for msg in config_messages(queue) {
        socket::send(fd.as_raw_fd(), &msg, MsgFlags::empty()).context("configuring the queue")?;
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).context("reading the queue's ack")?;
        let (_, errors) = parse(&buf[..n]);
        if let Some(code) = errors.first() {
            bail!("nfnetlink_queue refused to configure queue {queue}: errno {}", -code);
        }
    }
    let tick = nix::sys::time::TimeVal::new(0, 2_000);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tick).context("setting the receive timeout")?;
    Ok(fd)
}

/// The thread's loop: note arrivals, release what is due, until told to stop.
fn hold(fd: &OwnedFd, queue: u16, delay: Duration, stop: &AtomicBool) {
    let mut held: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            let now = Instant::now();
            for id in parse(&buf[..n]).0 {
                held.push_back((id, now + delay));
            }
        }
        let now = Instant::now();
        let mut due = None;
        while held.front().is_some_and(|(_, at)| *at <= now) {
            due = held.pop_front().map(|(id, _)| id);
        }
        if let Some(id) = due {
            let _ = socket::send(fd.as_raw_fd(), &accept_up_to(queue, id), MsgFlags::empty());
        }
    }
    // Release everything still held, then leave the queue.
    if let Some((id, _)) = held.back() {
        let _ = socket::send(fd.as_raw_fd(), &accept_up_to(queue, *id), MsgFlags::empty());
    }
    let unbind = message(NFQNL_MSG_CONFIG, 0, 5, queue, &[(NFQA_CFG_CMD, vec![NFQNL_CFG_CMD_UNBIND, 0, 0, 0])]);
    let _ = socket::send(fd.as_raw_fd(), &unbind, MsgFlags::empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_the_kernel_reads_them() {
        let m = accept_up_to(7, 42);
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), (3 << 8) | 3);
        assert_eq!(&m[18..20], &7u16.to_be_bytes(), "the queue number is big-endian");
        assert_eq!(u16::from_ne_bytes(m[22..24].try_into().unwrap()), NFQA_VERDICT_HDR);
        assert_eq!(&m[24..28], &NF_ACCEPT.to_be_bytes());
        assert_eq!(&m[28..32], &42u32.to_be_bytes());
        // The params attribute (5 bytes) is padded to 8.
        let params = &config_messages(7)[1];
        assert_eq!(params.len(), 16 + 4 + 4 + 8);
    }

    #[test]
    fn packet_ids_and_refusals_are_read_back() {
        // A packet message: header, nfgenmsg, a packet header attribute (id 9), then an
        // unrelated attribute; and an error answer with errno 1.
        let mut pkt = Vec::new();
        attr(&mut pkt, NFQA_PACKET_HDR, &[0, 0, 0, 9, 0x08, 0x00, 3]);
        attr(&mut pkt, 10, &[1, 2]);
        let mut buf = Vec::new();
        buf.extend_from_slice(&((16 + 4 + pkt.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET).to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&[0, 0, 0, 7]);
        buf.extend_from_slice(&pkt);
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&(-1i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&buf), (vec![9], vec![-1]));
    }
}
