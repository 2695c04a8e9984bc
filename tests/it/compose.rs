//! What can be checked of `docker-compose.yml` and the `Dockerfile` without
//! a Docker engine: the services, pinned images, ports, health checks,
//! start order, volumes, and that the app is configured with the program's
//! own variable names.

use std::collections::BTreeSet;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    read_yaml("docker-compose.yml")
}

fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &doc["services"][name];
    assert!(!s.is_badvalue(), "service {name} missing");
    s
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|v| v.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Every environment variable the program reads, from its own command line definition.
fn known_variables() -> BTreeSet<String> {
    let cmd = catlog_live::config::Cli::command();
    let mut names: BTreeSet<String> = cmd
        .get_subcommands()
        .flat_map(|s| s.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    names.insert("RUST_LOG".into());
    names
}

#[test]
fn compose_runs_kraft_kafka_postgres_kafka_ui_and_the_app() {
    let doc = compose();
    let services: Vec<&str> = doc["services"]
        .as_hash()
        .unwrap()
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    for name in ["kafka", "postgres", "kafka-ui", "app"] {
        assert!(services.contains(&name), "{name} in {services:?}");
    }
    assert!(
        !services.iter().any(|s| s.contains("zookeeper")),
        "KRaft: no ZooKeeper"
    );
    let kafka = service(&doc, "kafka");
    assert!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller")
    );
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    assert!(
        advertised.contains("kafka:") && advertised.contains("localhost:9092"),
        "inside and from the host"
    );
}

