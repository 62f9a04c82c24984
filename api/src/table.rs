//! The columns `kubectl get` shows for each kind, in one place: the REST API renders them as a
//! `meta.k8s.io/v1` Table (kubectl asks for one with `Accept: …;as=Table`), and the `skiff`
//! CLI prints the same cells. Column names are Kubernetes' own (`Up-to-date`, `Port(s)`);
//! kubectl shows them upper-cased. Priority 1 columns appear with `-o wide` only.

use crate::kinds::KindInfo;
use serde_json::{json, Value};

/// One column: its name, its OpenAPI type and whether it shows only with `-o wide`.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub wide: bool,
    pub description: &'static str,
}

const fn col(name: &'static str, description: &'static str) -> Column {
    Column { name, kind: "string", wide: false, description }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column { name, kind: "string", wide: true, description }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    wide: false,
    description:
        "Name must be unique within a namespace. More info: http://kubernetes.io/docs/user-guide/identifiers#names",
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    wide: false,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

/// A kind's columns, `-o wide` ones included.
pub fn columns(info: &KindInfo) -> Vec<Column> {
    match info.kind {
        "Pod" => vec![
            NAME,
            col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "The aggregate status of the containers in this pod."),
            Column { kind: "integer", ..col("Restarts", "The number of times the containers in this pod have been restarted.") },
            AGE,
            wide("IP", "IP address allocated to the pod. Routable at least within the cluster."),
            wide("Node", "Name of the Node this pod is bound to."),
            wide("Nominated Node", "Name of the node where the pod may run after preemption."),
            wide("Readiness Gates", "The readiness gates of the pod."),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "Number of the pod with ready state"),
            Column { kind: "integer", ..col("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.") },
            Column { kind: "integer", ..col("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.") },
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide("Images", "Images referenced by each container in the template."),
            wide("Selector", "Label selector for pods."),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            NAME,
            Column { kind: "integer", ..col("Desired", "Number of desired pods.") },
            Column { kind: "integer", ..col("Current", "Most recently observed number of replicas.") },
            Column { kind: "integer", ..col("Ready", "The number of ready replicas for this replica set.") },
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide("Images", "Images referenced by each container in the template."),
            wide("Selector", "Label selector for pods."),
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "Number of the pod with ready state"),
            AGE,
            wide("Containers", "Names of each container in the template."),
            wide("Images", "Images referenced by each container in the template."),
        ],
        "DaemonSet" => vec![
            NAME,
            Column { kind: "integer", ..col("Desired", "The total number of nodes that should be running the daemon pod.") },
            Column { kind: "integer", ..col("Current", "The number of nodes that are running at least 1 daemon pod.") },
            Column { kind: "integer", ..col("Ready", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.") },
            Column { kind: "integer", ..col("Up-to-date", "The total number of nodes that are running updated daemon pod.") },
            Column { kind: "integer", ..col("Available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.") },
            col("Node Selector", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            AGE,
        ],
        "Namespace" => vec![NAME, col("Status", "The status of the namespace"), AGE],
        "Service" => vec![
            NAME,
            col("Type", "Type of the service."),
            col("Cluster-IP", "Cluster IP of the service."),
            col("External-IP", "External IP of the service."),
            col("Port(s)", "Port(s) of the service."),
            AGE,
            wide("Selector", "Route service traffic to pods with label keys and values matching this selector."),
        ],
        "Node" => vec![
            NAME,
            col("Status", "The status of the node"),
            col("Roles", "The roles of the node"),
            AGE,
            col("Version", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of internal IPs reachable to the node."),
            wide("External-IP", "List of external IPs reachable to the node."),
            wide("OS-Image", "OS Image reported by the node from /etc/os-release."),
            wide("Kernel-Version", "Kernel Version reported by the node."),
            wide("Container-Runtime", "Container Runtime Version reported by the node."),
        ],
        "Secret" => {
            vec![NAME, col("Type", "The type of the secret"), Column { kind: "integer", ..col("Data", "Number of data items.") }, AGE]
        }
        "ConfigMap" => vec![NAME, Column { kind: "integer", ..col("Data", "Number of data items.") }, AGE],
        "Job" => vec![
            NAME,
            col("Status", "Status of the job."),
            col("Completions", "The completion status of the job."),
            col("Duration", "Time required to complete the job."),
            AGE,
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule", "The schedule in Cron format."),
            col("Timezone", "The time zone the schedule is interpreted in."),
            col("Suspend", "Whether the cron job is suspended."),
            Column { kind: "integer", ..col("Active", "The number of currently running jobs.") },
            col("Last Schedule", "When the job was last successfully scheduled."),
            AGE,
        ],
        "Event" => vec![
            col("Last Seen", "Time since the event was last seen."),
            col("Type", "The event's type (Normal, Warning)."),
            col("Reason", "Short reason for the event."),
            col("Object", "The object the event is about."),
            col("Message", "A human-readable description of the event."),
        ],
        "Endpoints" => vec![NAME, col("Endpoints", "The addresses and ports of the service's endpoints."), AGE],
        "Ingress" => vec![
            NAME,
            col("Class", "The ingress class."),
            col("Hosts", "The hosts the ingress serves."),
            col("Address", "The address the ingress is reachable at."),
            col("Ports", "The ports the ingress listens on."),
            AGE,
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "The phase of the claim."),
            col("Volume", "The volume bound to the claim."),
            col("Capacity", "The capacity of the bound volume."),
            col("Access Modes", "The access modes of the claim."),
            col("StorageClass", "The storage class the claim asks for."),
            AGE,
        ],
        "PersistentVolume" => vec![
            NAME,
            col("Capacity", "The volume's capacity."),
            col("Access Modes", "The volume's access modes."),
            col("Reclaim Policy", "What happens to the volume when its claim is released."),
            col("Status", "The phase of the volume."),
            col("Claim", "The claim bound to the volume."),
            col("StorageClass", "The volume's storage class."),
            AGE,
        ],
        "ServiceAccount" => vec![NAME, Column { kind: "integer", ..col("Secrets", "Number of secrets.") }, AGE],
        "ResourceQuota" => vec![
            NAME,
            AGE,
            col("Request", "The used and hard amounts of the quota's resources that are not limits."),
            col("Limit", "The used and hard amounts of the quota's limits."),
        ],
        "PriorityClass" => vec![
            NAME,
            Column { kind: "integer", ..col("Value", "The value of the priority class.") },
            col("Global-Default", "Whether pods without a priorityClassName get this class."),
            AGE,
            col("PreemptionPolicy", "What pods of this class may do to lower-priority pods."),
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            col("Min Available", "How many (or what share) of the pods must stay available."),
            col("Max Unavailable", "How many (or what share) of the pods may be unavailable."),
            Column { kind: "integer", ..col("Allowed Disruptions", "How many pods may be evicted now.") },
            AGE,
        ],
        "NetworkPolicy" => vec![NAME, col("Pod-Selector", "The pods the policy applies to."), AGE],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType", "The kind of address the endpoints have."),
            col("Ports", "The ports the endpoints serve."),
            col("Endpoints", "The endpoints' addresses."),
            AGE,
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            col("Reference", "The object the autoscaler scales."),
            col("Targets", "Each metric's current value and target."),
            col("MinPods", "The fewest replicas it scales down to."),
            Column { kind: "integer", ..col("MaxPods", "The most replicas it scales up to.") },
            Column { kind: "integer", ..col("Replicas", "The replicas it last saw.") },
            AGE,
        ],
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            vec![NAME, col("Created At", "When the object was created.")]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            col("Role", "The role the binding grants."),
            AGE,
            wide("Users", "The users the binding names."),
            wide("Groups", "The groups the binding names."),
            wide("ServiceAccounts", "The service accounts the binding names."),
        ],
        _ => vec![NAME, AGE],
    }
}

