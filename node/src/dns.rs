//! Cluster DNS, served by every node on its bridge's gateway address (port 53, UDP and TCP),
//! which is the nameserver in its pods' `/etc/resolv.conf`. Messages are parsed and built with
//! hickory-dns' protocol crate; the answers come from the Services and Endpoints the service
//! proxy already follows, so they change as soon as the proxy sees a change.
//!
//! - `svc.ns.svc.<domain>`: A with the cluster IP; every ready endpoint's IP for a headless
//!   Service; a CNAME to `externalName` for an ExternalName Service.
//! - `host.svc.ns.svc.<domain>`: a headless Service's endpoint with that hostname.
//! - `_port._proto.svc.ns.svc.<domain>`: SRV for a named port.
//! - Anything else in the domain: NXDOMAIN; a name outside it: REFUSED (no recursion here).
//!
//! `answer` is pure: the known Services and Endpoints and a query in, the reply out.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Seconds a client may cache an answer (CoreDNS' kubernetes plugin default).
const TTL: u32 = 5;

/// What DNS answers from: the cluster's Services and Endpoints, as last listed.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub services: Vec<Value>,
    pub endpoints: Vec<Value>,
}

pub type Shared = Arc<RwLock<Records>>;

enum Found {
    Records(Vec<RData>),
    NoName,
}

/// The ready addresses of the Endpoints `ns/name`.
fn ready_addresses(records: &Records, ns: &str, name: &str) -> Vec<Value> {
    records
        .endpoints
        .iter()
        .filter(|e| e["metadata"]["namespace"] == ns && e["metadata"]["name"] == name)
        .flat_map(|e| e["subsets"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn a(ip: &str) -> Option<RData> {
    ip.parse::<Ipv4Addr>().ok().map(|ip| RData::A(A(ip)))
}

fn lookup(records: &Records, labels: &[&str], qtype: RecordType, domain: &str) -> Found {
    let service = |ns: &str, name: &str| {
        records.services.iter().find(|s| s["metadata"]["namespace"] == ns && s["metadata"]["name"] == name)
    };
    let fqdn = |parts: &str| Name::from_ascii(format!("{parts}.svc.{domain}.")).ok();
    match labels {
        [name, ns] => {
            let Some(svc) = service(ns, name) else { return Found::NoName };
            if svc["spec"]["type"] == "ExternalName" {
                let target = svc["spec"]["externalName"].as_str().unwrap_or_default();
                let target = if target.ends_with('.') { target.to_string() } else { format!("{target}.") };
                return match Name::from_ascii(target) {
                    Ok(n) => Found::Records(vec![RData::CNAME(CNAME(n))]),
                    Err(_) => Found::NoName,
                };
            }
            if !matches!(qtype, RecordType::A | RecordType::ANY) {
                return Found::Records(vec![]);
            }
            let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
            if ip == "None" {
                let ips = ready_addresses(records, ns, name);
                Found::Records(ips.iter().filter_map(|a| a["ip"].as_str()).filter_map(self::a).collect())
            } else {
                Found::Records(a(ip).into_iter().collect())
            }
        }
        [host, name, ns] if !host.starts_with('_') => {
            let ips = ready_addresses(records, ns, name);
            let mine: Vec<RData> = ips
                .iter()
                .filter(|a| a["hostname"] == *host)
                .filter_map(|a| a["ip"].as_str())
                .filter_map(self::a)
                .collect();
            match (mine.is_empty(), qtype) {
                (true, _) => Found::NoName,
                (false, RecordType::A | RecordType::ANY) => Found::Records(mine),
                (false, _) => Found::Records(vec![]),
            }
        }
        [port, proto, name, ns] if port.starts_with('_') && proto.starts_with('_') => {
            let Some(svc) = service(ns, name) else { return Found::NoName };
            let (port, proto) = (&port[1..], proto[1..].to_ascii_uppercase());
            let Some(p) =
                svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| {
                    p["name"] == port && p["protocol"].as_str().unwrap_or("TCP").eq_ignore_ascii_case(&proto)
                })
            else {
                return Found::NoName;
            };
            if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                return Found::Records(vec![]);
            }
            let number = p["port"].as_i64().unwrap_or_default() as u16;
            let targets: Vec<Name> = if svc["spec"]["clusterIP"] == "None" {
                ready_addresses(records, ns, name)
                    .iter()
                    .filter_map(|a| a["hostname"].as_str())
                    .filter_map(|h| fqdn(&format!("{h}.{name}.{ns}")))
                    .collect()
            } else {
                fqdn(&format!("{name}.{ns}")).into_iter().collect()
            };
            Found::Records(targets.into_iter().map(|t| RData::SRV(SRV::new(0, 100, number, t))).collect())
        }
        _ => Found::NoName,
    }
}

/// The reply to `query` (None for something that is not a DNS query at all).
pub fn answer(records: &Records, query: &[u8], domain: &str) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    let Some(q) = request.queries().first().cloned() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply.to_vec().ok();
    };
    reply.add_query(q.clone());
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let zone = format!(".svc.{domain}");
    let Some(rest) = name.strip_suffix(&zone) else {
        let in_domain = name == domain || name.ends_with(&format!(".{domain}"));
        reply.set_authoritative(in_domain);
        reply.set_response_code(if in_domain { ResponseCode::NXDomain } else { ResponseCode::Refused });
        return reply.to_vec().ok();
    };
    reply.set_authoritative(true);
    let labels: Vec<&str> = rest.split('.').collect();
    match lookup(records, &labels, q.query_type(), domain) {
        Found::NoName => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Found::Records(data) => {
            for d in data {
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, d));
            }
        }
    }
    reply.to_vec().ok()
}

