//! What can be checked of `docker-compose.yml` and the `Dockerfile` without
//! a Docker engine: the services, pinned images, ports, health checks,
//! start order, volumes, and that the app is configured with the program's
//! own variable names.

use std::collections::BTreeSet;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
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
