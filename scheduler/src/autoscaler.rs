//! The horizontal pod autoscaler controller (autoscaling/v2): every [`SYNC`] it samples the
//! pods' cpu and memory from the node daemons (the figures `kubectl top` shows), and for each
//! HorizontalPodAutoscaler computes the replicas its metrics ask for, stabilizes them over the
//! behaviour's windows, limits the rate by its policies, and sets the target's replicas — as
//! Kubernetes' controller does, with its condition reasons, messages and events.
//!
//! Only resource metrics (Resource, ContainerResource) have a source here; Pods, Object and
//! External metrics need a custom metrics API Skiff does not serve, and are reported as
//! metrics the autoscaler could not get. Recent recommendations and rescales are kept in
//! memory, as Kubernetes keeps them: a new leader starts without them.

use crate::controller::{self, Cache, Command, Note, Object, Reconciler};
use crate::objects::{deleting, phase};
use skiff_client::informer::{ObjectKey, Store};
use skiff_client::queue::WorkQueue;
use skiff_client::Client;
use skiff_proto::api::{
    Condition, ContainerResourceMetricStatus, Deployment, DeploymentSpec, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerStatus, HpaScalingPolicy, HpaScalingRules, LabelSelector, MetricSpec, MetricStatus,
    MetricValueStatus, Node, Pod, PodUsage, ReplicaSet, ReplicaSetSpec, ReplicationController,
    ReplicationControllerSpec, ResourceMetricStatus, StatefulSet, StatefulSetSpec,
};
use skiff_proto::quantity::{format_quantity, parse_quantity};
use skiff_proto::time::{now_secs, rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often metrics are sampled and every autoscaler reconciled (Kubernetes'
/// `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC: Duration = Duration::from_secs(15);
/// How far the usage ratio may be from 1 before the replicas change.
const TOLERANCE: f64 = 0.1;
/// The scale-down stabilization window when the behaviour names none.
const DOWNSCALE_WINDOW_SECS: i64 = 300;
/// How long a node has to answer for its pods' usage.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest policy period validation allows: older rescales count for nothing.
const MAX_PERIOD_SECS: i64 = 1800;

const KIND: &str = "HorizontalPodAutoscaler";
const API_VERSION: &str = "autoscaling/v2";

/// What the controller remembers of one autoscaler.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Each reconcile's recommendation before stabilization, and when it was made.
    recommendations: Vec<(i64, i32)>,
    /// Each rescale: when, and by how many replicas (negative: down).
    rescales: Vec<(i64, i32)>,
}

pub struct Autoscalers {
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub deployments: Store<Deployment>,
    pub replica_sets: Store<ReplicaSet>,
    pub replication_controllers: Store<ReplicationController>,
    pub stateful_sets: Store<StatefulSet>,
    /// Asks the node daemons (through the masters) for their pods' usage.
    pub client: Client,
    pub leadership: tokio::sync::watch::Receiver<Option<u64>>,
    /// The last sample of each pod, by namespace and name.
    pub samples: Mutex<HashMap<(String, String), PodUsage>>,
    pub history: Mutex<HashMap<ObjectKey, History>>,
}

/// The object an autoscaler scales, as its scale subresource sees it.
struct Target {
    replicas: i32,
    /// `None` selects no pod.
    selector: Option<LabelSelector>,
    /// The object with other replicas, to write.
    scaled: Box<dyn Fn(i32) -> Object>,
}

impl Autoscalers {
    /// The target of `hpa`, or Kubernetes' message for why it has none.
    fn target(&self, hpa: &HorizontalPodAutoscaler) -> Result<Target, String> {
        let ns = hpa.metadata.as_ref().map_or("", |m| m.namespace.as_str());
        let r = hpa.spec.as_ref().and_then(|s| s.scale_target_ref.clone()).unwrap_or_default();
        let key = ObjectKey::new(ns, &r.name);
        let group = r.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let missing = |resource: &str| format!("{resource} {:?} not found", r.name);
        // The object from its cache, its replicas and selector, and how to write new replicas.
        macro_rules! scaled {
            ($store:expr, $resource:literal, $variant:ident, $selector:expr) => {{
                let o = $store.get(&key).ok_or_else(|| missing($resource))?;
                let spec = o.spec.clone().unwrap_or_default();
                Ok(Target {
                    replicas: spec.replicas.unwrap_or(1),
                    selector: $selector(spec),
                    scaled: Box::new(move |n| {
                        let mut o = (*o).clone();
                        o.spec.get_or_insert_with(Default::default).replicas = Some(n);
                        Object::$variant(o)
                    }),
                })
            }};
        }
        match (group, r.kind.as_str()) {
            ("apps", "Deployment") => {
                scaled!(self.deployments, "deployments.apps", Deployment, |s: DeploymentSpec| s.selector)
            }
            ("apps", "ReplicaSet") => {
                scaled!(self.replica_sets, "replicasets.apps", ReplicaSet, |s: ReplicaSetSpec| s.selector)
            }
            ("apps", "StatefulSet") => {
                scaled!(self.stateful_sets, "statefulsets.apps", StatefulSet, |s: StatefulSetSpec| s.selector)
            }
            // An empty label map selects nothing, as the ReplicationController itself.
            ("", "ReplicationController") => scaled!(
                self.replication_controllers,
                "replicationcontrollers",
                ReplicationController,
                |s: ReplicationControllerSpec| (!s.selector.is_empty())
                    .then(|| LabelSelector { match_labels: s.selector, ..Default::default() })
            ),
            (group, kind) => Err(format!("no matches for kind {kind:?} in group {group:?}")),
        }
    }

    /// Samples every node's pods and queues every autoscaler, every [`SYNC`] while this
    /// master leads and there are autoscalers.
    async fn sample(self: Arc<Self>, queue: WorkQueue<ObjectKey>) {
        let mut tick = tokio::time::interval(SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let keys = self.autoscalers.keys();
            if self.leadership.borrow().is_none() || keys.is_empty() {
                continue;
            }
            let nodes: Vec<String> =
                self.nodes.list().iter().filter_map(|n| Some(n.metadata.as_ref()?.name.clone())).collect();
            let asks = nodes.iter().map(|node| tokio::time::timeout(NODE_TIMEOUT, self.client.node_usage(node)));
            let mut samples = HashMap::new();
            for usage in futures::future::join_all(asks).await.into_iter().flatten() {
                match usage {
                    Ok(usage) => {
                        samples.extend(usage.pods.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)))
                    }
                    Err(e) => tracing::debug!("autoscaler: no usage from a node: {}", e.message()),
                }
            }
            *self.samples.lock().expect("samples") = samples;
            keys.into_iter().for_each(|k| queue.add(k));
        }
    }
}

