//! Creates retried after an unknown outcome: each master of this cluster loses the reply to
//! the first create it commits in namespace `lossy` (a testing switch), as a connection broken
//! after the commit would. The client retries on another master with the same request id and
//! gets the object the first attempt made — one object, not two, and no AlreadyExists.

use serde_json::Value;
use skiff_tests::Cluster;

const LOST_REPLY: &str = "testing: losing the reply to a committed create";

/// How many masters' logs say they lost a create's reply.
fn lost_replies(c: &Cluster) -> usize {
    c.masters.iter().filter(|m| std::fs::read_to_string(&m.log).unwrap_or_default().contains(LOST_REPLY)).count()
}

fn config_maps(c: &Cluster) -> Vec<String> {
    let list: Value = serde_json::from_str(&c.ctl_ok(&["get", "configmaps", "-n", "lossy", "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_create_whose_reply_was_lost_makes_one_object() {
    let c = Cluster::up_with_env(3, &[], &[("SKIFF_TESTING_LOSE_CREATE_REPLIES", "lossy")]);
    c.ctl_ok(&["create", "namespace", "lossy"]);
    assert_eq!(lost_replies(&c), 0, "a reply was lost before the test's first create");

    let manifest = c.dir.path().join("generated.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: gen-\n  namespace: lossy\ndata:\n  k: v\n",
    )
    .unwrap();
    let said = c.ctl_ok(&["create", "-f", manifest.to_str().unwrap()]);
    assert_eq!(lost_replies(&c), 1, "the first attempt's reply was not lost; the test proved nothing");
    let names = config_maps(&c);
    let generated: Vec<&String> = names.iter().filter(|n| n.starts_with("gen-")).collect();
    assert_eq!(generated.len(), 1, "a retried generateName create made {generated:?}");
    assert!(said.contains(generated[0].as_str()), "the client was told of another object: {said}");

    // Named creates, one through each master that has not lost a reply yet (a client config
    // listing it first): the retry is not refused as AlreadyExists for the client's own object.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("client.json")).unwrap()).unwrap();
    for first in 1..c.masters.len() {
        let mut rotated = config.clone();
        rotated["clusters"][0]["endpoints"].as_array_mut().unwrap().rotate_left(first);
        let path = c.dir.path().join(format!("client-{first}.json"));
        std::fs::write(&path, rotated.to_string()).unwrap();
        let before = lost_replies(&c);
        let name = format!("named-{first}");
        let args = ["create", "configmap", &name, "-n", "lossy", "--config", path.to_str().unwrap()];
        let out = c.ctl(&[&args[..], &["--from-literal", "k=v"]].concat());
        assert!(out.status.success(), "create {name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(lost_replies(&c), before + 1, "the create of {name} through master {} lost no reply", first + 1);
        let names = config_maps(&c);
        assert_eq!(names.iter().filter(|n| **n == name).count(), 1, "{name} in {names:?}");
    }
}
