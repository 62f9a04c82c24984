//! The store's own etcd API is private: etcd's auth (users, roles, key-range permissions,
//! tokens) is on from a `skiff up` cluster's first entry, and the real etcdctl is refused
//! with etcd's own errors until it presents the root password — or a user's whose roles
//! cover the keys. Every refusal leaves the store as it was. Credential files are 0600 and
//! data directories 0700.

use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::RangeRequest;
use skiff_tests::{etcd_token, etcdctl, runtime, Cluster};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// etcdctl that must fail with `phrase` in its error.
fn refused(out: Output, what: &str, phrase: &str) {
    assert!(!out.status.success(), "{what} must be refused; it printed {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains(phrase), "{what}: error {:?} lacks {phrase:?}", stderr(&out));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn the_etcd_api_refuses_callers_without_credentials_and_checks_key_permissions() {
    let c = Cluster::up(3, &[]);
    let e1 = c.masters[0].etcd.clone();
    let e2 = c.masters[1].etcd.clone();
    let rt = runtime();
    c.etcdctl_ok(&e1, &["put", "greeting", "hello"]);
    c.etcdctl_ok(&e1, &["put", "app/config", "v1"]);
    let before = rt.block_on(c.revision(&e1)).unwrap();

    // phase: no credentials at all — etcd's own refusal, for reads, writes and membership
    let empty = "etcdserver: user name is empty";
    refused(etcdctl(&e1, &["get", "--prefix", "/registry/", "--keys-only"]), "listing the registry", empty);
    refused(etcdctl(&e2, &["get", "greeting"]), "a get", empty);
    refused(etcdctl(&e1, &["put", "greeting", "pwned"]), "a put", empty);
    refused(etcdctl(&e2, &["del", "--prefix", "/registry/"]), "a delete", empty);
    refused(
        etcdctl(&e1, &["member", "add", "rogue", "--learner", "--peer-urls=http://127.0.0.1:1"]),
        "member add",
        empty,
    );
    refused(etcdctl(&e1, &["user", "add", "mallory:pw"]), "user add", empty);
    refused(etcdctl(&e1, &["--user=root:guess", "get", "greeting"]), "a wrong password", "authentication failed");

    // phase: a forged or tampered token is refused as invalid
    let real = rt.block_on(c.root_token(&e1)).unwrap();
    let (signed, mac) = real.rsplit_once('.').unwrap();
    let flipped = if mac.starts_with('0') { "1" } else { "0" };
    for (what, token) in
        [("made up", "726f6f74.99999999999.00".to_string()), ("tampered", format!("{signed}.{flipped}{}", &mac[1..]))]
    {
        let err = rt
            .block_on(async {
                let ch = skiff_tests::channel(&e2).await.unwrap();
                KvClient::with_interceptor(ch, etcd_token(&token))
                    .range(RangeRequest { key: b"greeting".to_vec(), ..Default::default() })
                    .await
            })
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains("invalid auth token"), "{what}: {err:?}");
    }

    // phase: root may do everything; the Skiff API's objects are in the store it guards
    assert_eq!(c.etcdctl_ok(&e2, &["get", "greeting"]), "greeting\nhello\n");
    let registry = c.etcdctl_ok(&e2, &["get", "--prefix", "/registry/namespaces/", "--keys-only"]);
    assert!(registry.contains("/registry/namespaces/default"), "{registry}");

    // phase: a user whose role reads app/ reads that and nothing else, and writes nothing
    c.etcdctl_ok(&e1, &["role", "add", "app-reader"]);
    c.etcdctl_ok(&e1, &["role", "grant-permission", "app-reader", "--prefix=true", "read", "app/"]);
    c.etcdctl_ok(&e1, &["user", "add", "alice:secret"]);
    c.etcdctl_ok(&e1, &["user", "grant-role", "alice", "app-reader"]);
    let alice = |endpoint: &str, args: &[&str]| etcdctl(endpoint, &[&["--user=alice:secret"][..], args].concat());
    let read = alice(&e2, &["get", "--prefix", "app/"]);
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(String::from_utf8_lossy(&read.stdout), "app/config\nv1\n");
    let denied = "etcdserver: permission denied";
    refused(alice(&e2, &["get", "greeting"]), "alice reading outside app/", denied);
    refused(alice(&e1, &["get", "--prefix", "a"]), "alice reading a range wider than app/", denied);
    refused(alice(&e1, &["put", "app/config", "v2"]), "alice writing app/", denied);
    refused(alice(&e1, &["del", "app/config"]), "alice deleting app/", denied);
    refused(alice(&e1, &["member", "remove", "1"]), "alice removing a member", denied);
    refused(alice(&e1, &["compaction", "1"]), "alice compacting", denied);
    refused(alice(&e1, &["user", "grant-role", "alice", "root"]), "alice granting herself root", denied);
    refused(alice(&e1, &["endpoint", "hashkv"]), "alice hashing the store", denied);

    // phase: nothing any refused call tried happened
    let after = rt.block_on(c.revision(&e1)).unwrap();
    assert_eq!(after, before, "refused calls must not change the store");
    assert_eq!(c.etcdctl_ok(&e1, &["get", "greeting"]), "greeting\nhello\n");
    let members = c.etcdctl_ok(&e1, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(!c.etcdctl_ok(&e1, &["user", "list"]).contains("mallory"));
    let alice_roles = c.etcdctl_ok(&e1, &["user", "get", "alice"]);
    assert!(!alice_roles.contains("Roles: root") && alice_roles.contains("app-reader"), "{alice_roles}");

    // phase: users and roles live in the replicated store: a restarted master still knows them
    c.kill(1);
    let mut c = c;
    c.restart_stopped();
    let read = alice(&c.masters[0].etcd, &["get", "app/config"]);
    assert!(read.status.success(), "alice after master-1's restart: {}", stderr(&read));
    refused(alice(&c.masters[0].etcd, &["get", "greeting"]), "alice after the restart", denied);

    // phase: credentials and data are their owner's only
    let dir = c.dir.path();
    for file in ["admin.token", "tokens.csv", "client.json", "root.password"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(dir) & 0o077, 0, "the cluster directory is its owner's only");
    for m in &c.masters {
        assert_eq!(mode(&m.config), 0o600, "{} config (it holds the root password's hash)", m.name);
        assert_eq!(mode(m.config.parent().unwrap()), 0o700, "{} home", m.name);
        assert_eq!(mode(&m.data_dir), 0o700, "{} data dir", m.name);
    }
}