#[test]
fn images_are_pinned_and_ports_published() {
    let doc = compose();
    for name in ["kafka", "postgres", "kafka-ui"] {
        let image = service(&doc, name)["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name} image {image} must be pinned"
        );
    }
    assert!(
        service(&doc, "kafka")["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert!(
        !service(&doc, "app")["build"].is_badvalue(),
        "the app is built from the repo"
    );
    for (name, port) in [
        ("app", "3001:3001"),
        ("kafka-ui", "8080:8080"),
        ("kafka", "9092:9092"),
    ] {
        assert!(
            strings(&service(&doc, name)["ports"]).contains(&port.to_owned()),
            "{name} publishes {port}"
        );
    }
}

#[test]
fn app_starts_after_healthy_kafka_and_postgres_and_data_survives() {
    let doc = compose();
    for name in ["kafka", "postgres", "app"] {
        assert!(
            !service(&doc, name)["healthcheck"]["test"].is_badvalue(),
            "{name} has a health check"
        );
    }
    let app = service(&doc, "app");
    for dependency in ["kafka", "postgres"] {
        assert_eq!(
            app["depends_on"][dependency]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    let volumes: Vec<&str> = doc["volumes"]
        .as_hash()
        .unwrap()
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    for (name, volume) in [("kafka", "kafka-data"), ("postgres", "postgres-data")] {
        assert!(volumes.contains(&volume));
        assert!(
            strings(&service(&doc, name)["volumes"])
                .iter()
                .any(|v| v.starts_with(&format!("{volume}:"))),
            "{name} keeps its data in {volume}"
        );
    }
}

#[test]
fn app_environment_uses_the_programs_variable_names() {
    let doc = compose();
    let env = service(&doc, "app")["environment"].as_hash().unwrap();
    let known = known_variables();
    for key in env.keys().filter_map(Yaml::as_str) {
        assert!(known.contains(key), "{key} is not a variable catlog-live reads");
    }
    for needed in ["KAFKA_BROKER", "DATABASE_URL", "LISTEN_ADDR"] {
        assert!(
            env.keys().any(|k| k.as_str() == Some(needed)),
            "{needed} set for the app"
        );
    }
    let listen = env[&Yaml::from_str("LISTEN_ADDR")].as_str().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "reachable from outside the container"
    );
}

#[test]
fn env_example_lists_every_variable() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    for name in known_variables() {
        assert!(text.contains(&name), "{name} missing from .env.example");
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_the_binary_as_entrypoint() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{image} pinned"
        );
    }
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(!user.ends_with("root") && !user.ends_with(" 0"), "{user}");
    assert!(lines.contains(&r#"ENTRYPOINT ["catlog-live"]"#));
    assert!(
        lines.iter().any(|l| l.contains("cargo build --release")),
        "builds the release binary"
    );
}

const MONITORING: [&str; 2] = ["prometheus", "grafana"];

fn read_yaml(relative: &str) -> Yaml {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// A service's bind mounts of repository files: (source relative to the
/// repository, target in the container).
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            let source = parts.next()?.strip_prefix("./")?;
            Some((source.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Where `target` (a path in the container) comes from in the repository.
fn mounted_source(service: &Yaml, target: &str) -> Option<std::path::PathBuf> {
    bind_mounts(service).into_iter().find_map(|(source, mount)| {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        match target.strip_prefix(&mount)? {
            "" => Some(source),
            rest => rest.strip_prefix('/').map(|inside| source.join(inside)),
        }
    })
}

#[test]
fn monitoring_profile_adds_pinned_prometheus_and_grafana_only_on_request() {
    let doc = compose();
    let exact = regex::Regex::new(r"^v?\d+\.\d+\.\d+$").unwrap();
    for name in MONITORING {
        let s = service(&doc, name);
        assert_eq!(
            strings(&s["profiles"]),
            vec!["monitoring".to_owned()],
            "{name} starts only with --profile monitoring"
        );
        let image = s["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            exact.is_match(tag),
            "{name} image {image} pinned to an exact version"
        );
    }
    for name in ["kafka", "postgres", "kafka-ui", "app"] {
        assert!(
            service(&doc, name)["profiles"].is_badvalue(),
            "{name} runs without a profile"
        );
    }
    assert!(
        service(&doc, "prometheus")["image"]
            .as_str()
            .unwrap()
            .starts_with("prom/prometheus:")
    );
    assert!(
        service(&doc, "grafana")["image"]
            .as_str()
            .unwrap()
            .starts_with("grafana/grafana:")
    );
    for (name, port) in [("prometheus", "9090:9090"), ("grafana", "3000:3000")] {
        assert!(
            strings(&service(&doc, name)["ports"]).contains(&port.to_owned()),
            "{name} publishes {port}"
        );
    }
    let mut host_ports = BTreeSet::new();
    for (_, s) in doc["services"].as_hash().unwrap() {
        for port in strings(&s["ports"]) {
            let host = port.split(':').next().unwrap_or_default().to_owned();
            assert!(host_ports.insert(host), "host port of {port} published twice");
        }
    }
}

#[test]
fn monitoring_mounts_files_that_exist_and_agree_with_each_other() {
    let doc = compose();
    let declared: Vec<&str> = doc["volumes"]
        .as_hash()
        .unwrap()
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    for name in MONITORING {
        let s = service(&doc, name);
        let mounts = bind_mounts(s);
        assert!(!mounts.is_empty(), "{name} mounts its configuration");
        for (source, _) in &mounts {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
            assert!(path.exists(), "{name} mounts {source}, which does not exist");
        }
        for volume in strings(&s["volumes"]).iter().filter(|v| !v.starts_with("./")) {
            let named = volume.split(':').next().unwrap_or_default();
            assert!(declared.contains(&named), "{name}'s volume {named} is declared");
        }
    }

    // Prometheus: the config file it is told to read is the repository's,
    // its rule files are mounted beside it, and it scrapes the app every 5 s.
    let prometheus = service(&doc, "prometheus");
    let config_path = strings(&prometheus["command"])
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_owned))
        .expect("--config.file");
    assert!(
        mounted_source(prometheus, &config_path).is_some_and(|p| p.ends_with("monitoring/prometheus.yml")),
        "{config_path} is monitoring/prometheus.yml"
    );
    let config = read_yaml("monitoring/prometheus.yml");
    let config_dir = config_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    for rules in strings(&config["rule_files"]) {
        let source = mounted_source(prometheus, &format!("{config_dir}/{rules}"));
        assert!(
            source.as_ref().is_some_and(|p| p.is_file()),
            "rule file {rules} is mounted beside the config ({source:?})"
        );
    }
    let app_port = service(&doc, "app")["environment"]["LISTEN_ADDR"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap();
    let jobs = config["scrape_configs"].as_vec().unwrap();
    let app_job = jobs
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_vec()
                .into_iter()
                .flatten()
                .any(|c| strings(&c["targets"]).contains(&format!("app:{app_port}")))
        })
        .expect("a job scraping app");
    let interval = app_job["scrape_interval"]
        .as_str()
        .or(config["global"]["scrape_interval"].as_str());
    assert_eq!(interval, Some("5s"));
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/prometheus.yml")).unwrap();
    assert!(
        text.contains("METRICS_ADDR") && text.contains("job_name: catlog-live-consume"),
        "an example job for a standalone consume"
    );

    // Grafana: the data source points at the prometheus service, and the
    // dashboard provider reads the folder the dashboards are mounted at.
    let grafana = service(&doc, "grafana");
    let datasources = read_yaml("monitoring/grafana/provisioning/datasources/prometheus.yml");
    let prometheus_port = strings(&prometheus["ports"])
        .first()
        .and_then(|p| p.rsplit_once(':').map(|(_, c)| c.to_owned()))
        .unwrap();
    assert_eq!(
        datasources["datasources"][0]["url"].as_str(),
        Some(format!("http://prometheus:{prometheus_port}").as_str())
    );
    assert!(
        mounted_source(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
            .is_some_and(|p| p.is_file()),
        "provisioning mounted where Grafana reads it"
    );
    let providers = read_yaml("monitoring/grafana/provisioning/dashboards/catlog-live.yml");
    let dashboards = providers["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(
        mounted_source(grafana, &format!("{dashboards}/catlog-live.json")).is_some_and(|p| p.is_file()),
        "the dashboard is mounted at {dashboards}"
    );
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert!(
        mounted_source(grafana, home).is_some_and(|p| p.is_file()),
        "home dashboard {home} is mounted"
    );
}