/// Serves DNS on `addr` (UDP and TCP) until the task is dropped.
pub async fn serve(addr: SocketAddr, records: Shared, domain: String) -> std::io::Result<()> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let (r2, d2) = (records.clone(), domain.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = tcp.accept().await {
            let (records, domain) = (r2.clone(), d2.clone());
            tokio::spawn(async move {
                loop {
                    let len = match conn.read_u16().await {
                        Ok(n) => n as usize,
                        Err(_) => return,
                    };
                    let mut buf = vec![0; len];
                    if conn.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let reply = answer(&records.read().expect("records lock"), &buf, &domain);
                    let Some(reply) = reply else { return };
                    if conn.write_u16(reply.len() as u16).await.is_err() || conn.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = udp.recv_from(&mut buf).await?;
        let reply = {
            let snapshot = records.read().expect("records lock");
            answer(&snapshot, &buf[..n], &domain)
        };
        if let Some(reply) = reply {
            let _ = udp.send_to(&reply, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn records() -> Records {
        Records {
            services: vec![
                json!({"metadata": {"name": "web", "namespace": "default"},
                       "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                json!({"metadata": {"name": "db", "namespace": "prod"},
                       "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
                json!({"metadata": {"name": "ext", "namespace": "default"},
                       "spec": {"type": "ExternalName", "externalName": "db.example.org"}}),
            ],
            endpoints: vec![json!({"metadata": {"name": "db", "namespace": "prod"}, "subsets": [{
                "addresses": [{"ip": "10.244.1.2", "hostname": "db-0"}, {"ip": "10.244.2.3", "hostname": "db-1"}],
                "notReadyAddresses": [{"ip": "10.244.1.7", "hostname": "db-2"}],
                "ports": [{"name": "pg", "port": 5432}]}]})],
        }
    }

    fn ask(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7).add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        Message::from_vec(&answer(&records(), &m.to_vec().unwrap(), "cluster.local").unwrap()).unwrap()
    }

    fn rdata(m: &Message) -> Vec<String> {
        m.answers().iter().filter_map(|r| r.data()).map(|d| d.to_string()).collect()
    }

    #[test]
    fn a_service_resolves_to_its_cluster_ip_and_headless_to_ready_pods() {
        let m = ask("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!((m.id(), m.response_code(), rdata(&m)), (7, ResponseCode::NoError, vec!["10.96.0.9".to_string()]));
        let m = ask("db.prod.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&m), vec!["10.244.1.2", "10.244.2.3"], "not-ready pods are left out");
        let m = ask("db-1.db.prod.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&m), vec!["10.244.2.3"]);
        // AAAA of a name that exists: no records, no error (resolvers ask both).
        let m = ask("web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!((m.response_code(), m.answers().len()), (ResponseCode::NoError, 0));
    }

    #[test]
    fn external_names_srv_and_missing_names() {
        let m = ask("ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&m), vec!["db.example.org."]);
        let m = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rdata(&m), vec!["0 100 80 web.default.svc.cluster.local."]);
        let m = ask("_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rdata(&m).len(), 2);
        for missing in
            ["nope.default.svc.cluster.local.", "web.other.svc.cluster.local.", "db-2.db.prod.svc.cluster.local."]
        {
            assert_eq!(ask(missing, RecordType::A).response_code(), ResponseCode::NXDomain, "{missing}");
        }
        assert_eq!(ask("example.org.", RecordType::A).response_code(), ResponseCode::Refused);
    }
}
