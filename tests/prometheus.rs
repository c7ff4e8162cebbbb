//! The dashboard and the alert rules against a real Prometheus (issue 9 item 7): a proxy (the
//! test harness, a FHIR server that ignores `_security`) under generated traffic, scraped by
//! the Debian package's `prometheus` every second with `dashboards/alerts.yml` loaded. Then
//! `promtool check rules` passes, and every dashboard expression and every rule, evaluated
//! through Prometheus' HTTP API, is valid and returns series.
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`; `scripts/test.sh` and
//! `scripts/prometheus-check.sh` install it). Alone in its test binary: the harness shares the
//! process's metrics registry.

// Runs the proxy and the `dev` PKI: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SUPPORTER_CVR: &str = "29189846";
const SUPPORTER_SOR: &str = "937961000016000";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A tool of the Debian `prometheus` package, or a failure saying how to install it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` not found: install the Debian package (apt-get install -y prometheus; scripts/test.sh does)")
    })
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn labelled(device: &str, sor: &str, cpr: &str) -> Value {
    let mut r = example_registration();
    r["meta"]["security"] = json!([
        {"system": "urn:eds-proxy:label:device-id", "code": device},
        {"system": "urn:eds-proxy:label:sor", "code": sor},
        {"system": "urn:eds-proxy:label:cpr", "code": cpr}
    ]);
    r
}

/// Requests that make every metric the dashboard and the rules read have series: allowed
/// searches and reads (token cache misses and hits), a supporter's search and read (audit
/// records), a read of someone else's record (hidden), searchset entries withheld (the FHIR
/// server ignores `_security`), a foreign answer (502), a 5xx from the FHIR server, a bad token.
async fn traffic(h: &Harness) {
    let supporters = h
        .upstream
        .seed(labelled("prom-other", SUPPORTER_SOR, "0101019999"));
    let station = h.caller("prom-station", station_claims("prom-station", "1", "2"));
    let supporter = h.caller("prom-supporter", supporter_claims(SUPPORTER_CVR));
    let read = |id: &str| {
        (
            format!("/AuditEvent/{id}"),
            format!("/fhir/AuditEvent/{id}"),
        )
    };
    let (hidden, hidden_up) = read(&supporters);
    let (foreign, foreign_up) = read("foreign-1");
    let (broken, broken_up) = read("broken-1");
    for _ in 0..3 {
        // The FHIR server ignores `_security`: entries withheld, the page still 200.
        let a = station.search("").send().await.unwrap();
        assert_eq!(a.status(), 200, "{}", a.text().await.unwrap());
        station
            .get(&hidden)
            .expect(
                h,
                upstream(404, "not-found", "GET", hidden_up.clone()).because("not_found"),
            )
            .await;
        assert_eq!(supporter.search("").send().await.unwrap().status(), 200);
        supporter
            .get(&hidden)
            .expect(h, upstream(200, "AuditEvent", "GET", hidden_up.clone()))
            .await;
        station
            .get(&foreign)
            .expect(
                h,
                upstream(502, "transient", "GET", foreign_up.clone()).because("foreign_resource"),
            )
            .await;
        station
            .get(&broken)
            .expect(
                h,
                upstream(502, "transient", "GET", broken_up.clone()).because("upstream_status"),
            )
            .await;
        station
            .clone()
            .with_token("x.y.z")
            .search("")
            .expect(h, bad_token().because("malformed"))
            .await;
    }
}

