//! Service addresses: cluster IPs from the service CIDR and node ports from 30000–32767.
//!
//! Each allocation is a key of its own (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`, holding `namespace/name`) written in the same
//! transaction as the Service, guarded by the key being absent. Two creates through different
//! masters can therefore never both get an address: the second transaction fails and picks
//! again (or, for an address the user asked for, is refused). Deleting the Service deletes its
//! keys in the same transaction; an update keeps what the Service had.
//!
//! This module is pure: what a Service claims and releases, given what is taken.

use crate::error::FieldError;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub const IP_PREFIX: &str = "/registry/ranges/serviceips/";
pub const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
pub const NODE_PORTS: (u16, u16) = (30000, 32767);

/// The service CIDR cluster IPs come from.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRange {
    network: u32,
    prefix: u8,
}

impl Default for ServiceRange {
    fn default() -> Self {
        ServiceRange::parse("10.96.0.0/16").expect("the default service CIDR parses")
    }
}

impl std::fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl ServiceRange {
    /// Parses `10.96.0.0/16` (prefix 12 to 28, as Kubernetes allows at most 2^20 addresses).
    pub fn parse(cidr: &str) -> Result<ServiceRange, String> {
        let bad = || format!("service CIDR {cidr:?}: expected a.b.c.d/n with n between 12 and 28");
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (12..=28).contains(p)).ok_or_else(bad)?;
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceRange { network: u32::from(addr) & mask, prefix })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Whether `ip` may be a cluster IP: inside the range, not its network or broadcast address.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network && ip < self.network + self.size() - 1
    }

    /// A free cluster IP, starting from a random point of the range so concurrent creates
    /// rarely collide (a collision costs one more transaction, never a duplicate).
    pub fn pick(&self, taken: &BTreeSet<String>, seed: u32) -> Option<Ipv4Addr> {
        let usable = self.size() - 2;
        (0..usable)
            .map(|i| Ipv4Addr::from(self.network + 1 + (seed.wrapping_add(i) % usable)))
            .find(|ip| !taken.contains(&ip.to_string()))
    }
}

/// A free node port, from a random point of the range.
pub fn pick_port(taken: &BTreeSet<String>, seed: u32) -> Option<u16> {
    let (low, high) = NODE_PORTS;
    let size = u32::from(high - low) + 1;
    (0..size).map(|i| low + ((seed.wrapping_add(i) % size) as u16)).find(|p| !taken.contains(&p.to_string()))
}

/// An address a Service asked for by name: the field that asked, the key, the value shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Requested {
    pub field: String,
    pub key: String,
    pub value: Value,
}

/// What a create or update of a Service claims and gives back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// Keys that must be absent and are written with the Service.
    pub claim: Vec<String>,
    /// Keys deleted with the Service's write.
    pub release: Vec<String>,
    /// Of `claim`, those the user asked for (refused, not re-picked, when taken).
    pub requested: Vec<Requested>,
}