impl Reconciler for Autoscalers {
    const NAME: &'static str = "horizontal pod autoscaler controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.autoscalers.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.autoscalers, queue, self, |_, c| controller::own_key(c)),
            tokio::spawn(self.clone().sample(queue.clone())),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![
            &self.autoscalers,
            &self.pods,
            &self.nodes,
            &self.deployments,
            &self.replica_sets,
            &self.replication_controllers,
            &self.stateful_sets,
        ]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let mut histories = self.history.lock().expect("history");
        let Some(hpa) = self.autoscalers.get(key) else {
            histories.remove(key);
            return Vec::new();
        };
        let history = histories.entry(key.clone()).or_default();
        let now = now_secs();
        let target = self.target(&hpa);
        let pods: Vec<Arc<Pod>> = match &target {
            Ok(t) => self
                .pods
                .list_namespace(&key.namespace)
                .into_iter()
                .filter(|p| {
                    let selected = |s: &LabelSelector| p.metadata.as_ref().is_some_and(|m| s.matches(&m.labels));
                    t.selector.as_ref().is_some_and(selected)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let samples = self.samples.lock().expect("samples");
        let usage = |pod: &Pod| {
            let m = pod.metadata.as_ref()?;
            samples.get(&(m.namespace.clone(), m.name.clone())).cloned()
        };
        plan(&hpa, target, &pods, &usage, history, now)
    }
}

/// What one reconcile writes: the target's new replicas (with the SuccessfulRescale event)
/// and the autoscaler's status, each only when it changes.
fn plan(
    hpa: &HorizontalPodAutoscaler,
    target: Result<Target, String>,
    pods: &[Arc<Pod>],
    usage: &dyn Fn(&Pod) -> Option<PodUsage>,
    history: &mut History,
    now: i64,
) -> Vec<Command> {
    let meta = hpa.metadata.clone().unwrap_or_default();
    let spec = hpa.spec.clone().unwrap_or_default();
    let old = hpa.status.clone().unwrap_or_default();
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: Some(meta.generation),
        conditions: old.conditions.clone(),
        ..old.clone()
    };
    macro_rules! set {
        ($kind:expr, $ok:expr, $reason:expr, $message:expr $(,)?) => {
            set_condition(&mut status.conditions, $kind, $ok, $reason, $message, now)
        };
    }
    let mut commands = Vec::new();
    let target = match target {
        Ok(t) => t,
        Err(why) => {
            let message = format!("the HPA controller was unable to get the target's current scale: {why}");
            set!("AbleToScale", false, "FailedGetScale", message.clone());
            let note = Note::warning(KIND, API_VERSION, &meta, "FailedGetScale", why);
            return status_update(hpa, status, &old, Some(note));
        }
    };
    set!(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
    );
    let current = target.replicas;
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let mut metrics = Vec::new();
    let mut warning = None;
    let (desired, reason) = if current == 0 && min != 0 {
        set!(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        );
        (0, String::new())
    } else if current > max {
        (max, "Current number of replicas above Spec.MaxReplicas".to_string())
    } else if current < min {
        (min, "Current number of replicas below Spec.MinReplicas".to_string())
    } else {
        match replicas_for_metrics(&spec.metrics, current, pods, usage) {
            Err((reason, message, statuses)) => {
                set!(
                    "ScalingActive",
                    false,
                    reason,
                    format!("the HPA was unable to compute the replica count: {message}")
                );
                let invalid = spec.metrics.len() - statuses.iter().filter(|s| !s.r#type.is_empty()).count();
                let event = format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {message}",
                    spec.metrics.len()
                );
                warning = Some(Note::warning(KIND, API_VERSION, &meta, "FailedComputeMetricsReplicas", event));
                status.current_replicas = current;
                status.current_metrics = statuses;
                return status_update(hpa, status, &old, warning);
            }
            Ok((proposed, metric, statuses)) => {
                metrics = statuses;
                set!(
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    format!("the HPA was able to successfully calculate a replica count from {metric}"),
                );
                let reason = if proposed > current {
                    format!("{metric} above target")
                } else if proposed < current {
                    "All metrics below target".to_string()
                } else {
                    String::new()
                };
                let rules = Rules::of(&spec);
                let stabilized = stabilize(history, &rules, current, proposed, now);
                match stabilized.cmp(&proposed) {
                    std::cmp::Ordering::Greater => set!(
                        "AbleToScale",
                        true,
                        "ScaleDownStabilized",
                        "recent recommendations were higher than current one, applying the highest recent \
                         recommendation"
                            .into(),
                    ),
                    std::cmp::Ordering::Less => set!(
                        "AbleToScale",
                        true,
                        "ScaleUpStabilized",
                        "recent recommendations were lower than current one, applying the lowest recent recommendation"
                            .into(),
                    ),
                    std::cmp::Ordering::Equal => {
                        set!("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size".into(),)
                    }
                }
                let (limited, why, message) = limit_rate(history, &rules, current, stabilized, min, max, now);
                set!("ScalingLimited", limited != stabilized, why, message.into());
                (limited, reason)
            }
        }
    };
    status.current_replicas = current;
    status.desired_replicas = desired;
    if !metrics.is_empty() {
        status.current_metrics = metrics;
    }
    if desired != current {
        set!(
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
        );
        history.rescales.push((now, desired - current));
        status.last_scale_time = rfc3339(now);
        let note = Note::normal(
            KIND,
            API_VERSION,
            &meta,
            "SuccessfulRescale",
            format!("New size: {desired}; reason: {reason}"),
        );
        commands.push(Command::Update { object: (target.scaled)(desired), note: Some(note) });
    }
    commands.extend(status_update(hpa, status, &old, warning));
    commands
}

/// The status write, when the status changed, and the warning of a failure (each time it is
/// seen, as Kubernetes records it every sync).
fn status_update(
    hpa: &HorizontalPodAutoscaler,
    status: HorizontalPodAutoscalerStatus,
    old: &HorizontalPodAutoscalerStatus,
    warning: Option<Note>,
) -> Vec<Command> {
    let mut commands = Vec::new();
    if &status != old {
        let mut updated = hpa.clone();
        updated.status = Some(status);
        commands.push(Command::UpdateStatus { object: Object::HorizontalPodAutoscaler(updated), note: None });
    }
    commands.extend(warning.map(Command::Record));
    commands
}

/// Sets one condition, keeping its transition time while its status stays.
fn set_condition(conditions: &mut Vec<Condition>, kind: &str, ok: bool, reason: &str, message: String, now: i64) {
    let status = if ok { "True" } else { "False" };
    let since = match conditions.iter().find(|c| c.r#type == kind) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => rfc3339(now),
    };
    let condition = Condition {
        r#type: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        ..Default::default()
    };
    match conditions.iter_mut().find(|c| c.r#type == kind) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// The largest replica count the metrics ask for, with the metric that asked for it and each
/// metric's current value; or the first failure's condition reason and message (with the
/// values of the metrics that did work), when every metric failed or a failure could hide a
/// scale-up.
#[allow(clippy::type_complexity)]
fn replicas_for_metrics(
    specs: &[MetricSpec],
    current: i32,
    pods: &[Arc<Pod>],
    usage: &dyn Fn(&Pod) -> Option<PodUsage>,
) -> Result<(i32, String, Vec<MetricStatus>), (&'static str, String, Vec<MetricStatus>)> {
    let mut statuses = vec![MetricStatus::default(); specs.len()];
    let mut best: Option<(i32, String)> = None;
    let mut first_error = None;
    for (i, spec) in specs.iter().enumerate() {
        match replicas_for_metric(spec, current, pods, usage) {
            Ok((replicas, name, status)) => {
                statuses[i] = status;
                if best.as_ref().is_none_or(|(r, _)| replicas > *r) {
                    best = Some((replicas, name));
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (best, first_error) {
        (Some((replicas, name)), None) => Ok((replicas, name, statuses)),
        (Some((replicas, name)), Some(_)) if replicas >= current => Ok((replicas, name, statuses)),
        (_, Some((reason, message))) => Err((reason, message, statuses)),
        (None, None) => Err(("InvalidMetricSourceType", "no metrics to compute a replica count from".into(), statuses)),
    }
}

/// What one metric asks for: replicas, the metric's name in messages, its current value.
fn replicas_for_metric(
    spec: &MetricSpec,
    current: i32,
    pods: &[Arc<Pod>],
    usage: &dyn Fn(&Pod) -> Option<PodUsage>,
) -> Result<(i32, String, MetricStatus), (&'static str, String)> {
    let (resource, container, target, reason) = match spec.r#type.as_str() {
        "Resource" => {
            let r = spec.resource.clone().unwrap_or_default();
            (r.name, None, r.target.unwrap_or_default(), "FailedGetResourceMetric")
        }
        "ContainerResource" => {
            let r = spec.container_resource.clone().unwrap_or_default();
            (r.name, Some(r.container), r.target.unwrap_or_default(), "FailedGetContainerResourceMetric")
        }
        kind @ ("Pods" | "Object" | "External") => {
            let (reason, api, name) = match kind {
                "Pods" => ("FailedGetPodsMetric", "custom", spec.pods.as_ref().and_then(|p| p.metric.clone())),
                "Object" => ("FailedGetObjectMetric", "custom", spec.object.as_ref().and_then(|o| o.metric.clone())),
                _ => ("FailedGetExternalMetric", "external", spec.external.as_ref().and_then(|e| e.metric.clone())),
            };
            let name = name.unwrap_or_default().name;
            let message = format!(
                "unable to get metric {name}: unable to fetch metrics from {api} metrics API: the server could not \
                 find the requested resource ({api}.metrics.k8s.io is not served)"
            );
            return Err((reason, message));
        }
        other => return Err(("InvalidMetricSourceType", format!("unknown metric source type {other:?}"))),
    };
    let utilization = target.average_utilization.filter(|_| target.r#type == "Utilization");
    let what = match (container.is_some(), utilization.is_some()) {
        (false, true) => format!("{resource} resource utilization (percentage of request)"),
        (false, false) => format!("{resource} resource"),
        (true, true) => format!("{resource} container resource utilization (percentage of request)"),
        (true, false) => format!("{resource} container resource"),
    };
    let fail = |e: String| (reason, format!("failed to get {resource} utilization: {e}"));
    let aim = match utilization {
        Some(u) => Aim::Utilization(u, requests(pods, &resource, container.as_deref()).map_err(fail)?),
        None => Aim::Average(parse_quantity(&target.average_value).unwrap_or(0).max(1) as i64),
    };
    let measured = |pod: &Pod| -> Option<i64> {
        let u = usage(pod)?;
        let of = |cpu: i64, memory: i64| match resource.as_str() {
            "cpu" => Some(cpu),
            "memory" => Some(memory.saturating_mul(1000)),
            _ => None,
        };
        match container.as_deref() {
            Some(c) => u.containers.iter().find(|x| x.name == c).and_then(|x| of(x.cpu_millicores, x.memory_bytes)),
            None if u.containers.is_empty() => of(u.cpu_millicores, u.memory_bytes),
            None => u.containers.iter().map(|x| of(x.cpu_millicores, x.memory_bytes)).sum(),
        }
    };
    let (replicas, utilization, average) =
        replicas_for_usage(current, pods, &resource, &aim, &measured).map_err(fail)?;
    let value = MetricValueStatus {
        average_value: if resource == "cpu" { format_quantity(average as i128, "cpu") } else { decimal(average) },
        average_utilization: utilization,
        ..Default::default()
    };
    let status = match container {
        None => MetricStatus {
            r#type: "Resource".into(),
            resource: Some(ResourceMetricStatus { name: resource, current: Some(value) }),
            ..Default::default()
        },
        Some(container) => MetricStatus {
            r#type: "ContainerResource".into(),
            container_resource: Some(ContainerResourceMetricStatus { name: resource, current: Some(value), container }),
            ..Default::default()
        },
    };
    Ok((replicas, what, status))
}

/// A quantity in thousandths written as Kubernetes' decimal form (`1048576`, `1500m`).
fn decimal(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// What a resource metric aims at: a percentage of the pods' requests (with each pod's
/// request, in thousandths), or an average per pod (in thousandths).
enum Aim {
    Utilization(i32, BTreeMap<String, i64>),
    Average(i64),
}

impl Aim {
    /// The usage ratio of `metrics` (pod name → usage), the utilization and average usage.
    fn ratio(&self, metrics: &BTreeMap<String, i64>) -> Result<(f64, Option<i32>, i64), String> {
        match self {
            Aim::Utilization(target, requests) => {
                let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
                for (pod, usage) in metrics {
                    if let Some(r) = requests.get(pod) {
                        used += usage;
                        requested += r;
                        n += 1;
                    }
                }
                if requested == 0 {
                    return Err("no metrics returned matched known pods".into());
                }
                let utilization = (used * 100 / requested) as i32;
                Ok((f64::from(utilization) / f64::from(*target), Some(utilization), used / n))
            }
            Aim::Average(target) => {
                let average = metrics.values().sum::<i64>() / (metrics.len() as i64).max(1);
                Ok((average as f64 / *target as f64, None, average))
            }
        }
    }

    /// The usage a pod without a sample is taken to have when the others would scale down:
    /// all it asked for (or the target, if higher).
    fn full(&self, pod: &str) -> i64 {
        match self {
            Aim::Utilization(target, requests) => {
                requests.get(pod).copied().unwrap_or(0) * i64::from((*target).max(100)) / 100
            }
            Aim::Average(target) => *target,
        }
    }
}

/// Each pod's request of `resource` (one container's, or all its containers' and sidecars'),
/// in thousandths; Kubernetes' error when a container asks for none.
fn requests(pods: &[Arc<Pod>], resource: &str, container: Option<&str>) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.as_ref().map_or("", |m| m.name.as_str());
        let spec = pod.spec.clone().unwrap_or_default();
        let sidecars = spec.init_containers.iter().filter(|c| c.restart_policy == "Always");
        let mut sum = 0i64;
        for c in spec.containers.iter().chain(sidecars).filter(|c| container.is_none_or(|n| n == c.name)) {
            let request = c.resources.as_ref().and_then(|r| r.requests.get(resource)).and_then(|q| parse_quantity(q));
            match request {
                Some(q) => sum += q as i64,
                None => return Err(format!("missing request for {resource} in container {} of Pod {name}", c.name)),
            }
        }
        out.insert(name.to_string(), sum);
    }
    Ok(out)
}

/// Kubernetes' replica calculation for one resource metric: pods going or failed are left
/// out; pending pods (and, for cpu, pods not Ready) count only against a scale-up, as using
/// nothing; pods without a sample count as using nothing against a scale-up and everything
/// against a scale-down; a ratio within the tolerance, or one those assumptions reverse,
/// changes nothing. Answers the replicas, the utilization and the average usage.
fn replicas_for_usage(
    current: i32,
    pods: &[Arc<Pod>],
    resource: &str,
    aim: &Aim,
    measured: &dyn Fn(&Pod) -> Option<i64>,
) -> Result<(i32, Option<i32>, i64), String> {
    let mut metrics = BTreeMap::new();
    let (mut unready, mut missing, mut sampled) = (Vec::new(), Vec::new(), 0);
    for pod in pods {
        let Some(meta) = pod.metadata.as_ref() else { continue };
        if deleting(meta) || phase(pod) == "Failed" {
            continue;
        }
        if phase(pod) == "Pending" {
            unready.push(meta.name.clone());
            continue;
        }
        let Some(usage) = measured(pod) else {
            missing.push(meta.name.clone());
            continue;
        };
        sampled += 1;
        if resource == "cpu" && !pod.is_ready() {
            unready.push(meta.name.clone());
            continue;
        }
        metrics.insert(meta.name.clone(), usage);
    }
    if sampled == 0 {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ready = metrics.len();
    let (ratio, utilization, average) = aim.ratio(&metrics)?;
    let up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok((current, utilization, average));
        }
        return Ok(((ratio * ready as f64).ceil() as i32, utilization, average));
    }
    for pod in &missing {
        if ratio < 1.0 {
            metrics.insert(pod.clone(), aim.full(pod));
        } else if ratio > 1.0 {
            metrics.insert(pod.clone(), 0);
        }
    }
    if up_with_unready {
        metrics.extend(unready.into_iter().map(|p| (p, 0)));
    }
    let (again, ..) = aim.ratio(&metrics)?;
    if (1.0 - again).abs() <= TOLERANCE || (ratio < 1.0 && again > 1.0) || (ratio > 1.0 && again < 1.0) {
        return Ok((current, utilization, average));
    }
    let replicas = (again * metrics.len() as f64).ceil() as i32;
    if (again < 1.0 && replicas > current) || (again > 1.0 && replicas < current) {
        return Ok((current, utilization, average));
    }
    Ok((replicas, utilization, average))
}

/// An autoscaler's behaviour with Kubernetes' defaults filled in.
struct Rules {
    up: HpaScalingRules,
    down: HpaScalingRules,
}

impl Rules {
    fn of(spec: &skiff_proto::api::HorizontalPodAutoscalerSpec) -> Rules {
        let fill = |given: Option<HpaScalingRules>, default: HpaScalingRules| {
            let mut r = given.unwrap_or_default();
            r.stabilization_window_seconds = r.stabilization_window_seconds.or(default.stabilization_window_seconds);
            if r.select_policy.is_empty() {
                r.select_policy = default.select_policy;
            }
            if r.policies.is_empty() {
                r.policies = default.policies;
            }
            r
        };
        let behavior = spec.behavior.clone().unwrap_or_default();
        let mut down = fill(behavior.scale_down, HpaScalingRules::default_scale_down());
        // The controller's own scale-down window (Kubernetes' 5-minute flag default).
        down.stabilization_window_seconds.get_or_insert(DOWNSCALE_WINDOW_SECS as i32);
        Rules { up: fill(behavior.scale_up, HpaScalingRules::default_scale_up()), down }
    }
}

/// Kubernetes' stabilization: records `proposed`, and answers the current replicas moved no
/// further up than the lowest recommendation within the scale-up window, and no further down
/// than the highest within the scale-down window.
fn stabilize(history: &mut History, rules: &Rules, current: i32, proposed: i32, now: i64) -> i32 {
    let window = |r: &HpaScalingRules| i64::from(r.stabilization_window_seconds.unwrap_or(0));
    let (up_window, down_window) = (window(&rules.up), window(&rules.down));
    let (mut up, mut down) = (proposed, proposed);
    for &(at, recommended) in &history.recommendations {
        if at > now - up_window {
            up = up.min(recommended);
        }
        if at > now - down_window {
            down = down.max(recommended);
        }
    }
    history.recommendations.retain(|(at, _)| *at > now - up_window.max(down_window));
    history.recommendations.push((now, proposed));
    current.max(up).min(down)
}

/// Replicas added (or removed) within the last `period` seconds.
fn changed_within(history: &History, period: i64, now: i64, up: bool) -> i32 {
    let recent = history.rescales.iter().filter(|(at, _)| *at > now - period);
    recent.map(|(_, change)| if up { (*change).max(0) } else { (-*change).max(0) }).sum()
}

/// Kubernetes' rate limits: `desired` held within what the policies allow since each period
/// began, and within min and max; answers the replicas, the ScalingLimited reason and message.
fn limit_rate(
    history: &mut History,
    rules: &Rules,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: i64,
) -> (i32, &'static str, &'static str) {
    history.rescales.retain(|(at, _)| *at > now - MAX_PERIOD_SECS);
    let start = |p: &HpaScalingPolicy| {
        let period = i64::from(p.period_seconds);
        current - changed_within(history, period, now, true) + changed_within(history, period, now, false)
    };
    if desired > current {
        let limit = match rules.up.select_policy.as_str() {
            "Disabled" => current,
            select => {
                let proposals = rules.up.policies.iter().map(|p| match p.r#type.as_str() {
                    "Pods" => start(p) + p.value,
                    _ => (f64::from(start(p)) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
                });
                let pick = if select == "Min" { proposals.min() } else { proposals.max() };
                pick.unwrap_or(current).max(current)
            }
        };
        let (allowed, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if desired > allowed {
            return (allowed, reason, message);
        }
    } else if desired < current {
        let limit = match rules.down.select_policy.as_str() {
            "Disabled" => current,
            select => {
                let proposals = rules.down.policies.iter().map(|p| match p.r#type.as_str() {
                    "Pods" => start(p) - p.value,
                    _ => (f64::from(start(p)) * (1.0 - f64::from(p.value) / 100.0)) as i32,
                });
                let pick = if select == "Min" { proposals.max() } else { proposals.min() };
                pick.unwrap_or(current).min(current)
            }
        };
        let (allowed, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if desired < allowed {
            return (allowed, reason, message);
        }
    }
    (desired, "DesiredWithinRange", "the desired count is within the acceptable range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{
        Container, ContainerUsage, CrossVersionObjectReference, HorizontalPodAutoscalerBehavior,
        HorizontalPodAutoscalerSpec, MetricTarget, ObjectMeta, PodSpec, PodStatus, ResourceMetricSource,
        ResourceRequirements,
    };

    fn pod(name: &str, cpu_request: &str, ready: bool) -> Arc<Pod> {
        let requests = BTreeMap::from([("cpu".to_string(), cpu_request.to_string())]);
        let ready = Condition {
            r#type: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        };
        Arc::new(Pod {
            metadata: Some(ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements { requests, ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus { phase: "Running".into(), conditions: vec![ready], ..Default::default() }),
            ..Default::default()
        })
    }

    fn cpu_usage(by_pod: &[(&str, i64)]) -> impl Fn(&Pod) -> Option<PodUsage> {
        let by_pod: BTreeMap<String, i64> = by_pod.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        move |p: &Pod| {
            let name = p.metadata.as_ref()?.name.clone();
            let cpu = *by_pod.get(&name)?;
            let containers = vec![ContainerUsage { name: "app".into(), cpu_millicores: cpu, memory_bytes: 1 << 20 }];
            Some(PodUsage { name, cpu_millicores: cpu, containers, ..Default::default() })
        }
    }

    fn hpa(
        min: i32,
        max: i32,
        utilization: i32,
        behavior: Option<HorizontalPodAutoscalerBehavior>,
    ) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                generation: 2,
                ..Default::default()
            }),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: Some(CrossVersionObjectReference {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    api_version: "apps/v1".into(),
                }),
                min_replicas: Some(min),
                max_replicas: max,
                metrics: vec![MetricSpec {
                    r#type: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: Some(MetricTarget {
                            r#type: "Utilization".into(),
                            average_utilization: Some(utilization),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }],
                behavior,
            }),
            ..Default::default()
        }
    }

    fn target(replicas: i32) -> Result<Target, String> {
        Ok(Target {
            replicas,
            selector: Some(LabelSelector::default()),
            scaled: Box::new(|n| {
                let mut d = Deployment::default();
                d.spec.get_or_insert_with(Default::default).replicas = Some(n);
                Object::Deployment(d)
            }),
        })
    }

    /// The replicas a plan sets (None: unchanged) and the status it writes.
    fn outcome(commands: &[Command]) -> (Option<i32>, HorizontalPodAutoscalerStatus) {
        let mut replicas = None;
        let mut status = None;
        for c in commands {
            match c {
                Command::Update { object: Object::Deployment(d), .. } => replicas = d.spec.as_ref().unwrap().replicas,
                Command::UpdateStatus { object: Object::HorizontalPodAutoscaler(h), .. } => status = h.status.clone(),
                Command::Record(note) => assert_eq!(note.r#type, "Warning"),
                other => panic!("unexpected command {other:?}"),
            }
        }
        (replicas, status.expect("a status write"))
    }

    fn condition<'a>(s: &'a HorizontalPodAutoscalerStatus, kind: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.r#type == kind).unwrap_or_else(|| panic!("no {kind} in {s:?}"));
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn utilization_above_target_scales_up_by_the_ratio_within_max() {
        // Two pods asking 100m each use 150m and 250m: 200% of requests against a 50% target.
        let pods = [pod("a", "100m", true), pod("b", "100m", true)];
        let usage = cpu_usage(&[("a", 150), ("b", 250)]);
        let mut h = History::default();
        let (replicas, status) = outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &usage, &mut h, 1000));
        // ceil(4.0 × 2) = 8, but the default policies allow max(2 + 4, 2 × 2) = 6 per 15 s.
        assert_eq!(replicas, Some(6));
        assert_eq!(status.desired_replicas, 6);
        assert_eq!(status.current_replicas, 2);
        let current = status.current_metrics[0].resource.as_ref().unwrap().current.clone().unwrap();
        assert_eq!((current.average_utilization, current.average_value.as_str()), (Some(200), "200m"));
        assert_eq!(condition(&status, "ScalingLimited"), ("True", "ScaleUpLimit"));
        assert_eq!(condition(&status, "ScalingActive"), ("True", "ValidMetricFound"));
        assert_eq!(condition(&status, "AbleToScale"), ("True", "SucceededRescale"));
        // With max 3 the maximum is what limits.
        let mut h = History::default();
        let (replicas, status) = outcome(&plan(&hpa(1, 3, 50, None), target(2), &pods, &usage, &mut h, 1000));
        assert_eq!(replicas, Some(3));
        assert_eq!(condition(&status, "ScalingLimited"), ("True", "TooManyReplicas"));
    }

    #[test]
    fn within_tolerance_nothing_changes_and_scale_down_waits_for_the_window() {
        let pods = [pod("a", "100m", true), pod("b", "100m", true)];
        let mut h = History::default();
        // 52% against 50%: within 10%.
        let (replicas, _) =
            outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &cpu_usage(&[("a", 52), ("b", 52)]), &mut h, 1000));
        assert_eq!(replicas, None);
        // Idle: the proposal is 1, but a recommendation of 2 was made within the 300 s window.
        let idle = cpu_usage(&[("a", 1), ("b", 1)]);
        let (replicas, status) = outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &idle, &mut h, 1100));
        assert_eq!(replicas, None);
        assert_eq!(condition(&status, "AbleToScale"), ("True", "ScaleDownStabilized"));
        // Once the window has passed, down to 1.
        let (replicas, _) = outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &idle, &mut h, 1400));
        assert_eq!(replicas, Some(1));
        // A 10 s window set in the behaviour passes sooner.
        let short = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HpaScalingRules { stabilization_window_seconds: Some(10), ..Default::default() }),
            ..Default::default()
        };
        let mut h = History::default();
        let busy = cpu_usage(&[("a", 50), ("b", 50)]);
        outcome(&plan(&hpa(1, 10, 50, Some(short.clone())), target(2), &pods, &busy, &mut h, 1000));
        let (replicas, _) = outcome(&plan(&hpa(1, 10, 50, Some(short.clone())), target(2), &pods, &idle, &mut h, 1005));
        assert_eq!(replicas, None);
        let (replicas, _) = outcome(&plan(&hpa(1, 10, 50, Some(short)), target(2), &pods, &idle, &mut h, 1011));
        assert_eq!(replicas, Some(1));
    }

    #[test]
    fn pods_without_samples_or_not_ready_are_counted_against_the_change() {
        // b has no sample: against a scale-up it counts as using nothing. a at 200% of 100m
        // and b at 0 → 100% against 50% → 4 replicas rather than the 2 × 4 = 8 a alone says.
        let pods = [pod("a", "100m", true), pod("b", "100m", true)];
        let mut h = History::default();
        let usage = cpu_usage(&[("a", 200)]);
        let (replicas, _) = outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &usage, &mut h, 1000));
        assert_eq!(replicas, Some(4));
        // A not-Ready pod with a sample counts as using nothing on a scale-up, too.
        let pods = [pod("a", "100m", true), pod("b", "100m", false)];
        let usage = cpu_usage(&[("a", 200), ("b", 900)]);
        let mut h = History::default();
        let (replicas, _) = outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &usage, &mut h, 1000));
        assert_eq!(replicas, Some(4));
        // Against a scale-down a pod without a sample counts as using all it asked for: a at
        // 10% and b at 100% → 55% against 50%, within tolerance.
        let pods = [pod("a", "100m", true), pod("b", "100m", true)];
        let mut h = History::default();
        let (replicas, _) =
            outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &cpu_usage(&[("a", 10)]), &mut h, 1000));
        assert_eq!(replicas, None);
    }

    #[test]
    fn failures_are_reported_in_kubernetes_words() {
        let mut h = History::default();
        // No samples at all.
        let pods = [pod("a", "100m", true)];
        let (replicas, status) = outcome(&plan(&hpa(1, 10, 50, None), target(1), &pods, &cpu_usage(&[]), &mut h, 1000));
        assert_eq!(replicas, None);
        assert_eq!(condition(&status, "ScalingActive"), ("False", "FailedGetResourceMetric"));
        let message = &status.conditions.iter().find(|c| c.r#type == "ScalingActive").unwrap().message;
        assert_eq!(
            message,
            "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics \
             for resource cpu: no metrics returned from resource metrics API"
        );
        // A container without a cpu request.
        let pods = [
            pod("a", "100m", true),
            Arc::new(Pod {
                spec: Some(PodSpec {
                    containers: vec![Container { name: "app".into(), ..Default::default() }],
                    ..Default::default()
                }),
                ..(*pod("b", "1", true)).clone()
            }),
        ];
        let (_, status) =
            outcome(&plan(&hpa(1, 10, 50, None), target(2), &pods, &cpu_usage(&[("a", 10), ("b", 10)]), &mut h, 1000));
        let message = &status.conditions.iter().find(|c| c.r#type == "ScalingActive").unwrap().message;
        assert!(message.ends_with("missing request for cpu in container app of Pod b"), "{message}");
        // No target.
        let (_, status) = outcome(&plan(
            &hpa(1, 10, 50, None),
            Err("deployments.apps \"web\" not found".into()),
            &[],
            &cpu_usage(&[]),
            &mut h,
            1000,
        ));
        assert_eq!(condition(&status, "AbleToScale"), ("False", "FailedGetScale"));
        // A target scaled to zero is left alone.
        let (replicas, status) = outcome(&plan(&hpa(1, 10, 50, None), target(0), &[], &cpu_usage(&[]), &mut h, 1000));
        assert_eq!(replicas, None);
        assert_eq!(condition(&status, "ScalingActive"), ("False", "ScalingDisabled"));
        // Below the minimum: up to it, whatever the metrics.
        let (replicas, _) = outcome(&plan(&hpa(3, 10, 50, None), target(1), &[], &cpu_usage(&[]), &mut h, 1000));
        assert_eq!(replicas, Some(3));
    }

    #[test]
    fn rate_policies_count_what_changed_within_their_period() {
        let rules = Rules::of(&HorizontalPodAutoscalerSpec::default());
        let mut h = History::default();
        // From 2, up to max(2 + 4, 2 × 2) = 6.
        assert_eq!(limit_rate(&mut h, &rules, 2, 20, 1, 100, 1000).0, 6);
        h.rescales.push((1000, 4));
        // 10 s later at 6, the period began at 2: still 6.
        assert_eq!(limit_rate(&mut h, &rules, 6, 20, 1, 100, 1010).0, 6);
        // Once the 15 s period has passed: from 6, up to 12.
        assert_eq!(limit_rate(&mut h, &rules, 6, 20, 1, 100, 1016).0, 12);
        // Down: 100% per 15 s allows any drop to the minimum.
        assert_eq!(
            limit_rate(&mut h, &rules, 12, 0, 2, 100, 1016),
            (2, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        );
        // Disabled scale-down holds the replicas.
        let disabled = Rules {
            down: HpaScalingRules { select_policy: "Disabled".into(), ..rules.down.clone() },
            up: rules.up.clone(),
        };
        assert_eq!(limit_rate(&mut h, &disabled, 12, 2, 1, 100, 1016).0, 12);
    }
}
