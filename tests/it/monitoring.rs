//! The monitoring in `monitoring/` against a real Prometheus: `promtool`
//! accepts the app's `/metrics`, the alerting rules and their unit tests;
//! a Prometheus started here scrapes `catlog-live all` and answers every
//! query of the Grafana dashboard with data, so no panel is empty on a fresh
//! deployment and none refers to a metric that does not exist.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`;
//! scripts/test installs it when missing).

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TestDb, free_port, start_all, unique, which};
use serde_json::Value;
use yaml_rust2::YamlLoader;

const WAIT: Duration = Duration::from_secs(60);

/// What Grafana would put in place of its own variables (a 1 s scrape
/// interval here, so a few samples fit in each window).
const GRAFANA_VARIABLES: [(&str, &str); 4] = [
    ("$__rate_interval", "10s"),
    ("$__interval", "5s"),
    ("$__range", "1m"),
    ("$__range_s", "60"),
];

/// The metrics the dashboard must show, one panel or query each at least.
const DASHBOARD_METRICS: [&str; 16] = [
    "catlog_events_consumed_total",
    "catlog_dead_letters_total",
    "catlog_batch_commit_seconds",
    "catlog_batch_commit_seconds_sum",
    "catlog_batch_commit_seconds_count",
    "catlog_consumer_lag",
    "catlog_consumer_new_log",
    "catlog_consumer_log_epoch",
    "catlog_consumer_log_resets_total",
    "catlog_offset_mirror_commits_total",
    "catlog_offset_mirror_failures_total",
    "catlog_offset_mirror_last_success_timestamp_seconds",
    "catlog_ws_clients",
    "catlog_ws_messages_sent_total",
    "catlog_ws_messages_coalesced_total",
    "catlog_ws_resyncs_total",
];

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dashboard() -> Value {
    let path = repo("monitoring/grafana/dashboards/catlog-live.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, those inside rows too.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, PromQL) of every query, and of every query variable as the
/// series selector inside its `label_values(…)`.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a query of {title:?} without expr"));
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let definition = variable["definition"].as_str().unwrap_or_default();
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _)| selector.trim().to_owned())
            .unwrap_or_else(|| panic!("variable query {definition:?} is not label_values(selector, label)"));
        let name = variable["name"].as_str().unwrap_or_default();
        queries.push((format!("variable ${name}"), selector));
    }
    queries
}

/// `expr` with Grafana's variables and the dashboard's own replaced by fixed
/// values (a template variable by its "All" value).
fn substitute(expr: &str, dashboard: &Value) -> String {
    let mut out = expr.to_owned();
    for (name, value) in GRAFANA_VARIABLES {
        out = out.replace(name, value);
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default();
        let value = variable["allValue"].as_str().unwrap_or(".*");
        for form in [format!("${{{name}}}"), format!("[[{name}]]"), format!("${name}")] {
            out = out.replace(&form, value);
        }
    }
    assert!(!out.contains('$'), "a variable left in {out:?}");
    out
}

fn prometheus_tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "{name} not found: install Debian's prometheus package \
             (`apt-get install --no-install-recommends prometheus`; scripts/test does)"
        )
    })
}

/// Runs promtool with `args` (and `stdin`), failing with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(prometheus_tool("promtool"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("promtool: {e}"));
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        input.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// A Prometheus of the test's own: its own data directory and port; killed,
/// and its directory removed, when dropped.
struct Prometheus {
    url: String,
    dir: PathBuf,
    process: Proc,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second and evaluates `monitoring/alerts.yml`.
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{rules}\"\n\
             scrape_configs:\n  - job_name: catlog-live\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = repo("monitoring/alerts.yml").display(),
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let mut cmd = Command::new(prometheus_tool("prometheus"));
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null());
        let process = Proc::spawn(cmd, "prometheus");
        process.wait_for_port(port, WAIT);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            process,
        }
    }

    /// Waits until Prometheus says it is ready: its port opens before its
    /// storage is, and until then every query gets a plain-text 503.
    async fn wait_ready(&self) {
        let url = format!("{}/-/ready", self.url);
        common::wait_until(WAIT, "Prometheus to be ready (/-/ready)", || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// An instant query: Prometheus's whole JSON answer.
    async fn query(&self, expr: &str) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", expr)])
            .unwrap();
        let response = reqwest::get(url)
            .await
            .unwrap_or_else(|e| panic!("prometheus: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {status} without JSON ({e}): {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.kill_hard();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many series (or 1 for a scalar) an answer holds; `Err` with the error when the query failed.
fn result_count(answer: &Value) -> Result<usize, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "{}: {}",
            answer["errorType"].as_str().unwrap_or("?"),
            answer["error"].as_str().unwrap_or("?")
        ));
    }
    match answer["data"]["resultType"].as_str() {
        Some("vector" | "matrix") => Ok(answer["data"]["result"].as_array().map_or(0, Vec::len)),
        Some("scalar" | "string") => Ok(1),
        other => Err(format!("unexpected result type {other:?}")),
    }
}

