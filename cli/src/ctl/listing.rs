//! `get`: tables as kubectl prints them, `-o json|yaml|name|wide|jsonpath`, `--watch`.

use super::*;
use skiff_api::table::{header as columns, row};
pub(crate) use skiff_api::table::{s, short_duration, since};

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kinds (`pods`, `po`, `deploy,rs,po`) and optional names, or `kind/name`.
    #[arg(required = true)]
    targets: Vec<String>,
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    #[arg(long, default_value = "")]
    field_selector: String,
    /// wide, yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short = 'o', long)]
    output: Option<String>,
    #[arg(long)]
    show_labels: bool,
    /// Keep metadata.managedFields in json and yaml output (kubectl hides them too).
    #[arg(long)]
    show_managed_fields: bool,
    /// After listing, print every change until interrupted (one kind).
    #[arg(short = 'w', long)]
    watch: bool,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let widths = table_widths(rows);
    for r in rows {
        print_row(r, &widths);
    }
}

pub(super) fn table_widths(rows: &[Vec<String>]) -> Vec<usize> {
    (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect()
}

pub(super) fn print_row(r: &[String], widths: &[usize]) {
    let cells: Vec<String> = r
        .iter()
        .enumerate()
        .map(
            |(c, v)| {
                if c + 1 == r.len() {
                    v.clone()
                } else {
                    format!("{v:<w$}", w = widths.get(c).copied().unwrap_or(0))
                }
            },
        )
        .collect();
    println!("{}", cells.join("   ").trim_end());
}

/// How `get` prints one kind's rows: the columns and the optional extras.
pub(super) struct TableShape {
    info: &'static KindInfo,
    wide: bool,
    /// Several kinds at once: names print as `kind/name`.
    multi: bool,
    namespace_column: bool,
    show_labels: bool,
}

impl TableShape {
    fn header(&self) -> Vec<String> {
        let mut header = columns(self.info, self.wide);
        if self.namespace_column {
            header.insert(0, "NAMESPACE".into());
        }
        if self.show_labels {
            header.push("LABELS".into());
        }
        header
    }

    fn row(&self, o: &Value) -> Vec<String> {
        let info = self.info;
        let mut r = row(info, o, self.wide);
        if self.multi {
            r[0] = format!("{}/{}", kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase()), r[0]);
        }
        if self.namespace_column {
            r.insert(0, s(o, "/metadata/namespace").to_string());
        }
        if self.show_labels {
            let labels = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            r.push(if labels.is_empty() { "<none>".into() } else { labels });
        }
        r
    }
}

