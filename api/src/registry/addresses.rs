//! Service addresses: cluster IPs and node ports claimed in the same transaction as the
//! Service that holds them.

use super::*;

impl Registry {
    /// `guarded`, also claiming (and releasing) a Service's addresses in the same transaction.
    /// An address the user asked for that someone else holds is refused by name; a picked one
    /// taken meanwhile is a conflict (the caller's retry picks again).
    pub(super) async fn guarded_claiming(
        &self,
        resource: &str,
        name: &str,
        key: &str,
        expected: i64,
        claims: Option<(&Claims, &Value)>,
        mut ops: Vec<RequestOp>,
    ) -> ApiResult<i64> {
        let mut compares = vec![mod_is(key, expected)];
        if let Some((claims, obj)) = claims {
            claim_ops(claims, obj, &mut compares, &mut ops);
        }
        let (ok, revision, _) = self.txn(compares, ops, vec![]).await?;
        if ok {
            return Ok(revision);
        }
        if let Some((claims, obj)) = claims {
            self.refuse_taken(claims, obj).await?;
        }
        let current = self.read(key).await?.map_or("deleted".to_string(), |kv| kv.mod_revision.to_string());
        Err(ApiError::Conflict { resource: resource.into(), name: name.into(), given: expected.to_string(), current })
    }

    /// The suffixes of the allocation keys under `prefix` (the addresses taken).
    pub(super) async fn allocated(&self, prefix: &str) -> ApiResult<std::collections::BTreeSet<String>> {
        self.master.read_barrier().await?;
        let r = self
            .master
            .sm
            .mvcc
            .range(&RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                keys_only: true,
                ..Default::default()
            })
            .map_err(StoreError::from)?;
        Ok(r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()).collect())
    }

    /// Fills in a Service's cluster IP and node ports; what that claims and releases.
    pub(super) async fn assign_addresses(&self, svc: &mut Value, current: Option<&Value>) -> ApiResult<Claims> {
        let ips = self.allocated(allocator::IP_PREFIX).await?;
        let ports = self.allocated(allocator::PORT_PREFIX).await?;
        allocator::assign(&self.service_range, svc, current, &ips, &ports, rand::random())
            .map_err(|causes| ApiError::Invalid { kind: "Service".into(), name: object::name(svc).into(), causes })
    }

    /// After a failed claim: the error naming an address the user asked for that another
    /// Service holds, if that is why.
    pub(super) async fn refuse_taken(&self, claims: &Claims, svc: &Value) -> ApiResult<()> {
        let me = owner_of(svc);
        for r in &claims.requested {
            if let Some(kv) = self.read(&r.key).await? {
                if kv.value != me.as_bytes() {
                    let what = if r.field == "spec.clusterIP" { "IP" } else { "port" };
                    return Err(ApiError::Invalid {
                        kind: "Service".into(),
                        name: object::name(svc).into(),
                        causes: vec![match &r.value {
                            Value::String(ip) => crate::error::FieldError::invalid(
                                &r.field,
                                ip,
                                format!("provided {what} is already allocated"),
                            ),
                            port => crate::error::FieldError::invalid(
                                &r.field,
                                port.as_i64().unwrap_or_default(),
                                format!("provided {what} is already allocated"),
                            ),
                        }],
                    });
                }
            }
        }
        Ok(())
    }
}

/// The value of a Service's allocation keys: `namespace/name`.
pub(super) fn owner_of(svc: &Value) -> String {
    format!("{}/{}", object::namespace(svc), object::name(svc))
}

/// Adds a Service's claims to a transaction: each claimed key absent, then written; each
/// released key deleted.
pub(super) fn claim_ops(claims: &Claims, svc: &Value, compares: &mut Vec<Compare>, ops: &mut Vec<RequestOp>) {
    for k in &claims.claim {
        compares.push(absent(k));
        ops.push(put_op(k, owner_of(svc).into_bytes()));
    }
    ops.extend(claims.release.iter().map(|k| delete_op(k)));
}