fn needs_node_ports(svc: &Value) -> bool {
    matches!(svc["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

fn wants_cluster_ip(svc: &Value) -> bool {
    svc["spec"]["type"] != "ExternalName" && svc["spec"]["clusterIP"] != "None"
}

/// The keys a stored Service holds.
pub fn held(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc["spec"]["clusterIP"].as_str().filter(|ip| !ip.is_empty() && *ip != "None") {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64() {
            keys.push(format!("{PORT_PREFIX}{n}"));
        }
    }
    keys
}

/// Fills in `svc`'s cluster IP and node ports (keeping those of `current`, the stored
/// Service on an update) and says what that claims and releases. `taken_ips` and
/// `taken_ports` are the allocation keys' suffixes as last read; `seed` randomises picks.
pub fn assign(
    range: &ServiceRange,
    svc: &mut Value,
    current: Option<&Value>,
    taken_ips: &BTreeSet<String>,
    taken_ports: &BTreeSet<String>,
    seed: u32,
) -> Result<Claims, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut claims = Claims::default();
    let old_held: BTreeSet<String> = current.map(held).unwrap_or_default().into_iter().collect();
    // Cluster IP.
    let given = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
    let old_ip = current.and_then(|c| c["spec"]["clusterIP"].as_str()).unwrap_or_default().to_string();
    if svc["spec"]["type"] == "ExternalName" {
        if !given.is_empty() && given != "None" {
            errors.push(FieldError::invalid("spec.clusterIP", &given, "may not be set for ExternalName services"));
        }
    } else if current.is_some() && !given.is_empty() && given != old_ip {
        errors.push(FieldError::invalid("spec.clusterIP", &given, "field is immutable"));
    } else if current.is_some() && given.is_empty() && !old_ip.is_empty() {
        svc["spec"]["clusterIP"] = json!(old_ip);
    } else if wants_cluster_ip(svc) && (current.is_none() || old_ip.is_empty()) {
        if given.is_empty() {
            match range.pick(taken_ips, seed) {
                Some(ip) => {
                    svc["spec"]["clusterIP"] = json!(ip.to_string());
                    claims.claim.push(format!("{IP_PREFIX}{ip}"));
                }
                None => errors.push(FieldError::invalid(
                    "spec.clusterIP",
                    "",
                    format!("no addresses are left in the service range {range}"),
                )),
            }
        } else {
            match given.parse::<Ipv4Addr>() {
                Err(_) => errors.push(FieldError::invalid("spec.clusterIP", &given, "must be a valid IP address")),
                Ok(ip) if !range.allocatable(ip) => errors.push(FieldError::invalid(
                    "spec.clusterIP",
                    &given,
                    format!("provided IP is not in the valid range. The range of valid IPs is {range}"),
                )),
                Ok(ip) => {
                    let key = format!("{IP_PREFIX}{ip}");
                    claims.claim.push(key.clone());
                    claims.requested.push(Requested { field: "spec.clusterIP".into(), key, value: json!(given) });
                }
            }
        }
    }
    if let Some(ip) = svc["spec"]["clusterIP"].as_str().filter(|ip| !ip.is_empty()) {
        svc["spec"]["clusterIPs"] = json!([ip]);
    }
    // Node ports.
    let old_ports = current.and_then(|c| c["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let mut used = BTreeSet::new();
    let mut taken = taken_ports.clone();
    let node_ports = needs_node_ports(svc);
    // Ports asked for by number are not picked for the others.
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64() {
            taken.insert(n.to_string());
        }
    }
    // Through a pointer: indexing a service without ports mutably would store `ports: null`,
    // which the typed schema refuses (typed Get/List/Watch of its namespace then failed).
    for (i, p) in svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten().enumerate() {
        if !node_ports {
            continue;
        }
        let field = format!("spec.ports[{i}].nodePort");
        let explicit = p["nodePort"].as_i64();
        let n = match explicit {
            Some(n) => n,
            None => {
                // An update keeps the node port this port had.
                let kept = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                    .and_then(|o| o["nodePort"].as_i64())
                    .filter(|n| !used.contains(n));
                match kept.or_else(|| pick_port(&taken, seed.wrapping_mul(31).wrapping_add(i as u32)).map(i64::from)) {
                    Some(n) => n,
                    None => {
                        errors.push(FieldError::invalid(&field, "", "no node ports are left in 30000-32767"));
                        continue;
                    }
                }
            }
        };
        p["nodePort"] = json!(n);
        if !used.insert(n) {
            errors.push(FieldError::duplicate(&field, n));
            continue;
        }
        let key = format!("{PORT_PREFIX}{n}");
        taken.insert(n.to_string());
        if !old_held.contains(&key) {
            if explicit.is_some() {
                claims.requested.push(Requested { field: field.clone(), key: key.clone(), value: json!(n) });
            }
            claims.claim.push(key);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Anything held before and not now goes back.
    let now_held: BTreeSet<String> = held(svc).into_iter().collect();
    claims.release = old_held.difference(&now_held).cloned().collect();
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s", "namespace": "default"}, "spec": spec})
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn a_cluster_ip_is_picked_from_the_range_and_skips_taken_ones() {
        let r = ServiceRange::parse("10.96.0.0/28").unwrap();
        let taken: BTreeSet<String> = ["10.96.0.1".to_string()].into();
        let mut s = svc(json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        let c = assign(&r, &mut s, None, &taken, &none(), 0).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.96.0.2"]));
        assert_eq!(c.claim, vec![format!("{IP_PREFIX}10.96.0.2")]);
        assert!(c.requested.is_empty());
        // Full: a clear error, nothing claimed.
        let taken: BTreeSet<String> = (1..=14).map(|i| format!("10.96.0.{i}")).collect();
        let e = assign(&r, &mut svc(json!({"ports": [{"port": 80}]})), None, &taken, &none(), 0).unwrap_err();
        assert!(e[0].to_string().contains("no addresses are left"), "{e:?}");
    }

    #[test]
    fn an_explicit_cluster_ip_is_requested_and_checked_against_the_range() {
        let r = ServiceRange::default();
        let mut s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        let c = assign(&r, &mut s, None, &none(), &none(), 0).unwrap();
        assert_eq!(c.requested[0].field, "spec.clusterIP");
        for bad in ["10.97.0.1", "10.96.0.0", "10.96.255.255", "nope"] {
            let mut s = svc(json!({"clusterIP": bad, "ports": [{"port": 53}]}));
            let e = assign(&r, &mut s, None, &none(), &none(), 0).unwrap_err();
            assert!(e[0].to_string().starts_with("spec.clusterIP: Invalid value"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn headless_and_external_name_services_get_no_address() {
        let r = ServiceRange::default();
        let mut s = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(assign(&r, &mut s, None, &none(), &none(), 0).unwrap().claim.is_empty());
        let mut s = svc(json!({"type": "ExternalName", "externalName": "example.org"}));
        assert!(assign(&r, &mut s, None, &none(), &none(), 0).unwrap().claim.is_empty());
        assert!(s["spec"]["clusterIP"].is_null());
        let spec = s["spec"].as_object().unwrap();
        assert!(!spec.contains_key("ports"), "no ports field is made up: {s}");
        // It still fits the typed schema, so typed lists of its namespace work.
        let typed: skiff_proto::api::Service = serde_json::from_value(s.clone()).expect("fits the typed schema");
        assert_eq!(typed.spec.unwrap().external_name, "example.org");
    }

    #[test]
    fn an_update_keeps_the_cluster_ip_and_node_ports_and_refuses_changing_the_ip() {
        let r = ServiceRange::default();
        let old = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.7",
                             "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let c = assign(&r, &mut s, Some(&old), &none(), &none(), 0).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(c, Claims::default());
        let mut s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.8", "ports": [{"port": 80}]}));
        let e = assign(&r, &mut s, Some(&old), &none(), &none(), 0).unwrap_err();
        assert!(e[0].to_string().contains("field is immutable"), "{e:?}");
        // Back to ClusterIP: the node port goes back.
        let mut s = svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let c = assign(&r, &mut s, Some(&old), &none(), &none(), 0).unwrap();
        assert_eq!(c.release, vec![format!("{PORT_PREFIX}30080")]);
    }

    #[test]
    fn node_ports_are_picked_or_requested_and_never_twice_in_one_service() {
        let r = ServiceRange::default();
        let taken: BTreeSet<String> = ["30000".to_string()].into();
        let mut s = svc(json!({"type": "LoadBalancer", "ports": [
            {"name": "a", "port": 80, "protocol": "TCP"},
            {"name": "b", "port": 81, "protocol": "TCP", "nodePort": 30001}]}));
        let c = assign(&r, &mut s, None, &none(), &taken, 0).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30002, "skips the taken 30000 and the requested 30001: {s}");
        assert_eq!(c.requested.len(), 1);
        assert_eq!(c.requested[0].field, "spec.ports[1].nodePort");
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30005}, {"name": "b", "port": 81, "nodePort": 30005}]}));
        let e = assign(&r, &mut s, None, &none(), &none(), 0).unwrap_err();
        assert!(e[0].to_string().starts_with("spec.ports[1].nodePort: Duplicate value"), "{e:?}");
    }
}