/// A kind's cells for `o`, one per [`columns`] entry.
pub fn cells(info: &KindInfo, o: &Value) -> Vec<String> {
    let name = s(o, "/metadata/name").to_string();
    match info.kind {
        "Pod" => {
            let statuses =
                o.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, |a| a.len());
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
            let gates = o.pointer("/spec/readinessGates").and_then(Value::as_array).map_or(0, |a| a.len());
            let gates = if gates == 0 {
                none()
            } else {
                let passed = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|c| {
                        c["status"] == "True"
                            && o.pointer("/spec/readinessGates")
                                .and_then(Value::as_array)
                                .is_some_and(|g| g.iter().any(|g| g["conditionType"] == c["type"]))
                    })
                    .count();
                format!("{passed}/{gates}")
            };
            vec![
                name,
                format!("{ready}/{total}"),
                pod_status(o),
                restarts.to_string(),
                age(o),
                or_none(s(o, "/status/podIP")),
                or_none(s(o, "/spec/nodeName")),
                or_none(s(o, "/status/nominatedNodeName")),
                gates,
            ]
        }
        "Deployment" => {
            let mut r = vec![
                name,
                format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")),
                i(o, "/status/updatedReplicas").to_string(),
                i(o, "/status/availableReplicas").to_string(),
                age(o),
            ];
            r.extend(template_columns(o));
            r.push(selector(o));
            r
        }
        "ReplicaSet" | "ReplicationController" => {
            let mut r = vec![
                name,
                i(o, "/spec/replicas").to_string(),
                i(o, "/status/replicas").to_string(),
                i(o, "/status/readyReplicas").to_string(),
                age(o),
            ];
            r.extend(template_columns(o));
            r.push(selector(o));
            r
        }
        "StatefulSet" => {
            let mut r = vec![name, format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")), age(o)];
            r.extend(template_columns(o));
            r
        }
        "DaemonSet" => vec![
            name,
            i(o, "/status/desiredNumberScheduled").to_string(),
            i(o, "/status/currentNumberScheduled").to_string(),
            i(o, "/status/numberReady").to_string(),
            i(o, "/status/updatedNumberScheduled").to_string(),
            i(o, "/status/numberAvailable").to_string(),
            or_none(&pairs(o.pointer("/spec/template/spec/nodeSelector"))),
            age(o),
        ],
        "Namespace" => vec![name, s(o, "/status/phase").to_string(), age(o)],
        "Service" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) => format!("{}:{np}/{}", p["port"], s(p, "/protocol")),
                    None => format!("{}/{}", p["port"], s(p, "/protocol")),
                })
                .collect();
            // As kubectl: an ExternalName's name, a load balancer's ingress (or <pending>).
            let ingress: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let external = match s(o, "/spec/type") {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" if ingress.is_empty() => "<pending>".into(),
                "LoadBalancer" => ingress.join(","),
                _ => none(),
            };
            vec![
                name,
                s(o, "/spec/type").to_string(),
                or_none(s(o, "/spec/clusterIP")),
                external,
                or_none(&ports.join(",")),
                age(o),
                or_none(&pairs(o.pointer("/spec/selector"))),
            ]
        }
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| if c["status"] == "True" { "Ready" } else { "NotReady" });
            let status = if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let address = |kind: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|a| a["type"] == kind))
                    .map_or(none(), |a| s(a, "/address").to_string())
            };
            vec![
                name,
                status,
                or_none(&roles.join(",")),
                age(o),
                s(o, "/status/nodeInfo/kubeletVersion").to_string(),
                address("InternalIP"),
                address("ExternalIP"),
                or_unknown(s(o, "/status/nodeInfo/osImage")),
                or_unknown(s(o, "/status/nodeInfo/kernelVersion")),
                or_unknown(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "ConfigMap" | "Secret" => {
            let n = ["data", "binaryData", "stringData"]
                .iter()
                .filter_map(|f| o.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            if info.kind == "Secret" {
                let kind = match s(o, "/type") {
                    "" => "Opaque",
                    t => t,
                };
                vec![name, kind.to_string(), n.to_string(), age(o)]
            } else {
                vec![name, n.to_string(), age(o)]
            }
        }
        "Job" => {
            let status = if condition_true(o, "Complete") {
                "Complete"
            } else if condition_true(o, "Failed") {
                "Failed"
            } else if o.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{}/{c}", i(o, "/status/succeeded")),
                None => format!("{}/1 of {}", i(o, "/status/succeeded"), i(o, "/spec/parallelism").max(1)),
            };
            let duration = match (
                o.pointer("/status/startTime").and_then(Value::as_str).and_then(skiff_proto::time::parse_rfc3339),
                o.pointer("/status/completionTime").and_then(Value::as_str).and_then(skiff_proto::time::parse_rfc3339),
            ) {
                (Some(start), Some(end)) => short_duration(end - start),
                (Some(start), None) => short_duration(skiff_proto::time::now_secs() - start),
                _ => String::new(),
            };
            vec![name, status.into(), completions, duration, age(o)]
        }
        "CronJob" => vec![
            name,
            s(o, "/spec/schedule").to_string(),
            or_none(s(o, "/spec/timeZone")),
            if o.pointer("/spec/suspend") == Some(&Value::Bool(true)) { "True" } else { "False" }.into(),
            o.pointer("/status/active").and_then(Value::as_array).map_or(0, |a| a.len()).to_string(),
            if s(o, "/status/lastScheduleTime").is_empty() { none() } else { since(o, "/status/lastScheduleTime") },
            age(o),
        ],
        "Event" => {
            let last = if s(o, "/lastTimestamp").is_empty() { "/metadata/creationTimestamp" } else { "/lastTimestamp" };
            let object = format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name"));
            vec![
                since(o, last),
                s(o, "/type").to_string(),
                s(o, "/reason").to_string(),
                object,
                s(o, "/message").to_string(),
            ]
        }
        "Endpoints" => {
            let mut shown = Vec::new();
            for subset in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| i(p, "/port"))
                    .collect();
                for a in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    if ports.is_empty() {
                        shown.push(s(a, "/ip").to_string());
                    }
                    shown.extend(ports.iter().map(|p| format!("{}:{p}", s(a, "/ip"))));
                }
            }
            let more = shown.len().saturating_sub(3);
            shown.truncate(3);
            let mut text = shown.join(",");
            if more > 0 {
                text.push_str(&format!(" + {more} more..."));
            }
            vec![name, or_none(&text), age(o)]
        }
        "Ingress" => {
            let hosts: Vec<&str> = o
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*"))
                .collect();
            let address: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let tls = o.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            vec![
                name,
                or_none(s(o, "/spec/ingressClassName")),
                if hosts.is_empty() { "*".into() } else { hosts.join(",") },
                address.join(","),
                if tls { "80, 443" } else { "80" }.into(),
                age(o),
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            s(o, "/status/phase").to_string(),
            s(o, "/spec/volumeName").to_string(),
            s(o, "/status/capacity/storage").to_string(),
            access_modes(o.pointer("/status/accessModes")),
            or_unset(s(o, "/spec/storageClassName")),
            age(o),
        ],
        "PersistentVolume" => {
            let claim = match (s(o, "/spec/claimRef/namespace"), s(o, "/spec/claimRef/name")) {
                (_, "") => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                s(o, "/spec/capacity/storage").to_string(),
                access_modes(o.pointer("/spec/accessModes")),
                s(o, "/spec/persistentVolumeReclaimPolicy").to_string(),
                s(o, "/status/phase").to_string(),
                claim,
                s(o, "/spec/storageClassName").to_string(),
                age(o),
            ]
        }
        "ServiceAccount" => {
            vec![name, o.get("secrets").and_then(Value::as_array).map_or(0, |a| a.len()).to_string(), age(o)]
        }
        "ResourceQuota" => {
            // `pods: 1/50, requests.cpu: 100m/1`, as kubectl's printer: limits in their own column.
            let hard = o.pointer("/spec/hard").and_then(Value::as_object).cloned().unwrap_or_default();
            let used =
                |r: &str| o.pointer(&format!("/status/used/{r}")).and_then(Value::as_str).unwrap_or("0").to_string();
            let side = |limits: bool| {
                hard.iter()
                    .filter(|(r, _)| r.starts_with("limits.") == limits)
                    .map(|(r, h)| format!("{r}: {}/{}", used(r), h.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![name, age(o), side(false), side(true)]
        }
        "PriorityClass" => vec![
            name,
            o.get("value").and_then(Value::as_i64).unwrap_or(0).to_string(),
            (o.get("globalDefault") == Some(&Value::Bool(true))).to_string(),
            age(o),
            s(o, "/preemptionPolicy").to_string(),
        ],
        "PodDisruptionBudget" => {
            let either = |p: &str| match o.pointer(p) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "N/A".to_string(),
            };
            let allowed = o.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
            vec![name, either("/spec/minAvailable"), either("/spec/maxUnavailable"), allowed.to_string(), age(o)]
        }
        "NetworkPolicy" => vec![name, label_selector(o.pointer("/spec/podSelector")), age(o)],
        "EndpointSlice" => {
            let slice: skiff_proto::api::EndpointSlice = serde_json::from_value(o.clone()).unwrap_or_default();
            let ports: Vec<String> = slice.ports.iter().filter_map(|p| p.port.map(|n| n.to_string())).collect();
            let addresses: Vec<&str> = slice.endpoints.iter().flat_map(|e| &e.addresses).map(String::as_str).collect();
            let endpoints = match addresses.len() {
                0 => "<unset>".to_string(),
                n if n > 3 => format!("{} + {} more...", addresses[..3].join(","), n - 3),
                _ => addresses.join(","),
            };
            let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
            vec![name, slice.address_type, ports, endpoints, age(o)]
        }
        "HorizontalPodAutoscaler" => {
            let hpa: skiff_proto::api::HorizontalPodAutoscaler = serde_json::from_value(o.clone()).unwrap_or_default();
            let (spec, status) = (hpa.spec.unwrap_or_default(), hpa.status.unwrap_or_default());
            let target = spec.scale_target_ref.unwrap_or_default();
            vec![
                name,
                format!("{}/{}", target.kind, target.name),
                autoscaler_targets(&spec.metrics, &status.current_metrics),
                spec.min_replicas.map_or("<unset>".to_string(), |m| m.to_string()),
                spec.max_replicas.to_string(),
                status.current_replicas.to_string(),
                age(o),
            ]
        }
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            vec![name, s(o, "/metadata/creationTimestamp").to_string()]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = o
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|x| match s(x, "/namespace") {
                        "" => s(x, "/name").to_string(),
                        ns => format!("{ns}/{}", s(x, "/name")),
                    })
                    .collect();
                names.join(", ")
            };
            vec![
                name,
                format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name")),
                age(o),
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        _ => vec![name, age(o)],
    }
}

