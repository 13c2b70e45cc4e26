//! The Kubernetes manifests (deploy/): each overlay is rendered by kustomize (`kubectl kustomize`), every
//! object is parsed into its Kubernetes API type (k8s-openapi; a field the type does not know fails the
//! round trip), and the wiring is checked against the code: ports, probe paths, configuration, Secret
//! references, NetworkPolicy, RBAC, monitoring and the container build file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_server::config::{Config, FileValues, keys};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The objects of one overlay, as kustomize renders them.
struct Rendered {
    overlay: &'static str,
    docs: Vec<Value>,
}

/// `null`s removed (k8s-openapi leaves unset fields out when it serializes).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

impl Rendered {
    fn render(overlay: &'static str) -> Self {
        let out = std::process::Command::new("kubectl")
            .args(["kustomize", &format!("deploy/overlays/{overlay}")])
            .current_dir(repo())
            .output()
            .expect("kubectl (with its built-in kustomize) is needed to render deploy/: install kubectl");
        assert!(
            out.status.success(),
            "kustomize {overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert!(!docs.is_empty());
        Rendered { overlay, docs }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// Every object of `kind`, typed; the typed object must serialize back to exactly the YAML's content
    /// (a misspelt or misplaced field is lost in the round trip and fails here).
    fn typed<T: DeserializeOwned + Serialize>(&self, kind: &str) -> Vec<T> {
        self.of_kind(kind)
            .into_iter()
            .map(|doc| {
                let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
                    panic!("{}: {kind} {}: {e}", self.overlay, doc["metadata"]["name"])
                });
                let back = without_nulls(&serde_json::to_value(&typed).unwrap());
                assert_eq!(
                    back,
                    without_nulls(doc),
                    "{}: {kind} {} has fields its API type does not know",
                    self.overlay,
                    doc["metadata"]["name"]
                );
                typed
            })
            .collect()
    }

    fn one<T: DeserializeOwned + Serialize>(&self, kind: &str) -> T {
        let mut all = self.typed::<T>(kind);
        assert_eq!(all.len(), 1, "{}: one {kind}", self.overlay);
        all.remove(0)
    }
}

fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().unwrap()
}

fn port_of(c: &Container, name: &str) -> i32 {
    c.ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container port {name}"))
        .container_port
}

fn named_port(p: &IntOrString) -> &str {
    match p {
        IntOrString::String(s) => s,
        IntOrString::Int(i) => panic!("use the container port's name, not {i}"),
    }
}

/// The configuration the ConfigMap ships, loaded as the service loads it (with the database URL the
/// Secret would give).
fn shipped_config(r: &Rendered, deployment: &Deployment) -> Config {
    let spec = pod_spec(&deployment.spec.as_ref().unwrap().template);
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "config")
        .unwrap();
    let cm_name = volume.config_map.as_ref().unwrap().name.clone();
    let cms: Vec<ConfigMap> = r.typed("ConfigMap");
    let cm = cms
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(cm_name.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{}: the config volume's ConfigMap {cm_name} exists",
                r.overlay
            )
        });
    let text = &cm.data.as_ref().unwrap()["config.toml"];
    let file = FileValues::parse(text, "config.toml").unwrap();
    let env: BTreeMap<String, String> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .chain([(
            "DATASTORAGE_DATABASE_URL".to_owned(),
            "postgres://u@db:5432/ds".to_owned(),
        )])
        .map(|(k, v)| match k.as_str() {
            // The Secret's file is not here: a key of the tests' own at the path the pod would read
            // (the path itself is checked against the Secret's mount in `check_overlay`).
            "DATASTORAGE_LOG_SIGNING_KEY_FILE" => {
                (k, ds_tests::log_key().path.display().to_string())
            }
            _ => (k, v),
        })
        .collect();
    Config::from_sources(&|k| env.get(k).cloned(), &file)
        .unwrap_or_else(|e| panic!("{}: the shipped configuration is invalid: {e}", r.overlay))
}