async fn query(client: &reqwest::Client, base: &str, expr: &str) -> Value {
    client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `None` if `expr` is valid and returns at least one series, else what is wrong.
async fn problem(client: &reqwest::Client, base: &str, expr: &str) -> Option<String> {
    let answer = query(client, base, expr).await;
    if answer["status"] != "success" {
        return Some(format!("{expr}: {}", answer["error"]));
    }
    match answer["data"]["result"].as_array() {
        Some(series) if !series.is_empty() => None,
        _ => Some(format!("{expr}: no series")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_expression_and_alert_rule() {
    let prometheus = tool("prometheus");
    let promtool = tool("promtool");
    let rules = repo("dashboards/alerts.yml");
    let checked = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let alerts = rules_text.matches("- alert:").count();
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains(&format!("SUCCESS: {alerts} rules found")),
        "{checked:?}"
    );

    let dir = tmp_dir("prometheus");
    let h = Harness::start(
        "prometheus",
        Options {
            upstream_mode: UpstreamMode::Leaky,
            extra_config: format!(
                "[audit]\npath = \"{}\"\n",
                dir.join("audit.jsonl").display()
            ),
            ..Options::default()
        },
    );
    h.upstream.script(common::upstream::Scripted {
        method: "GET".into(),
        target_prefix: "/fhir/AuditEvent/foreign-1".into(),
        status: 200,
        headers: vec![],
        body: br#"{"resourceType":"Patient","id":"foreign-1"}"#.to_vec(),
    });
    h.upstream.script(common::upstream::Scripted {
        method: "GET".into(),
        target_prefix: "/fhir/AuditEvent/broken-1".into(),
        status: 500,
        headers: vec![],
        body: br#"{"resourceType":"OperationOutcome","issue":[]}"#.to_vec(),
    });
    traffic(&h).await;

    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: eds-proxy\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            rules.display(),
            h.admin_port
        ),
    )
    .unwrap();
    let checked = Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _running = Prometheus(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // Wait for five scrapes (rates need two samples in their window), with more traffic
    // between them so counters move.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "Prometheus never scraped the proxy five times:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        let Ok(resp) = client
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", "count_over_time(up{job=\"eds-proxy\"}[1m])")])
            .send()
            .await
        else {
            continue;
        };
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        let scrapes = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if (3.0..4.0).contains(&scrapes) {
            traffic(&h).await;
        }
        if scrapes >= 5.0 {
            break;
        }
    }
    let up = query(&client, &base, "up{job=\"eds-proxy\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // Every dashboard expression, with the instance selector at "All".
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/eds-proxy.json")).unwrap())
            .unwrap();
    let mut problems = Vec::new();
    let mut evaluated = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            evaluated += 1;
            problems.extend(problem(&client, &base, &expr).await);
        }
    }
    // The instance selector's values come from `label_values(<metric>, instance)`: the metric
    // has the proxy's instance.
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    let definition = variable["definition"].as_str().unwrap();
    let metric = definition
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(", instance)"))
        .unwrap();
    let answer = query(&client, &base, metric).await;
    assert_eq!(
        answer["data"]["result"][0]["metric"]["instance"],
        json!(format!("127.0.0.1:{}", h.admin_port)),
        "{answer}"
    );

    // Every rule: loaded and evaluated without error by Prometheus, and its signal (the
    // expression with its comparison made `bool`) returns series.
    let rules: Value = client
        .get(format!("{base}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alerts, "{rules}");
    for rule in loaded {
        let name = rule["name"].as_str().unwrap();
        if rule["health"] != "ok" {
            problems.push(format!(
                "rule {name}: {} {}",
                rule["health"], rule["lastError"]
            ));
        }
        let expr = rule["query"].as_str().unwrap();
        let comparisons = [" > ", " < "]
            .iter()
            .map(|op| expr.matches(op).count())
            .sum::<usize>();
        assert_eq!(
            comparisons, 1,
            "rule {name} needs one top-level comparison: {expr}"
        );
        let signal = expr.replace(" > ", " > bool ").replace(" < ", " < bool ");
        evaluated += 1;
        problems.extend(
            problem(&client, &base, expr)
                .await
                .filter(|p| !p.ends_with("no series")),
        );
        problems.extend(
            problem(&client, &base, &signal)
                .await
                .map(|p| format!("rule {name}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "{} of {evaluated} expressions fail:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