pub fn get(args: GetArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    if matches!(args.targets[0].as_str(), "cs" | "componentstatus" | "componentstatuses") {
        return rt.block_on(component_statuses(&client));
    }
    let ns = if args.all_namespaces { String::new() } else { client.config.namespace.clone() };
    // `deploy,rs,po`, `po/web`, `po web db`.
    let mut requests: Vec<(&'static KindInfo, Vec<String>)> = Vec::new();
    let mut rest = args.targets.iter();
    if let Some(first) = rest.next() {
        if first.contains('/') {
            for t in &args.targets {
                let (k, n) = t.split_once('/').ok_or_else(|| Failure::Local(format!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'skiff get resource/<resource_name>' instead of 'skiff get resource resource/<resource_name>'): {t}")))?;
                requests.push((kind_arg(k)?, vec![n.to_string()]));
            }
        } else {
            let names: Vec<String> = rest.cloned().collect();
            for k in first.split(',') {
                requests.push((kind_arg(k)?, names.clone()));
            }
        }
    }
    let output = args.output.as_deref().unwrap_or("");
    if args.watch && requests.len() != 1 {
        return Err(Failure::Local("you may only specify a single resource type to watch".into()));
    }
    let mut widths: Vec<usize> = Vec::new();
    let mut list_version = String::new();
    let mut all_items: Vec<Value> = Vec::new();
    let mut errors = Vec::new();
    let multi = requests.len() > 1;
    let mut first_table = true;
    for (info, names) in requests.clone() {
        let mut items = Vec::new();
        if names.is_empty() {
            let list = rt.block_on(client.list(info.resource, &ns, &args.selector, &args.field_selector))?;
            items = list["items"].as_array().cloned().unwrap_or_default();
            list_version = s(&list, "/metadata/resourceVersion").to_string();
        } else {
            for n in &names {
                match rt.block_on(client.get(info.resource, &ns, n)) {
                    Ok(o) => items.push(o),
                    Err(e) => errors.push(Failure::Server(e)),
                }
            }
        }
        if !args.show_managed_fields {
            for o in &mut items {
                if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
            }
        }
        match output {
            "yaml" | "json" => all_items.extend(items),
            "name" => {
                for o in &items {
                    println!("{}/{}", kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase()), s(o, "/metadata/name"));
                }
            }
            "" | "wide" => {
                if items.is_empty() {
                    continue;
                }
                if !first_table {
                    println!();
                }
                first_table = false;
                let shape = TableShape {
                    info,
                    wide: output == "wide",
                    multi,
                    namespace_column: args.all_namespaces && info.namespaced,
                    show_labels: args.show_labels,
                };
                let mut rows = vec![shape.header()];
                rows.extend(items.iter().map(|o| shape.row(o)));
                print_table(&rows);
                widths = table_widths(&rows);
            }
            t if t.starts_with("jsonpath=") => all_items.extend(items),
            other => return Err(Failure::Local(format!("unable to match a printer suitable for the output format {other:?}, allowed formats are: json,jsonpath,name,wide,yaml"))),
        }
    }
    let jsonpath = output.strip_prefix("jsonpath=");
    if output == "yaml" || output == "json" || jsonpath.is_some() {
        // A single named object prints as itself; anything else as a List, as kubectl does.
        let named = args.targets.len() > 1 || args.targets[0].contains('/');
        let doc = if all_items.len() == 1 && errors.is_empty() && !multi && named {
            all_items.remove(0)
        } else {
            serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": all_items})
        };
        print_doc(output, &doc)?;
    } else if first_table && errors.is_empty() && output != "name" && !args.watch {
        eprintln!("No resources found{}.", if ns.is_empty() { String::new() } else { format!(" in {ns} namespace") });
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if args.watch {
        let (info, names) = &requests[0];
        let mut fields = args.field_selector.clone();
        if let [name] = names.as_slice() {
            fields = [fields, format!("metadata.name={name}")]
                .into_iter()
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join(",");
        }
        let shape = TableShape {
            info,
            wide: output == "wide",
            multi: false,
            namespace_column: args.all_namespaces && info.namespaced,
            show_labels: args.show_labels,
        };
        if widths.is_empty() && (output.is_empty() || output == "wide") {
            let header = shape.header();
            print_row(&header, &table_widths(std::slice::from_ref(&header)));
            widths = table_widths(&[header]);
        }
        return rt.block_on(watch_and_print(
            &client,
            info,
            &ns,
            &args.selector,
            &fields,
            list_version,
            output,
            &shape,
            &widths,
        ));
    }
    Ok(())
}

pub(super) fn print_doc(output: &str, doc: &Value) -> Outcome {
    if let Some(template) = output.strip_prefix("jsonpath=") {
        let template = template.trim_matches('\'');
        print!(
            "{}",
            skiff_client::jsonpath::render_template(template, doc)
                .map_err(|e| Failure::Local(format!("error executing jsonpath {template:?}: {e}")))?
        );
    } else if output == "yaml" {
        print!("{}", serde_yaml::to_string(doc).map_err(|e| Failure::Local(e.to_string()))?);
    } else {
        println!("{}", serde_json::to_string_pretty(doc).map_err(|e| Failure::Local(e.to_string()))?);
    }
    Ok(())
}

/// `get -w`: every change after `version`, printed as the listing was, until interrupted. A
/// broken stream (its master died) resumes from the last version seen through another master.
#[allow(clippy::too_many_arguments)]
pub(super) async fn watch_and_print(
    client: &Client,
    info: &'static KindInfo,
    ns: &str,
    labels: &str,
    fields: &str,
    mut version: String,
    output: &str,
    shape: &TableShape,
    widths: &[usize],
) -> Outcome {
    use std::io::Write;
    loop {
        let mut stream = match client.watch(info.resource, ns, labels, fields, &version).await {
            Ok(s) => s,
            Err(e) if e.code() == Code::Unavailable || e.code() == Code::DeadlineExceeded => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(Failure::Server(e)),
        };
        loop {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            };
            if ev.r#type == "ERROR" || ev.r#type == "BOOKMARK" {
                continue;
            }
            let obj: Value = serde_json::from_str(&ev.json).map_err(|e| Failure::Local(e.to_string()))?;
            version = s(&obj, "/metadata/resourceVersion").to_string();
            match output {
                "" | "wide" => print_row(&shape.row(&obj), widths),
                "name" => println!("{}/{}", info.kind.to_lowercase(), s(&obj, "/metadata/name")),
                "yaml" => println!(
                    "---\n{}",
                    serde_yaml::to_string(&obj).map_err(|e| Failure::Local(e.to_string()))?.trim_end()
                ),
                other => print_doc(other, &obj)?,
            }
            let _ = std::io::stdout().flush();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