fn check_overlay(r: &Rendered, replicas: i32) {
    let d: Deployment = r.one("Deployment");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(replicas), "{}: replicas", r.overlay);
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let config = shipped_config(r, &d);

    // Ports: the container's, the configuration's listeners and the Service's agree.
    assert_eq!(port_of(c, "http") as u16, config.http_addr.port());
    assert_eq!(port_of(c, "metrics") as u16, config.metrics_addr.port());
    assert!(
        !config.http_addr.ip().is_loopback(),
        "listens beyond loopback"
    );
    let svc: Service = r.one("Service");
    let svc_spec = svc.spec.as_ref().unwrap();
    let svc_ports: BTreeMap<String, (i32, String)> = svc_spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = named_port(p.target_port.as_ref().unwrap()).to_owned();
            port_of(c, &target);
            (p.name.clone().unwrap(), (p.port, target))
        })
        .collect();
    assert_eq!(svc_ports["http"].0, 8080);
    assert_eq!(svc_ports["metrics"].0, 9090);
    let svc_selector = svc_spec.selector.clone().unwrap();
    assert!(
        svc_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    );

    // Probes: on the container's http port, at the paths the router serves (checked live below).
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(named_port(&get.port), "http");
    }
    let readiness = c.readiness_probe.as_ref().unwrap();
    assert!(
        readiness.timeout_seconds.unwrap() > 5,
        "the readiness timeout covers /readyz's 5 s database budget"
    );

    // Hardening and shutdown.
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    let resources = c.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let sleep = pre_stop.sleep.as_ref().unwrap().seconds;
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(
        grace > sleep + config.shutdown_timeout.as_secs() as i64,
        "{}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep {sleep} + shutdown timeout {:?}",
        r.overlay,
        config.shutdown_timeout
    );

    // The command line: a subcommand the binary has, and the configuration file where it is mounted.
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "serve");
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "config")
        .unwrap();
    assert_eq!(config_path, &format!("{}/config.toml", mount.mount_path));

    // Environment: only keys the service reads; the database URL from a Secret.
    for e in c.env.iter().flatten() {
        assert!(
            keys::by_env(&e.name).is_some(),
            "{}: {} is not a configuration key",
            r.overlay,
            e.name
        );
    }
    let db = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DATASTORAGE_DATABASE_URL")
        .unwrap();
    assert!(db.value.is_none());
    let secret = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(secret.name, "datastorage-database");
    // The embedding key's Secret is mounted (optional) where the commented provider settings expect it.
    let key_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "embedding-key")
        .unwrap();
    let key_secret = key_volume.secret.as_ref().unwrap();
    assert_eq!(
        key_secret.secret_name.as_deref(),
        Some("datastorage-embedding")
    );
    assert_eq!(key_secret.optional, Some(true));
    let key_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "embedding-key")
        .unwrap();
    let config_text = std::fs::read_to_string(repo().join("deploy/base/config.toml")).unwrap();
    assert!(config_text.contains(&format!(
        "api_key_file = \"{}/api-key\"",
        key_mount.mount_path
    )));

    // The checkpoint signing key: a required Secret, mounted where the configuration reads it.
    let log_key = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DATASTORAGE_LOG_SIGNING_KEY_FILE")
        .and_then(|e| e.value.clone())
        .expect("the signing key file is configured");
    let log_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "log-key")
        .unwrap();
    let log_secret = log_volume.secret.as_ref().unwrap();
    assert_eq!(
        log_secret.secret_name.as_deref(),
        Some("datastorage-log-key")
    );
    assert_ne!(log_secret.optional, Some(true), "no key, no service");
    let log_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "log-key")
        .unwrap();
    assert_eq!(log_key, format!("{}/signing-key", log_mount.mount_path));

    // The migration Job: same image, `migrate`, the owner role's Secret, same configuration.
    let job: Job = r.one("Job");
    let jc = &pod_spec(&job.spec.as_ref().unwrap().template).containers[0];
    assert_eq!(jc.image, c.image);
    assert_eq!(jc.args.as_ref().unwrap()[0], "migrate");
    assert!(jc.env.iter().flatten().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some_and(|s| s.name == "datastorage-database-owner")
    }));
    assert!(
        !config.migrate_on_start,
        "the Job migrates; replicas wait for it"
    );

    check_network_policy(r, &pod_labels);
    check_rbac(r, pod.service_account_name.as_deref().unwrap());
    let _: Vec<Namespace> = r.typed("Namespace");
    let sas: Vec<ServiceAccount> = r.typed("ServiceAccount");
    assert!(
        sas.iter()
            .any(|s| s.metadata.name == pod.service_account_name)
    );
}