/// `o`'s row as kubectl prints it: the columns without priority, or all with `wide`.
pub fn row(info: &KindInfo, o: &Value, wide: bool) -> Vec<String> {
    columns(info).iter().zip(cells(info, o)).filter(|(c, _)| wide || !c.wide).map(|(_, v)| v).collect()
}

/// The header kubectl prints: the column names upper-cased.
pub fn header(info: &KindInfo, wide: bool) -> Vec<String> {
    columns(info).iter().filter(|c| wide || !c.wide).map(|c| c.name.to_uppercase()).collect()
}

/// What a Table row carries besides its cells (`?includeObject=`): nothing, the object's
/// metadata (the default) or the whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: &str) -> Result<Include, String> {
        match v {
            "None" => Ok(Include::None),
            "" | "Metadata" => Ok(Include::Metadata),
            "Object" => Ok(Include::Object),
            other => Err(format!(
                "includeObject: unsupported value {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
            )),
        }
    }
}

/// A `meta.k8s.io/v1` Table of `objects`, with `metadata` (resourceVersion, continue) as the
/// list had it.
pub fn table<'a>(
    info: &KindInfo,
    objects: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    include: Include,
) -> Value {
    let columns: Vec<Value> = columns(info)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": i32::from(c.wide),
            })
        })
        .collect();
    let rows = objects.into_iter().map(|o| (columns_typed(info, o), o));
    assemble(columns, rows, metadata, include)
}