#[test]
fn dashboard_shows_every_metric_from_the_provisioned_datasource() {
    let dashboard = dashboard();
    let provisioned = {
        let path = repo("monitoring/grafana/provisioning/datasources/prometheus.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = YamlLoader::load_from_str(&text).unwrap().remove(0);
        doc["datasources"][0]["uid"].as_str().unwrap().to_owned()
    };
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 41,
        "a current Grafana schema"
    );
    assert_eq!(dashboard["uid"], "catlog-live");
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id of {title:?} unique"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "{title:?} has a place on the grid"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], provisioned.as_str(), "{title:?}");
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "{title:?} queries something");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], provisioned.as_str(), "{title:?}");
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        assert_eq!(variable["datasource"]["uid"], provisioned.as_str());
    }
    let exprs: Vec<String> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let word = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
    let used: BTreeSet<&str> = exprs
        .iter()
        .flat_map(|e| word.find_iter(e).map(|m| m.as_str()))
        .collect();
    for metric in DASHBOARD_METRICS {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn monitoring_configuration_and_alert_rules_pass_promtool() {
    let rules = promtool(&["check", "rules", "monitoring/alerts.yml"], None);
    println!("promtool check rules:\n{rules}");
    let tests = promtool(&["test", "rules", "monitoring/alerts.test.yml"], None);
    println!("promtool test rules:\n{tests}");
    let config = promtool(&["check", "config", "monitoring/prometheus.yml"], None);
    println!("promtool check config:\n{config}");
}

#[tokio::test]
async fn prometheus_scrapes_all_and_every_dashboard_query_returns_data() {
    let db = TestDb::new();
    let topic = unique("catlog-monitoring");
    let (_app, url) = start_all(&topic, &db, &[("PRODUCER_INTERVAL_MS", "100")]).await;
    let url = url.trim_end_matches('/').to_owned();

    // The exposition itself, as Prometheus's own linter reads it.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lint = promtool(&["check", "metrics"], Some(&metrics));
    println!(
        "promtool check metrics: ok{}",
        if lint.trim().is_empty() {
            String::new()
        } else {
            format!("\n{lint}")
        }
    );

    let target = url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target);
    prometheus.wait_ready().await;
    let scraper = &prometheus;
    common::wait_until(
        WAIT,
        "Prometheus to scrape catlog-live a few times",
        || async move {
            let answer = scraper
                .query("count_over_time(up{job=\"catlog-live\"}[1m])")
                .await;
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= 5.0)
        },
    )
    .await;
    let up = prometheus.query("up{job=\"catlog-live\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "the target is up: {up}");

    // Every dashboard query parses and has data; a query may need a few
    // more scrapes (a rate needs two samples), so each gets a while.
    let dashboard = dashboard();
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (panel, expr) in dashboard_queries(&dashboard) {
        let query = substitute(&expr, &dashboard);
        let deadline = Instant::now() + Duration::from_secs(30);
        let outcome = loop {
            let outcome = result_count(&prometheus.query(&query).await);
            if matches!(outcome, Ok(n) if n > 0) || Instant::now() >= deadline {
                break outcome;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let verdict = match &outcome {
            Ok(0) => "EMPTY".to_owned(),
            Ok(n) => format!("ok, {n} series"),
            Err(e) => format!("ERROR {e}"),
        };
        report.push(format!("{verdict:<14} [{panel}] {query}"));
        if !matches!(outcome, Ok(n) if n > 0) {
            failed.push(format!("[{panel}] {query}: {verdict}"));
        }
    }
    println!("dashboard queries against Prometheus:\n{}", report.join("\n"));
    assert!(
        failed.is_empty(),
        "dashboard queries without data:\n{}\n\nthe app's /metrics:\n{metrics}",
        failed.join("\n")
    );

    // The alerting rules load in this Prometheus and evaluate without error.
    let deadline = Instant::now() + WAIT;
    let rules = loop {
        let answer: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "the alert rules did not all evaluate: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "alert rules loaded and evaluated without error: {}",
        rules
            .iter()
            .map(|r| format!(
                "{} ({})",
                r["name"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(prometheus);
}