fn check_network_policy(r: &Rendered, pod_labels: &BTreeMap<String, String>) {
    let np: NetworkPolicy = r.one("NetworkPolicy");
    let spec = np.spec.as_ref().unwrap();
    let selects = spec
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert!(
        selects.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "selects the pods"
    );
    let types = spec.policy_types.clone().unwrap();
    assert!(types.contains(&"Ingress".to_owned()) && types.contains(&"Egress".to_owned()));
    let ingress = spec.ingress.clone().unwrap();
    // The probes (from the kubelet, on the node) reach the http port: a rule without `from`.
    assert!(
        ingress.iter().any(|rule| rule.from.is_none()
            && rule
                .ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::String("http".into())))),
        "{}: the NetworkPolicy admits the probes on http",
        r.overlay
    );
    // Metrics only from Prometheus.
    let metrics_rule = ingress
        .iter()
        .find(|rule| {
            rule.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::String("metrics".into())))
        })
        .unwrap();
    let from = metrics_rule
        .from
        .as_ref()
        .expect("metrics are not open to all");
    assert!(from.iter().any(|peer| {
        peer.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .is_some_and(|l| {
                l.get("app.kubernetes.io/name").map(String::as_str) == Some("prometheus")
            })
    }));
    // Egress: DNS, PostgreSQL, HTTPS (API server, embedding provider), nothing else.
    let mut egress_ports = BTreeSet::new();
    for rule in spec.egress.iter().flatten() {
        for p in rule.ports.iter().flatten() {
            match p.port.as_ref().unwrap() {
                IntOrString::Int(n) => egress_ports.insert(*n),
                IntOrString::String(s) => panic!("egress port {s} should be a number"),
            };
        }
        assert!(
            rule.ports.is_some(),
            "an egress rule without ports opens everything"
        );
    }
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 5432, 6443]));
}

fn check_rbac(r: &Rendered, service_account: &str) {
    let roles: Vec<ClusterRole> = r.typed("ClusterRole");
    let bindings: Vec<ClusterRoleBinding> = r.typed("ClusterRoleBinding");
    let role = |name: &str| {
        roles
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("ClusterRole {name}"))
    };
    // What the service's ServiceAccount may do: exactly what ds-auth-kube calls.
    let mut granted = BTreeSet::new();
    for b in &bindings {
        let ours = b.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == service_account
                && s.namespace.as_deref() == Some("kubernaut-system")
        });
        if !ours {
            continue;
        }
        assert_eq!(b.role_ref.kind, "ClusterRole");
        for rule in role(&b.role_ref.name).rules.iter().flatten() {
            for g in rule.api_groups.iter().flatten() {
                for res in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        granted.insert((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
            assert!(rule.non_resource_urls.is_none());
        }
    }
    let called: BTreeSet<(String, String, String)> = ds_auth_kube::API_CALLS
        .iter()
        .map(|(g, res, v)| (g.to_string(), res.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        granted, called,
        "{}: the service's RBAC differs from what it calls",
        r.overlay
    );

    // What callers are granted matches the questions the service asks.
    use ds_domain::ports::Access;
    let on = |name: &str, resource: &str| -> BTreeSet<String> {
        role(name)
            .rules
            .iter()
            .flatten()
            .filter(|rule| {
                rule.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g == ds_auth_kube::API_GROUP)
                    && rule.resources.iter().flatten().any(|res| res == resource)
            })
            .flat_map(|rule| rule.verbs.clone())
            .collect()
    };
    let verb = |a| ds_auth_kube::resource_verb(a).unwrap().1.to_owned();
    assert_eq!(
        on("datastorage-audit-writer", ds_auth_kube::RESOURCE),
        BTreeSet::from([verb(Access::Write), verb(Access::Read)])
    );
    assert_eq!(
        on("datastorage-audit-reader", ds_auth_kube::RESOURCE),
        BTreeSet::from([verb(Access::Read)])
    );
    assert_eq!(
        on("datastorage-legal-hold-admin", ds_auth_kube::HOLDS_RESOURCE),
        BTreeSet::from([
            verb(Access::HoldCreate),
            verb(Access::HoldRelease),
            verb(Access::HoldList)
        ])
    );
    for a in [Access::HoldCreate, Access::HoldRelease, Access::HoldList] {
        assert_eq!(
            ds_auth_kube::resource_verb(a).unwrap().0,
            ds_auth_kube::HOLDS_RESOURCE
        );
    }
    let metrics = role("datastorage-metrics-reader").rules.clone().unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        metrics[0].non_resource_urls,
        Some(vec![ds_auth_kube::METRICS_PATH.to_owned()])
    );
    assert_eq!(
        metrics[0].verbs,
        vec![ds_auth_kube::METRICS_VERB.to_owned()]
    );
}