/// A Table of a custom kind: the name, then the definition's printer columns (or the age, if
/// it names none), each cell read by its JSONPath and typed as the column says; `date` cells
/// show as ages, as Kubernetes serves them.
pub fn custom_table<'a>(
    printer_columns: &[skiff_proto::api::CustomResourceColumnDefinition],
    objects: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    include: Include,
) -> Value {
    let age = skiff_proto::api::CustomResourceColumnDefinition {
        name: "Age".into(),
        r#type: "date".into(),
        json_path: ".metadata.creationTimestamp".into(),
        ..Default::default()
    };
    let printed = if printer_columns.is_empty() { std::slice::from_ref(&age) } else { printer_columns };
    let name = json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0});
    let columns = std::iter::once(name)
        .chain(printed.iter().map(|c| {
            json!({"name": c.name, "type": c.r#type, "format": c.format, "description": c.description, "priority": c.priority})
        }))
        .collect();
    let rows = objects.into_iter().map(|o| {
        let cells =
            std::iter::once(json!(crate::object::name(o))).chain(printed.iter().map(|c| custom_cell(c, o))).collect();
        (cells, o)
    });
    assemble(columns, rows, metadata, include)
}

fn custom_cell(column: &skiff_proto::api::CustomResourceColumnDefinition, o: &Value) -> Value {
    let found = skiff_proto::jsonpath::eval(&column.json_path, o).unwrap_or_default();
    let value = match found.as_slice() {
        [] => return Value::Null,
        [one] => one.clone(),
        many => json!(many
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(",")),
    };
    match (column.r#type.as_str(), &value) {
        ("date", Value::String(ts)) => match skiff_proto::time::parse_rfc3339(ts) {
            Some(then) => json!(short_duration(skiff_proto::time::now_secs() - then)),
            None => Value::Null,
        },
        ("integer" | "number" | "boolean", v) if !v.is_string() => value,
        (_, Value::String(_)) => value,
        (_, v) => json!(v.to_string()),
    }
}

/// A Table from its column definitions and each row's cells with its object.
fn assemble<'a>(
    columns: Vec<Value>,
    rows: impl Iterator<Item = (Vec<Value>, &'a Value)>,
    metadata: Value,
    include: Include,
) -> Value {
    let rows: Vec<Value> = rows
        .map(|(cells, o)| {
            let object = match include {
                Include::None => Value::Null,
                Include::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                }),
                Include::Object => o.clone(),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The cells as JSON: integers as numbers, the rest as strings.
fn columns_typed(info: &KindInfo, o: &Value) -> Vec<Value> {
    columns(info)
        .iter()
        .zip(cells(info, o))
        .map(|(c, v)| match (c.kind, v.parse::<i64>()) {
            ("integer", Ok(n)) => json!(n),
            _ => json!(v),
        })
        .collect()
}

fn none() -> String {
    "<none>".into()
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        none()
    } else {
        v.to_string()
    }
}

fn or_unknown(v: &str) -> String {
    if v.is_empty() {
        "<unknown>".into()
    } else {
        v.to_string()
    }
}

fn or_unset(v: &str) -> String {
    if v.is_empty() {
        "<unset>".into()
    } else {
        v.to_string()
    }
}

fn condition_true(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// `a=b,c=d` of a string map.
pub(crate) fn pairs(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// An autoscaler's metrics as kubectl shows them: `cpu: 40%/50%`, each current value from the
/// status entry in the same place, `<unknown>` until there is one; two at most.
fn autoscaler_targets(specs: &[skiff_proto::api::MetricSpec], statuses: &[skiff_proto::api::MetricStatus]) -> String {
    use skiff_proto::api::{MetricTarget, MetricValueStatus};
    if specs.is_empty() {
        return "<none>".into();
    }
    let unknown = || "<unknown>".to_string();
    // A target and the current value beside it: a utilization, else an average, else a value.
    let pair = |target: Option<&MetricTarget>, current: Option<&MetricValueStatus>| {
        let t = target.cloned().unwrap_or_default();
        if let Some(u) = t.average_utilization {
            let now = current.and_then(|c| c.average_utilization).map_or_else(unknown, |c| format!("{c}%"));
            (now, format!("{u}%"), false)
        } else if !t.average_value.is_empty() {
            (current.map_or_else(unknown, |c| c.average_value.clone()), t.average_value, true)
        } else {
            (current.map_or_else(unknown, |c| c.value.clone()), t.value, false)
        }
    };
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            match spec.r#type.as_str() {
                "Resource" => {
                    let r = spec.resource.clone().unwrap_or_default();
                    let current = status.and_then(|s| s.resource.as_ref()).and_then(|r| r.current.as_ref());
                    let (now, target, _) = pair(r.target.as_ref(), current);
                    format!("{}: {now}/{target}", r.name)
                }
                "ContainerResource" => {
                    let r = spec.container_resource.clone().unwrap_or_default();
                    let current = status.and_then(|s| s.container_resource.as_ref()).and_then(|r| r.current.as_ref());
                    let (now, target, _) = pair(r.target.as_ref(), current);
                    format!("{}: {now}/{target}", r.name)
                }
                "Pods" => {
                    let current = status.and_then(|s| s.pods.as_ref()).and_then(|p| p.current.as_ref());
                    let (now, target, _) = pair(spec.pods.as_ref().and_then(|p| p.target.as_ref()), current);
                    format!("{now}/{target}")
                }
                "Object" | "External" => {
                    let (target, current) = match spec.r#type.as_str() {
                        "Object" => (
                            spec.object.as_ref().and_then(|o| o.target.as_ref()),
                            status.and_then(|s| s.object.as_ref()).and_then(|o| o.current.as_ref()),
                        ),
                        _ => (
                            spec.external.as_ref().and_then(|e| e.target.as_ref()),
                            status.and_then(|s| s.external.as_ref()).and_then(|e| e.current.as_ref()),
                        ),
                    };
                    let (now, target, average) = pair(target, current);
                    if average {
                        format!("{now}/{target} (avg)")
                    } else {
                        format!("{now}/{target}")
                    }
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    if list.len() > 2 {
        return format!("{} + {} more...", list[..2].join(", "), list.len() - 2);
    }
    list.join(", ")
}

/// A workload's label selector as kubectl shows it.
fn selector(o: &Value) -> String {
    if o["kind"] == "ReplicationController" {
        return pairs(o.pointer("/spec/selector"));
    }
    label_selector(o.pointer("/spec/selector"))
}

/// A LabelSelector as kubectl's `FormatLabelSelector` writes it (`<none>` when empty).
fn label_selector(sel: Option<&Value>) -> String {
    let sel = sel.unwrap_or(&Value::Null);
    let mut parts = vec![pairs(sel.get("matchLabels"))];
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match s(e, "/operator") {
            "In" => format!("{} in ({})", s(e, "/key"), values.join(",")),
            "NotIn" => format!("{} notin ({})", s(e, "/key"), values.join(",")),
            "Exists" => s(e, "/key").to_string(),
            _ => format!("!{}", s(e, "/key")),
        });
    }
    parts.retain(|p| !p.is_empty());
    or_none(&parts.join(","))
}

/// The Containers and Images columns of a workload's pod template.
fn template_columns(o: &Value) -> [String; 2] {
    let containers: Vec<&Value> =
        o.pointer("/spec/template/spec/containers").and_then(Value::as_array).into_iter().flatten().collect();
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    [names.join(","), images.join(",")]
}

/// `RWO,ROX` as kubectl abbreviates access modes.
fn access_modes(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// kubectl's short ages: 45s, 5m, 3h, 12d.
pub fn age(obj: &Value) -> String {
    since(obj, "/metadata/creationTimestamp")
}

/// kubectl's short age of the timestamp at `pointer` (`45s`, `12m`, `5h`, `3d`).
pub fn since(obj: &Value, pointer: &str) -> String {
    let Some(ts) = obj.pointer(pointer).and_then(Value::as_str) else {
        return "<unknown>".into();
    };
    let Some(then) = skiff_proto::time::parse_rfc3339(ts) else { return "<unknown>".into() };
    short_duration(skiff_proto::time::now_secs() - then)
}

/// kubectl's short form of `seconds` (`45s`, `12m`, `5h`, `3d`).
pub fn short_duration(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

pub fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's pod STATUS column.
pub fn pod_status(pod: &Value) -> String {
    if !s(pod, "/metadata/deletionTimestamp").is_empty() {
        return "Terminating".into();
    }
    let inits = pod.pointer("/spec/initContainers").and_then(Value::as_array).map_or(0, |a| a.len());
    let init_statuses =
        pod.pointer("/status/initContainerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    for (n, st) in init_statuses.iter().enumerate() {
        // proto3 JSON leaves out a zero exitCode.
        if st.pointer("/state/terminated").is_some() && i(st, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if let Some(r) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if r != "PodInitializing" {
                return format!("Init:{r}");
            }
        }
        return format!("Init:{n}/{inits}");
    }
    for st in pod.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
            return r.into();
        }
        if let Some(r) = st.pointer("/state/terminated/reason").and_then(Value::as_str) {
            return r.into();
        }
    }
    if inits > 0
        && init_statuses.len() < inits
        && s(pod, "/status/phase") == "Pending"
        && !s(pod, "/spec/nodeName").is_empty()
    {
        return format!("Init:0/{inits}");
    }
    let phase = s(pod, "/status/phase");
    let gated = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated");
    let reason = s(pod, "/status/reason");
    if gated && phase == "Pending" {
        "SchedulingGated".into()
    } else if !reason.is_empty() {
        // Evicted, PodOSNotSupported, …: the node's reason for the whole pod.
        reason.into()
    } else if phase.is_empty() {
        "Pending".into()
    } else {
        phase.into()
    }
}
