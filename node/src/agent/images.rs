//! The image a container runs: from the local store, pulled per `imagePullPolicy` by a pull
//! task, with its failures reported as Kubernetes reports them.

use super::*;

impl Agent {
    /// The container's image per its pull policy: local, or pulled by a background task
    /// (the container waits as ContainerCreating meanwhile; failures back off as
    /// ErrImagePull, then ImagePullBackOff).
    pub(super) async fn image_for(
        &mut self,
        pod_json: &Value,
        c: &Container,
        attempt: u32,
    ) -> Result<(crate::image::Image, PathBuf), (String, String)> {
        let reference = crate::image::normalize(&c.image);
        let latest = reference.ends_with(":latest") && !c.image.contains('@');
        let policy = match c.image_pull_policy.as_str() {
            "" if latest => "Always",
            "" => "IfNotPresent",
            p => p,
        };
        let local = self.images.resolve(&c.image);
        match (policy, local) {
            ("Never", Some(found)) | ("IfNotPresent", Some(found)) => return Ok(found),
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image {:?} is not present with pull policy of Never", c.image),
                ))
            }
            _ => {}
        }
        let key = (meta(pod_json, "uid").to_string(), c.name.clone(), attempt);
        let asked = *self.asked.entry(key).or_insert_with(Instant::now);
        let state = self.pulls.lock().ok().and_then(|m| m.get(&reference).cloned());
        let base = self.config.backoff_base;
        match state {
            Some(Pull::Done(at)) if at >= asked || policy != "Always" => {
                return self.images.resolve(&c.image).ok_or_else(|| {
                    ("ErrImagePull".to_string(), format!("image {:?} vanished from the store after its pull", c.image))
                })
            }
            Some(Pull::InFlight) => return Err(("ContainerCreating".into(), String::new())),
            Some(Pull::Failed { message, at, attempts }) => {
                // ErrImagePull for the first half of the back-off, then ImagePullBackOff.
                let delay = status::back_off(attempts, base, self.config.backoff_max);
                if at.elapsed() < delay / 2 {
                    return Err(("ErrImagePull".into(), message));
                }
                if at.elapsed() < delay {
                    return Err((
                        "ImagePullBackOff".into(),
                        format!("Back-off pulling image {:?}: {message}", c.image),
                    ));
                }
            }
            _ => {}
        }
        // Start a pull.
        let attempts = match self.pulls.lock().ok().and_then(|m| m.get(&reference).cloned()) {
            Some(Pull::Failed { attempts, .. }) => attempts,
            _ => 0,
        };
        if let Ok(mut m) = self.pulls.lock() {
            m.insert(reference.clone(), Pull::InFlight);
        }
        self.client
            .event(pod_json, "Pod", "kubelet", "Normal", "Pulling", &format!("Pulling image {:?}", c.image))
            .await;
        let credential = self.pull_credential(pod_json, &c.image).await;
        let (puller, pulls, store_root) = (self.puller.clone(), self.pulls.clone(), self.config.root.join("images"));
        let (client, pod, image_name) = (self.client.clone(), pod_json.clone(), c.image.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match ImageStore::open(store_root) {
                Ok(store) => puller.pull(&store, &image_name, credential).await,
                Err(e) => Err(e),
            };
            let state = match result {
                Ok(img) => {
                    let msg = format!(
                        "Successfully pulled image {image_name:?} ({}) in {:.3}s",
                        img.digest,
                        started.elapsed().as_secs_f64()
                    );
                    client.event(&pod, "Pod", "kubelet", "Normal", "Pulled", &msg).await;
                    Pull::Done(Instant::now())
                }
                Err(e) => Pull::Failed {
                    message: e.to_string().trim_start_matches("image: ").to_string(),
                    at: Instant::now(),
                    attempts: attempts + 1,
                },
            };
            if let Ok(mut m) = pulls.lock() {
                m.insert(crate::image::normalize(&image_name), state);
            }
        });
        Err(("ContainerCreating".into(), String::new()))
    }

    /// The credential the pod's imagePullSecrets hold for `image`'s registry (the first that
    /// has one). Secrets that cannot be read are reported as the kubelet reports them, and the
    /// pull goes on without them.
    async fn pull_credential(&self, pod_json: &Value, image: &str) -> Option<crate::registry::Credential> {
        let registry = crate::registry::Reference::parse(image).registry;
        let ns = meta(pod_json, "namespace");
        let names: Vec<&str> = pod_json["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        let mut missing = Vec::new();
        let mut found = None;
        for name in names {
            // One read of the secret: `.dockerconfigjson`, else the older `.dockercfg`.
            let keys = self.all_keys("secrets", ns, name, true).await.unwrap_or_default();
            let text = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            let config = text(".dockerconfigjson").or_else(|| text(".dockercfg"));
            let Some(config) = config.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
                missing.push(name);
                continue;
            };
            if found.is_none() {
                found = crate::registry::Credential::from_docker_config(&config, &registry);
            }
        }
        if !missing.is_empty() {
            let message = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.client.event(pod_json, "Pod", "kubelet", "Warning", "FailedToRetrieveImagePullSecret", &message).await;
        }
        found
    }
}
