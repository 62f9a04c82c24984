//! Filter → score → pick, for one pod against a [`Snapshot`]. Pure: no I/O, no clock.

use crate::objects::selector_matches;
use crate::snapshot::{NodeInfo, PlacedPod, Snapshot, Usage};
use skiff_proto::api::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, PodSpec, Taint, Toleration,
    TopologySpreadConstraint,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why a pod fits on no node, counted per reason as Kubernetes reports it:
/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {gpu: yes}.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Kubernetes sorts the "<count> <reason>" strings as a whole.
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(f, "0/{} nodes are available: {}.", self.nodes, parts.join(", "))
        }
    }
}

/// Whether the scheduler should place this pod at all: a pod with `spec.nodeName` set skips
/// the scheduler (even onto a tainted node), as in Kubernetes.
pub fn needs_scheduling(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_empty())
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let int = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| req.values.contains(v)),
        "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(|v| int(v)), req.values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(|v| int(v)), req.values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let labels = node.labels();
    let fields = || BTreeMap::from([("metadata.name".to_string(), node.name().to_string())]);
    (!term.match_expressions.is_empty() || !term.match_fields.is_empty())
        && term.match_expressions.iter().all(|r| requirement_matches(r, labels))
        && (term.match_fields.is_empty() || term.match_fields.iter().all(|r| requirement_matches(r, &fields())))
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t.effect.is_empty() || t.effect == taint.effect;
    let key_ok = if t.key.is_empty() { t.operator == "Exists" } else { t.key == taint.key };
    let value_ok = t.operator == "Exists" || t.value == taint.value;
    effect_ok && key_ok && value_ok
}

fn untolerated<'a>(tolerations: &[Toleration], node: &'a NodeInfo, effects: &[&str]) -> Vec<&'a Taint> {
    node.node
        .spec
        .as_ref()
        .map(|s| s.taints.iter())
        .into_iter()
        .flatten()
        .filter(|t| effects.contains(&t.effect.as_str()) && !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

/// Whether `term`, held by a pod in `namespace`, selects `pod`: its namespaces (the holder's
/// own when none are named; all of them for an empty `namespaceSelector` — a selector with
/// terms is not evaluated, the scheduler has no namespace labels) and its label selector (none
/// selects nothing).
fn term_selects(term: &PodAffinityTerm, namespace: &str, pod: &PlacedPod) -> bool {
    let all_namespaces =
        term.namespace_selector.as_ref().is_some_and(|s| s.match_labels.is_empty() && s.match_expressions.is_empty());
    let in_namespace = all_namespaces
        || term.namespaces.contains(&pod.namespace)
        || (term.namespaces.is_empty() && term.namespace_selector.is_none() && pod.namespace == namespace);
    in_namespace && term.label_selector.as_ref().is_some_and(|s| selector_matches(s, &pod.labels))
}

/// A pod's inter-pod affinity against the pods already placed, as topology domains (a
/// `topologyKey` and one of its values).
#[derive(Default)]
struct InterPod {
    /// Per required affinity term: its topology key, the domains holding a pod it selects, and
    /// whether it may go anywhere with the key (no pod matches yet, but the pod matches its own
    /// term: the first of a group).
    affinity: Vec<(String, BTreeSet<String>, bool)>,
    /// Domains holding a pod its required anti-affinity selects.
    anti_affinity: BTreeSet<(String, String)>,
    /// Domains holding a pod whose required anti-affinity selects it.
    existing_anti_affinity: BTreeSet<(String, String)>,
    /// Preferred terms' weights per domain: + for affinity, - for anti-affinity, per pod.
    preferred: BTreeMap<(String, String), i64>,
}

impl InterPod {
    fn of(spec: &PodSpec, me: &PlacedPod, snapshot: &Snapshot) -> InterPod {
        let affinity = spec.affinity.as_ref().and_then(|a| a.pod_affinity.as_ref());
        let anti = spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
        let required: &[PodAffinityTerm] =
            affinity.map_or(&[], |a| &a.required_during_scheduling_ignored_during_execution);
        let required_anti: &[PodAffinityTerm] =
            anti.map_or(&[], |a| &a.required_during_scheduling_ignored_during_execution);
        let mut preferred: Vec<(&PodAffinityTerm, i64)> = Vec::new();
        for (sign, terms) in [
            (1, affinity.map(|a| &a.preferred_during_scheduling_ignored_during_execution)),
            (-1, anti.map(|a| &a.preferred_during_scheduling_ignored_during_execution)),
        ] {
            for w in terms.into_iter().flatten() {
                if let Some(t) = &w.pod_affinity_term {
                    preferred.push((t, sign * i64::from(w.weight)));
                }
            }
        }
        let mut out = InterPod {
            affinity: required.iter().map(|t| (t.topology_key.clone(), BTreeSet::new(), false)).collect(),
            ..InterPod::default()
        };
        let own_terms = !required.is_empty() || !required_anti.is_empty() || !preferred.is_empty();
        let ns = me.namespace.as_str();
        for node in &snapshot.nodes {
            if !own_terms && node.anti_affinity_pods == 0 {
                continue;
            }
            let labels = node.labels();
            let domain = |key: &str| labels.get(key).map(|v| (key.to_string(), v.clone()));
            for placed in &node.pods {
                for (i, term) in required.iter().enumerate() {
                    if term_selects(term, ns, placed) {
                        out.affinity[i].2 = true;
                        if let Some((_, v)) = domain(&term.topology_key) {
                            out.affinity[i].1.insert(v);
                        }
                    }
                }
                for term in required_anti.iter().filter(|t| term_selects(t, ns, placed)) {
                    out.anti_affinity.extend(domain(&term.topology_key));
                }
                for term in placed.anti_affinity.iter().filter(|t| term_selects(t, &placed.namespace, me)) {
                    out.existing_anti_affinity.extend(domain(&term.topology_key));
                }
                for (term, weight) in preferred.iter().filter(|(t, _)| term_selects(t, ns, placed)) {
                    if let Some(d) = domain(&term.topology_key) {
                        *out.preferred.entry(d).or_default() += weight;
                    }
                }
            }
        }
        // A term no placed pod matches lets the pod go anywhere with the key if it matches the
        // term itself (Kubernetes' rule for the first pod of a group); otherwise nowhere.
        for (i, term) in required.iter().enumerate() {
            let anywhere = !out.affinity[i].2 && term_selects(term, ns, me);
            out.affinity[i].2 = anywhere;
        }
        out
    }

    /// Why `node` breaks the pod's inter-pod affinity, if it does.
    fn refuses(&self, node: &NodeInfo) -> Option<&'static str> {
        let labels = node.labels();
        let inside = |set: &BTreeSet<(String, String)>| set.iter().any(|(k, v)| labels.get(k) == Some(v));
        // Kubernetes' order: the pod's affinity, its anti-affinity, then existing pods'.
        let affinity_ok = self
            .affinity
            .iter()
            .all(|(key, domains, anywhere)| labels.get(key).is_some_and(|v| *anywhere || domains.contains(v)));
        if !affinity_ok {
            return Some("node(s) didn't match pod affinity rules");
        }
        if inside(&self.anti_affinity) {
            return Some("node(s) didn't match pod anti-affinity rules");
        }
        if inside(&self.existing_anti_affinity) {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules");
        }
        None
    }

    fn score(&self, node: &NodeInfo) -> i64 {
        let labels = node.labels();
        self.preferred.iter().filter(|((k, v), _)| labels.get(k) == Some(v)).map(|(_, w)| w).sum()
    }
}