#[test]
fn production_overlay_is_wired_to_the_code() {
    let r = Rendered::render("production");
    check_overlay(&r, 3);
    let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget");
    let min = pdb.spec.as_ref().unwrap().min_available.clone().unwrap();
    assert_eq!(min, IntOrString::Int(2));
    let hpa: HorizontalPodAutoscaler = r.one("HorizontalPodAutoscaler");
    let hpa_spec = hpa.spec.unwrap();
    assert_eq!(hpa_spec.scale_target_ref.kind, "Deployment");
    assert_eq!(hpa_spec.scale_target_ref.name, "datastorage");
    assert!(hpa_spec.min_replicas.unwrap() >= 2);

    // Monitoring: the ServiceMonitor scrapes the Service's metrics port at the metrics path; the rules
    // and the dashboard are shipped.
    let sm = r.of_kind("ServiceMonitor");
    assert_eq!(sm.len(), 1);
    let endpoint = &sm[0]["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], ds_auth_kube::METRICS_PATH);
    let svc: Service = r.one("Service");
    let svc_labels = svc.metadata.labels.clone().unwrap();
    let sm_selector = sm[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        sm_selector
            .iter()
            .all(|(k, v)| svc_labels.get(k).map(String::as_str) == v.as_str())
    );
    assert_eq!(r.of_kind("PrometheusRule").len(), 1);
    let dashboards: Vec<ConfigMap> = r.typed("ConfigMap");
    let dashboard = dashboards
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("datastorage-dashboard"))
        .unwrap();
    assert_eq!(
        dashboard.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
        "1"
    );
    let json = &dashboard.data.as_ref().unwrap()["datastorage.json"];
    let _: Value = serde_json::from_str(json).unwrap();
    for obj in &r.docs {
        let ns = obj["metadata"]["namespace"].as_str();
        let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"]
            .contains(&obj["kind"].as_str().unwrap());
        assert_eq!(ns.is_none(), cluster_scoped, "{} namespace", obj["kind"]);
    }
}

#[test]
fn dev_overlay_is_wired_to_the_code() {
    let r = Rendered::render("dev");
    check_overlay(&r, 1);
    assert!(r.of_kind("HorizontalPodAutoscaler").is_empty());
    assert!(r.of_kind("PodDisruptionBudget").is_empty());
    assert!(
        r.of_kind("ServiceMonitor").is_empty(),
        "dev needs no prometheus-operator"
    );
}

#[test]
fn the_containerfile_builds_what_the_deployment_runs() {
    let file = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let r = Rendered::render("production");
    let d: Deployment = r.one("Deployment");
    let config = shipped_config(&r, &d);
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    // The binary the workspace builds.
    assert!(file.contains("--bin datastorage"));
    assert!(file.contains("ENTRYPOINT [\"/usr/local/bin/datastorage\"]"));
    // Non-root user = the Deployment's.
    let uid = pod.security_context.as_ref().unwrap().run_as_user.unwrap();
    assert!(file.contains(&format!("USER {uid}:")), "USER {uid}");
    // Ports.
    for name in ["http", "metrics"] {
        let port = port_of(c, name);
        assert!(
            file.lines()
                .any(|l| l.starts_with("EXPOSE") && l.contains(&port.to_string()))
        );
    }
    // The model is baked into the image where the configuration looks for it.
    let model = config.model_dir.display().to_string();
    assert!(file.contains(&format!("fetch-model.sh {model}")), "{model}");
    assert!(file.contains(&format!("COPY --from=build {model} {model}")));
    // The default command is the Deployment's.
    let args = c.args.clone().unwrap();
    let cmd = format!(
        "CMD {}",
        serde_json::to_string(&args).unwrap().replace(",", ", ")
    );
    assert!(file.contains(&cmd), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_paths_are_served_by_the_router() {
    let r = Rendered::render("production");
    let d: Deployment = r.one("Deployment");
    let c = d.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let app = ds_tests::spawn_app().await.unwrap();
    for probe in [c.liveness_probe, c.readiness_probe, c.startup_probe] {
        let path = probe.unwrap().http_get.unwrap().path.unwrap();
        let reply = app.get(&path).await.unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let scrape = app
        .client
        .get(format!(
            "http://{}{}",
            app.metrics_addr,
            ds_auth_kube::METRICS_PATH
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
}
