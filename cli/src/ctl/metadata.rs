//! `label`, `annotate` and `scale`.

use super::*;

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// Kind, name, then `key=value` to set and `key-` to remove.
    #[arg(required = true, num_args = 3..)]
    args: Vec<String>,
    /// Replace values that are already set.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `label` and `annotate`: edit one metadata map with kubectl's rules, guarded by the
/// resourceVersion that was read (a concurrent change is a conflict, not lost).
/// get → `change` → update, again from a fresh read when a controller wrote the object in
/// between (a resourceVersion conflict), as kubectl's patches never conflict.
pub(crate) fn read_modify_write(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    resource: &str,
    ns: &str,
    name: &str,
    mut change: impl FnMut(&mut Value) -> Result<(), Failure>,
) -> Result<Value, Failure> {
    let mut attempt = 0;
    loop {
        let mut obj = rt.block_on(client.get(resource, ns, name))?;
        change(&mut obj)?;
        match rt.block_on(client.update(resource, &obj)) {
            Err(e) if e.code() == Code::Aborted && attempt < 5 => attempt += 1,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(obj),
        }
    }
}

pub fn set_meta_map(args: MetaArgs, field: &str, verb: &str) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let info = kind_arg(&args.args[0])?;
    let name = &args.args[1];
    let ns = client.config.namespace.clone();
    let obj = read_modify_write(&rt, &client, info.resource, &ns, name, |obj| {
        let map = obj["metadata"]
            .as_object_mut()
            .expect("metadata")
            .entry(field)
            .or_insert_with(|| Value::Object(Default::default()));
        for change in &args.args[2..] {
            if let Some(key) = change.strip_suffix('-') {
                map.as_object_mut().expect("map").remove(key);
            } else if let Some((k, v)) = change.split_once('=') {
                if let Some(old) = map.get(k).and_then(Value::as_str) {
                    if old != v && !args.overwrite {
                        return Err(Failure::Local(format!(
                            "'{k}' already has a value ({old}), and --overwrite is false"
                        )));
                    }
                }
                map[k] = Value::String(v.into());
            } else {
                return Err(Failure::Local(format!("invalid {verb} argument {change:?}: use key=value or key-")));
            }
        }
        Ok(())
    })?;
    println!("{} {verb}", display_name(info, &obj));
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// `deployment web`, `deploy/web`, `rs web`, `sts web`.
    #[arg(required = true)]
    target: Vec<String>,
    #[arg(long, required = true)]
    replicas: i64,
    #[command(flatten)]
    conn: Conn,
}

pub fn scale(args: ScaleArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let (kind, name) = match args.target.as_slice() {
        [one] => one.split_once('/').ok_or_else(|| Failure::Local("use TYPE NAME or TYPE/NAME".into()))?,
        [k, n] => (k.as_str(), n.as_str()),
        _ => return Err(Failure::Local("use TYPE NAME or TYPE/NAME".into())),
    };
    let info = kind_arg(kind)?;
    if !info.subresources.contains("scale") {
        return Err(Failure::Local(format!("cannot scale {}: it has no scale subresource", info.resource)));
    }
    let ns = client.config.namespace.clone();
    let obj = read_modify_write(&rt, &client, info.resource, &ns, name, |obj| {
        obj["spec"]["replicas"] = Value::from(args.replicas);
        args.conn.record_into(obj);
        Ok(())
    })?;
    println!("{} scaled", display_name(info, &obj));
    Ok(())
}