/// A pod's topology spread constraints against the pods already placed: per constraint, the
/// matching pods in each domain of its key (every domain among the nodes the pod may select).
struct Spread {
    constraints: Vec<(TopologySpreadConstraint, BTreeMap<String, i64>, bool)>,
}

impl Spread {
    fn of(demand: &Demand<'_>, me: &PlacedPod, snapshot: &Snapshot) -> Option<Spread> {
        let wanted = &demand.spec.topology_spread_constraints;
        if wanted.is_empty() {
            return None;
        }
        let mut constraints = Vec::new();
        for c in wanted {
            let selects = |p: &PlacedPod| {
                p.namespace == me.namespace && c.label_selector.as_ref().is_some_and(|s| selector_matches(s, &p.labels))
            };
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            // nodeAffinityPolicy Honor (the default): only nodes the pod could select count.
            let honor = c.node_affinity_policy.as_deref() != Some("Ignore");
            for node in snapshot.nodes.iter().filter(|n| !honor || demand.selects(n)) {
                let Some(value) = node.labels().get(&c.topology_key) else { continue };
                *counts.entry(value.clone()).or_default() += node.pods.iter().filter(|p| selects(p)).count() as i64;
            }
            constraints.push((c.clone(), counts, selects(me)));
        }
        Some(Spread { constraints })
    }

    /// Why `node` would break a DoNotSchedule constraint, if it would.
    fn refuses(&self, node: &NodeInfo) -> Option<&'static str> {
        for (c, counts, me) in self.constraints.iter().filter(|(c, ..)| c.when_unsatisfiable != "ScheduleAnyway") {
            let Some(value) = node.labels().get(&c.topology_key) else {
                return Some("node(s) didn't match pod topology spread constraints (missing required label)");
            };
            // Fewer domains than minDomains: the global minimum counts as 0.
            let enough = c.min_domains.is_none_or(|m| counts.len() >= m.max(1) as usize);
            let min = if enough { counts.values().copied().min().unwrap_or(0) } else { 0 };
            let skew = counts.get(value).copied().unwrap_or(0) + i64::from(*me) - min;
            if skew > i64::from(c.max_skew.max(1)) {
                return Some("node(s) didn't match pod topology spread constraints");
            }
        }
        None
    }

    /// ScheduleAnyway constraints: fewer matching pods in the node's domain score higher.
    fn score(&self, node: &NodeInfo) -> i64 {
        self.constraints
            .iter()
            .filter(|(c, ..)| c.when_unsatisfiable == "ScheduleAnyway")
            .map(|(c, counts, _)| {
                node.labels().get(&c.topology_key).map_or(-100, |v| -10 * counts.get(v).copied().unwrap_or(0))
            })
            .sum()
    }
}

/// What a pod asks of a node, worked out once per decision rather than once per node.
pub struct Demand<'a> {
    spec: &'a PodSpec,
    usage: Usage,
    /// Inter-pod affinity against a snapshot; none when judged against one node alone.
    inter_pod: Option<InterPod>,
    /// Topology spread against a snapshot; none without constraints or a snapshot.
    spread: Option<Spread>,
}

static NO_SPEC: std::sync::LazyLock<PodSpec> = std::sync::LazyLock::new(PodSpec::default);

impl<'a> Demand<'a> {
    /// Judged against one node alone: what the node itself offers, not inter-pod affinity.
    pub fn of(pod: &'a Pod) -> Demand<'a> {
        Demand { spec: pod.spec.as_ref().unwrap_or(&NO_SPEC), usage: Usage::of(pod), inter_pod: None, spread: None }
    }

    /// Judged within `snapshot`: inter-pod affinity too.
    pub fn within(pod: &'a Pod, snapshot: &Snapshot) -> Demand<'a> {
        let mut d = Demand::of(pod);
        d.inter_pod = Some(InterPod::of(d.spec, &d.usage.pod, snapshot));
        d.spread = Spread::of(&d, &d.usage.pod, snapshot);
        d
    }

    fn required_affinity(&self) -> Option<&'a NodeSelector> {
        self.spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref())
    }

    /// nodeSelector and required node affinity.
    fn selects(&self, node: &NodeInfo) -> bool {
        let labels = node.labels();
        self.spec.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.required_affinity().is_none_or(|sel| sel.node_selector_terms.iter().any(|t| term_matches(t, node)))
    }

    fn untolerated<'n>(&self, node: &'n NodeInfo, effects: &[&str]) -> Vec<&'n Taint> {
        untolerated(&self.spec.tolerations, node, effects)
    }
}

/// Whether a DaemonSet's pod belongs on `node`, as Kubernetes' DaemonSet controller decides
/// it: nodeSelector, required node affinity and NoSchedule/NoExecute taints; not readiness,
/// cordoning or free resources (daemons run on every matching node).
pub fn daemon_fits(pod: &Pod, node: &NodeInfo) -> bool {
    let demand = Demand::of(pod);
    demand.untolerated(node, &["NoSchedule", "NoExecute"]).is_empty() && demand.selects(node)
}

/// Why `pod` cannot go to `node` (empty: it fits). As in Kubernetes, filters run in plugin
/// order — readiness, NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts,
/// NodeResourcesFit, then (within a snapshot, [`schedule_from`]) PodTopologySpread and
/// InterPodAffinity — and a node
/// reports the first that fails (resources may name several).
pub fn filter(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    filter_demand(&Demand::of(pod), node).into_iter().map(Cow::into_owned).collect()
}

/// Whether `pod` passes every filter on `node` ([`filter`] is empty).
pub fn fits(pod: &Pod, node: &NodeInfo) -> bool {
    filter_demand(&Demand::of(pod), node).is_empty()
}

/// [`filter`] without an allocation for the common reasons (it runs for every node examined).
fn filter_demand(demand: &Demand<'_>, node: &NodeInfo) -> Vec<Cow<'static, str>> {
    let ready = node
        .node
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        return vec![Cow::Borrowed("node(s) were not ready")];
    }
    if node.node.spec.as_ref().is_some_and(|s| s.unschedulable) {
        return vec![Cow::Borrowed("node(s) were unschedulable")];
    }
    if let Some(taint) = demand.untolerated(node, &["NoSchedule", "NoExecute"]).first() {
        return vec![Cow::Owned(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value))];
    }
    if !demand.selects(node) {
        return vec![Cow::Borrowed("node(s) didn't match Pod's node affinity/selector")];
    }
    if demand.usage.host_ports.iter().any(|p| node.host_ports.contains_key(p)) {
        return vec![Cow::Borrowed("node(s) didn't have free ports for the requested pod ports")];
    }
    let mut reasons = Vec::new();
    let want = demand.usage.requests;
    if node.allocatable.pods > 0 && node.requested.pods + want.pods > node.allocatable.pods {
        reasons.push(Cow::Borrowed("Too many pods"));
    }
    if want.cpu > 0 && want.cpu > node.allocatable.cpu - node.requested.cpu {
        reasons.push(Cow::Borrowed("Insufficient cpu"));
    }
    if want.memory > 0 && want.memory > node.allocatable.memory - node.requested.memory {
        reasons.push(Cow::Borrowed("Insufficient memory"));
    }
    if reasons.is_empty() {
        let spread = demand.spread.as_ref().and_then(|s| s.refuses(node));
        if let Some(why) = spread.or_else(|| demand.inter_pod.as_ref().and_then(|i| i.refuses(node))) {
            reasons.push(Cow::Borrowed(why));
        }
    }
    reasons
}

/// Scores a feasible node, higher is better: least allocated and balanced use of cpu and
/// memory after placing the pod (0–100 each), preferred node affinity weights, minus 10 per
/// untolerated PreferNoSchedule taint and per pod of the same owner already there.
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    score_demand(&Demand::of(pod), node)
}

fn score_demand(demand: &Demand<'_>, node: &NodeInfo) -> i64 {
    let want = demand.usage.requests;
    let frac = |used: i128, alloc: i128| if alloc <= 0 { 1.0 } else { (used as f64 / alloc as f64).min(1.0) };
    let cpu = frac(node.requested.cpu + want.cpu, node.allocatable.cpu);
    let mem = frac(node.requested.memory + want.memory, node.allocatable.memory);
    let least_allocated = ((1.0 - cpu) + (1.0 - mem)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - mem).abs()) * 100.0;
    let preferred: i64 = demand
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .iter()
                .filter(|p| p.preference.as_ref().is_some_and(|t| term_matches(t, node)))
                .map(|p| i64::from(p.weight))
                .sum()
        })
        .unwrap_or(0);
    let prefer_no = demand.untolerated(node, &["PreferNoSchedule"]).len() as i64;
    let same_owner = demand.usage.owner.as_ref().and_then(|u| node.owners.get(u).copied()).unwrap_or(0) as i64;
    let inter_pod =
        demand.inter_pod.as_ref().map_or(0, |i| i.score(node)) + demand.spread.as_ref().map_or(0, |s| s.score(node));
    least_allocated as i64 + balanced as i64 + preferred + inter_pod - 10 * prefer_no - 10 * same_owner
}

/// The node for `pod`: the best-scoring feasible node, ties broken by name; or why none fits.
pub fn schedule(pod: &Pod, snapshot: &Snapshot) -> Result<String, FitError> {
    schedule_from(pod, snapshot, 0).map(|(node, _)| node)
}

/// How many feasible nodes to find before choosing, as Kubernetes' `percentageOfNodesToScore`:
/// every node in clusters under 100 nodes, else `max(5, 50 - nodes/125)` percent of them and at
/// least 100 — a 5,000-node cluster scores 500 candidates per pod, not 5,000.
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percent / 100).max(100)
}

/// [`schedule`] starting the search at node `start` and stopping once
/// [`feasible_to_find`] feasible nodes are found; also returns where the next pod's search
/// starts, so successive pods look at different nodes (as Kubernetes rotates).
pub fn schedule_from(pod: &Pod, snapshot: &Snapshot, start: usize) -> Result<(String, usize), FitError> {
    let n = snapshot.nodes.len();
    let want = feasible_to_find(n);
    let demand = Demand::within(pod, snapshot);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, &str)> = None;
    let (mut found, mut examined) = (0, 0);
    for k in 0..n {
        let node = &snapshot.nodes[(start + k) % n];
        examined = k + 1;
        let why = filter_demand(&demand, node);
        if why.is_empty() {
            let s = score_demand(&demand, node);
            if best.is_none_or(|(b, name)| s > b || (s == b && node.name() < name)) {
                best = Some((s, node.name()));
            }
            found += 1;
            if found >= want {
                break;
            }
        } else {
            for r in why {
                match reasons.get_mut(r.as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        reasons.insert(r.into_owned(), 1);
                    }
                }
            }
        }
    }
    let next = if n == 0 { 0 } else { (start + examined) % n };
    best.map(|(_, name)| (name.to_string(), next)).ok_or(FitError { nodes: n, reasons })
}
