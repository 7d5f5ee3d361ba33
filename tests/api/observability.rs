//! Observability (docs/api.md, Metrics; docs/operations.md, Alerting): the metrics, the Grafana provisioning, the Prometheus rules and the
//! alert path to Telegram, checked against the real tools of this machine.
//!
//! - Structural checks of every file in `grafana/`, `prometheus/`, `alertmanager/`, the compose
//!   file and `.env.example` (no tools needed): valid YAML/JSON, data source uids, panel ids, the
//!   policy route of every rule, no secret, runbook anchors that exist.
//! - The one-source-of-truth check: the Grafana rules and the Prometheus rules agree rule by rule.
//! - `promtool check metrics` on a scrape with traffic; `promtool check rules`; `amtool
//!   check-config`.
//! - A real Prometheus scraping a real service: every dashboard and alert query runs.
//! - The alert path end to end: Prometheus → Alertmanager → a stand-in for the Telegram Bot API,
//!   for "no instance ingesting" (the service's private broker stopped) and "instance down" (one
//!   of two instances killed), firing then resolved.
//!
//! Prometheus and Alertmanager are Debian's (`prometheus`, `prometheus-alertmanager`, installed by
//! `scripts/test.sh`); under `CI=true` a missing tool fails the test instead of skipping it.

use crate::helpers::{event, Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::private_services::{free_port, PrivateRabbit};
use crate::sse_client::SseClient;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Bound of every wait; the usual case is a few seconds.
const PATIENCE: Duration = Duration::from_secs(60);
const DATASOURCE_UID: &str = "pulseboard-prometheus";
const CONTACT_POINT: &str = "pulseboard-telegram";
/// What the tests give Alertmanager as Telegram credentials (fake; the stand-in checks them).
const TEST_BOT_TOKEN: &str = "424242:test-token_for-the-stand-in";
const TEST_CHAT_ID: &str = "-1009";

// ---------------------------------------------------------------------------------------------
// Files of the repository
// ---------------------------------------------------------------------------------------------

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: invalid YAML: {e}"))
}

fn json(path: &str) -> Json {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: invalid JSON: {e}"))
}

/// Every file under `dir` (relative to the repository), recursively, sorted.
fn files_under(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![repo(dir)];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(repo("")) {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}

fn string<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {value:?}"))
}

fn seq<'a>(value: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {value:?}"))
}

/// One alert rule as both tools must see it.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    name: String,
    /// The data query: PromQL without the comparison.
    query: String,
    /// `>` or `<`.
    op: String,
    threshold: f64,
    for_: String,
    labels: BTreeMap<String, String>,
    runbook: String,
    summary: String,
    description: String,
}

fn labels_of(value: &Yaml) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (string(k, "label").to_owned(), string(v, "label").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whitespace runs as one space, so that line breaks in YAML do not matter.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The rules of `prometheus/alerts.yml`, each `expr` split into query, operator and threshold.
fn prometheus_rules() -> Vec<Rule> {
    let file = yaml("prometheus/alerts.yml");
    let mut rules = Vec::new();
    for group in seq(&file["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let name = string(&rule["alert"], "alert").to_owned();
            let expr = squash(string(&rule["expr"], "expr"));
            // Every expression ends in ` <op> <number>` (the file's stated shape).
            let mut words = expr.rsplitn(3, ' ');
            let threshold = words.next().and_then(|t| t.parse::<f64>().ok());
            let op = words.next().unwrap_or_default().to_owned();
            let query = words.next().unwrap_or_default().to_owned();
            let threshold = threshold
                .filter(|_| op == ">" || op == "<")
                .unwrap_or_else(|| {
                    panic!("{name}: expr is not `<query> <op> <threshold>`: {expr}")
                });
            let annotations = &rule["annotations"];
            rules.push(Rule {
                query,
                op,
                threshold,
                for_: string(&rule["for"], "for").to_owned(),
                labels: labels_of(&rule["labels"]),
                runbook: string(&annotations["runbook_url"], "runbook_url").to_owned(),
                summary: string(&annotations["summary"], "summary").to_owned(),
                description: string(&annotations["description"], "description").to_owned(),
                name,
            });
        }
    }
    rules
}

/// The Grafana-managed rules of `grafana/provisioning/alerting/rules.yaml`, read through their
/// data: query A (PromQL), B (last of A), C (threshold on B, the condition).
fn grafana_rules() -> Vec<Rule> {
    let file = yaml("grafana/provisioning/alerting/rules.yaml");
    let mut rules = Vec::new();
    for group in seq(&file["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let name = string(&rule["title"], "title").to_owned();
            let data = seq(&rule["data"], "data");
            let by_ref = |id: &str| {
                data.iter()
                    .find(|d| d["refId"].as_str() == Some(id))
                    .unwrap_or_else(|| panic!("{name}: no refId {id}"))
            };
            let (a, b, c) = (by_ref("A"), by_ref("B"), by_ref("C"));
            assert_eq!(rule["condition"].as_str(), Some("C"), "{name}: condition");
            assert_eq!(
                a["datasourceUid"].as_str(),
                Some(DATASOURCE_UID),
                "{name}: A"
            );
            assert_eq!(b["model"]["type"].as_str(), Some("reduce"), "{name}: B");
            assert_eq!(b["model"]["expression"].as_str(), Some("A"), "{name}: B");
            assert_eq!(c["model"]["type"].as_str(), Some("threshold"), "{name}: C");
            assert_eq!(c["model"]["expression"].as_str(), Some("B"), "{name}: C");
            let conditions = seq(&c["model"]["conditions"], "conditions");
            assert_eq!(conditions.len(), 1, "{name}: one threshold");
            let evaluator = &conditions[0]["evaluator"];
            let op = match evaluator["type"].as_str() {
                Some("gt") => ">",
                Some("lt") => "<",
                other => panic!("{name}: evaluator {other:?}"),
            };
            let threshold = evaluator["params"][0]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: threshold"));
            let annotations = &rule["annotations"];
            rules.push(Rule {
                query: squash(string(&a["model"]["expr"], "expr")),
                op: op.to_owned(),
                threshold,
                for_: string(&rule["for"], "for").to_owned(),
                labels: labels_of(&rule["labels"]),
                runbook: string(&annotations["runbook_url"], "runbook_url").to_owned(),
                summary: string(&annotations["summary"], "summary").to_owned(),
                description: string(&annotations["description"], "description").to_owned(),
                name,
            });
        }
    }
    rules
}

/// The dashboards, by file name.
fn dashboards() -> Vec<(String, Json)> {
    files_under("grafana/provisioning/dashboards")
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .map(|f| {
            let dashboard = json(&f);
            (f, dashboard)
        })
        .collect()
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    let mut pending: Vec<&Json> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = pending.pop() {
        pending.extend(panel["panels"].as_array().into_iter().flatten());
        all.push(panel);
    }
    all
}

/// Every PromQL expression of the dashboards, with the dashboard variables replaced by what
/// Grafana sends for "All" / the default, and the built-in interval variables by one minute.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        let mut values: Vec<(String, String)> = vec![
            ("__rate_interval".into(), "1m".into()),
            ("__interval".into(), "1m".into()),
            ("__range".into(), "1h".into()),
        ];
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().unwrap_or_default().to_owned();
            let value = variable["allValue"]
                .as_str()
                .or(variable["current"]["value"].as_str())
                .unwrap_or_else(|| panic!("{file}: variable {name} has no value to test with"));
            values.push((name, value.to_owned()));
        }
        // Longest names first, so that `$node` never eats the start of `$node_name`.
        values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let mut query = expr.to_owned();
                for (name, value) in &values {
                    query = query.replace(&format!("${{{name}}}"), value);
                    query = query.replace(&format!("${name}"), value);
                }
                assert!(!query.contains('$'), "{file}: unknown variable in {expr}");
                let title = panel["title"].as_str().unwrap_or_default();
                queries.push((format!("{file}: {title}"), query));
            }
        }
    }
    queries
}

/// GitHub's anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A Telegram bot token's shape: digits, a colon, then at least 30 of `[A-Za-z0-9_-]`.
fn token_like(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices(':') {
        let digits = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let tail = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
            .count();
        if digits >= 6 && tail >= 30 {
            return Some(text[at - digits..at + 1 + tail].to_owned());
        }
    }
    None
}

/// A line that gives a chat id a number of five digits or more (a real chat id; the
/// repository only has placeholders and `${TELEGRAM_CHAT_ID}`).
fn chat_id_like(text: &str) -> Option<String> {
    text.lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("chat_id") || lower.contains("chatid")
        })
        .find(|line| {
            line.split(|c: char| !c.is_ascii_digit())
                .any(|digits| digits.len() >= 5)
        })
        .map(str::to_owned)
}

/// Every string value inside a YAML document.
fn strings_of(value: &Yaml, out: &mut Vec<String>) {
    match value {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Sequence(items) => items.iter().for_each(|v| strings_of(v, out)),
        Yaml::Mapping(map) => map.iter().for_each(|(k, v)| {
            strings_of(k, out);
            strings_of(v, out);
        }),
        Yaml::Tagged(tagged) => strings_of(&tagged.value, out),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Structural checks (no service, no tool)
// ---------------------------------------------------------------------------------------------

#[test]
fn provisioning_files_parse_and_name_existing_data_sources_with_unique_panel_ids() {
    let mut datasource_uids = BTreeSet::new();
    for file in files_under("grafana/provisioning") {
        if file.ends_with(".yaml") || file.ends_with(".yml") {
            let document = yaml(&file);
            assert_eq!(
                document["apiVersion"].as_u64(),
                Some(1),
                "{file}: apiVersion"
            );
            for source in document["datasources"].as_sequence().into_iter().flatten() {
                datasource_uids.insert(string(&source["uid"], "uid").to_owned());
            }
        } else {
            assert!(file.ends_with(".json"), "{file}: neither YAML nor JSON");
        }
    }
    assert_eq!(datasource_uids, BTreeSet::from([DATASOURCE_UID.to_owned()]));

    let mut titles = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        titles.insert(dashboard["title"].as_str().unwrap_or_default().to_owned());
        let mut ids = BTreeSet::new();
        let mut uses = Vec::new();
        for panel in panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            if panel["type"] != "row" {
                uses.push(&panel["datasource"]["uid"]);
                let targets = panel["targets"].as_array();
                assert!(
                    targets.is_some_and(|t| !t.is_empty()),
                    "{file}: panel {id} has no query"
                );
                uses.extend(
                    targets
                        .into_iter()
                        .flatten()
                        .map(|t| &t["datasource"]["uid"]),
                );
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] == "query" {
                uses.push(&variable["datasource"]["uid"]);
            }
        }
        for uid in uses {
            let uid = uid
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a data source by uid"));
            assert!(
                datasource_uids.contains(uid),
                "{file}: unknown data source {uid}"
            );
        }
        assert!(dashboard["uid"].as_str().is_some(), "{file}: fixed uid");
    }
    assert_eq!(
        titles,
        BTreeSet::from([
            "Pulseboard — business".to_owned(),
            "Pulseboard — service".to_owned()
        ])
    );
    let (_, service) = dashboards()
        .into_iter()
        .find(|(_, d)| d["title"] == "Pulseboard — service")
        .expect("service dashboard");
    let variables = service["templating"]["list"].as_array().cloned();
    assert!(
        variables
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "node" && v["includeAll"] == true),
        "the service dashboard has a `node` variable with All"
    );

    let rules = yaml("grafana/provisioning/alerting/rules.yaml");
    for group in seq(&rules["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            for query in seq(&rule["data"], "data") {
                let uid = string(&query["datasourceUid"], "datasourceUid");
                assert!(
                    uid == "__expr__" || datasource_uids.contains(uid),
                    "rule {:?}: unknown data source {uid}",
                    rule["title"]
                );
            }
        }
    }
}

/// Grafana's policy tree: the receiver an alert with `labels` ends at, and how deep.
fn route_receiver(
    policy: &Yaml,
    labels: &BTreeMap<String, String>,
    depth: usize,
) -> (String, usize) {
    for child in policy["routes"].as_sequence().into_iter().flatten() {
        let matches = seq(&child["object_matchers"], "object_matchers")
            .iter()
            .all(|m| {
                let (name, op, value) = (
                    string(&m[0], "matcher"),
                    string(&m[1], "op"),
                    string(&m[2], "value"),
                );
                let actual = labels.get(name).map(String::as_str).unwrap_or_default();
                match op {
                    "=" => actual == value,
                    "!=" => actual != value,
                    other => panic!("matcher operator {other} is not checked by this test"),
                }
            });
        if matches {
            return route_receiver(child, labels, depth + 1);
        }
    }
    (string(&policy["receiver"], "receiver").to_owned(), depth)
}

#[test]
fn every_alert_reaches_telegram_and_no_secret_is_in_the_repository() {
    // Grafana: contact point from the environment only, every rule routed to it by a policy.
    let points = yaml("grafana/provisioning/alerting/contact-points.yaml");
    let point = &seq(&points["contactPoints"], "contactPoints")[0];
    assert_eq!(point["name"].as_str(), Some(CONTACT_POINT));
    let receiver = &seq(&point["receivers"], "receivers")[0];
    assert_eq!(receiver["type"].as_str(), Some("telegram"));
    let settings = &receiver["settings"];
    assert_eq!(settings["bottoken"].as_str(), Some("${TELEGRAM_BOT_TOKEN}"));
    assert_eq!(settings["chatid"].as_str(), Some("${TELEGRAM_CHAT_ID}"));
    assert!(
        string(&settings["message"], "message").contains("pulseboard.telegram.message"),
        "the contact point uses the shared message template"
    );
    let policies = yaml("grafana/provisioning/alerting/policies.yaml");
    let policy = &seq(&policies["policies"], "policies")[0];
    let rules = yaml("grafana/provisioning/alerting/rules.yaml");
    let mut count = 0;
    for group in seq(&rules["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let mut labels = labels_of(&rule["labels"]);
            labels.insert("alertname".into(), string(&rule["title"], "title").into());
            labels.insert(
                "grafana_folder".into(),
                string(&group["folder"], "folder").into(),
            );
            let (receiver, depth) = route_receiver(policy, &labels, 0);
            assert_eq!(receiver, CONTACT_POINT, "{labels:?}");
            assert!(
                depth > 0,
                "{labels:?} reaches Telegram by the default route only"
            );
            count += 1;
        }
    }
    assert!(count >= 6, "docs/operations.md names six alerts");

    // Alertmanager: every Prometheus rule's labels match the route to the Telegram receiver.
    let alertmanager = yaml("alertmanager/alertmanager.yml");
    let route = &alertmanager["route"];
    let child = &seq(&route["routes"], "routes")[0];
    let matchers: Vec<(String, String)> = seq(&child["matchers"], "matchers")
        .iter()
        .map(|m| {
            let text = string(m, "matcher");
            let (name, value) = text.split_once('=').unwrap_or_else(|| panic!("{text}"));
            (
                name.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect();
    let telegram = string(&child["receiver"], "receiver");
    let receivers = seq(&alertmanager["receivers"], "receivers");
    let configs = &receivers
        .iter()
        .find(|r| r["name"].as_str() == Some(telegram))
        .expect("the routed receiver exists")["telegram_configs"][0];
    assert_eq!(configs["send_resolved"].as_bool(), Some(true));
    for rule in prometheus_rules() {
        for (name, value) in &matchers {
            assert_eq!(
                rule.labels.get(name),
                Some(value),
                "{}: not routed",
                rule.name
            );
        }
    }
    // The token and chat id are placeholders that entrypoint.sh fills in.
    assert_eq!(configs["bot_token"].as_str(), Some("@TELEGRAM_BOT_TOKEN@"));
    let am_text = read("alertmanager/alertmanager.yml");
    assert!(am_text.contains("chat_id: -1 # @TELEGRAM_CHAT_ID@"));

    // The same message from both: Grafana's template is the Alertmanager file word for word.
    let templates = yaml("grafana/provisioning/alerting/templates.yaml");
    let grafana_template = string(
        &seq(&templates["templates"], "templates")[0]["template"],
        "template",
    );
    assert_eq!(
        grafana_template,
        read("alertmanager/templates/telegram.tmpl")
    );
    for word in [
        ".Labels.alertname",
        ".Labels.instance",
        ".Annotations.description",
        ".StartsAt",
    ] {
        assert!(grafana_template.contains(word), "the message says {word}");
    }

    // Grafana expands `$NAME` in provisioning values from its environment: the only `$` in the
    // alerting files must be the two Telegram variables (a `$labels` would silently vanish).
    for file in files_under("grafana/provisioning/alerting") {
        let mut values = Vec::new();
        strings_of(&yaml(&file), &mut values);
        for value in values {
            let rest = value
                .replace("${TELEGRAM_BOT_TOKEN}", "")
                .replace("${TELEGRAM_CHAT_ID}", "");
            assert!(
                !rest.contains('$'),
                "{file}: Grafana would expand `$` in {value}"
            );
        }
    }

    // No token-shaped string and no chat id in any file of the repository, and the example
    // environment leaves both values empty. First, the scanners find what they look for.
    // (The samples are built here: as literals, this file would fail its own scan.)
    let token = format!("{}:{}", 7_000_000_123_u64, "A".repeat(35));
    assert!(token_like(&format!("bot_token: {token}")).is_some());
    assert!(token_like("bot_token: ${TELEGRAM_BOT_TOKEN}").is_none());
    let key = ["chat", "_id"].concat();
    assert!(chat_id_like(&format!("  {key}: -{}", 1_001_234_567_u64)).is_some());
    assert!(chat_id_like(&format!("  {key}: -1 # @TELEGRAM_CHAT_ID@")).is_none());
    let tracked = std::process::Command::new("git")
        .arg("ls-files")
        .current_dir(repo(""))
        .output()
        .expect("git ls-files (the tests run in a checkout)");
    assert!(tracked.status.success(), "git ls-files");
    let tracked = String::from_utf8_lossy(&tracked.stdout).into_owned();
    assert!(tracked.lines().count() > 50, "{tracked}");
    for file in tracked.lines() {
        let Ok(bytes) = std::fs::read(repo(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Some(token) = token_like(&text) {
            panic!("{file}: a Telegram bot token? {token}");
        }
        if let Some(line) = chat_id_like(&text) {
            panic!("{file}: a Telegram chat id? {line}");
        }
    }
    let example = read(".env.example");
    for name in ["TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"] {
        let line = example
            .lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!(".env.example names {name}"));
        assert_eq!(line, format!("{name}="), ".env.example leaves {name} empty");
    }
}

/// With N instances an alert is N alerts, one per `instance`: both notification paths group
/// them by alert, never by instance or node, so one incident is one Telegram message (the
/// template lists every alert of the group).
#[test]
fn an_alert_of_every_instance_is_one_message() {
    fn group_by(route: &Yaml, what: &str, found: &mut Vec<(String, Vec<String>)>) {
        if let Some(keys) = route["group_by"].as_sequence() {
            let keys = keys.iter().filter_map(|k| k.as_str().map(str::to_owned));
            found.push((what.to_owned(), keys.collect()));
        }
        for child in route["routes"].as_sequence().into_iter().flatten() {
            group_by(child, what, found);
        }
    }
    let mut found = Vec::new();
    let alertmanager = yaml("alertmanager/alertmanager.yml");
    group_by(&alertmanager["route"], "alertmanager", &mut found);
    let grafana = yaml("grafana/provisioning/alerting/policies.yaml");
    for policy in seq(&grafana["policies"], "policies") {
        group_by(policy, "grafana", &mut found);
    }
    assert!(found.iter().any(|(w, _)| w == "alertmanager"), "{found:?}");
    assert!(found.iter().any(|(w, _)| w == "grafana"), "{found:?}");
    for (what, keys) in &found {
        assert!(keys.iter().any(|k| k == "alertname"), "{what}: {keys:?}");
        for per_instance in ["instance", "node", "..."] {
            assert!(
                !keys.iter().any(|k| k == per_instance),
                "{what} groups by {per_instance}: one message per instance"
            );
        }
    }
    let template = read("alertmanager/templates/telegram.tmpl");
    assert!(
        template.contains("range .Alerts"),
        "the message lists the group"
    );
}

#[test]
fn grafana_and_prometheus_rules_agree_rule_by_rule() {
    let grafana = grafana_rules();
    let prometheus = prometheus_rules();
    let names = |rules: &[Rule]| {
        rules
            .iter()
            .map(|r| r.name.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&grafana), names(&prometheus), "the same alerts");
    assert_eq!(grafana.len(), prometheus.len(), "no alert twice");
    for ours in &prometheus {
        let theirs = grafana
            .iter()
            .find(|r| r.name == ours.name)
            .expect("same names");
        assert_eq!(theirs.query, ours.query, "{}: query", ours.name);
        assert_eq!(theirs.op, ours.op, "{}: comparison", ours.name);
        assert_eq!(theirs.threshold, ours.threshold, "{}: threshold", ours.name);
        assert_eq!(theirs.for_, ours.for_, "{}: for", ours.name);
        assert_eq!(theirs.labels, ours.labels, "{}: labels", ours.name);
        assert_eq!(theirs.runbook, ours.runbook, "{}: runbook", ours.name);
    }
}

#[test]
fn every_alert_has_a_summary_a_description_with_instance_and_value_and_a_runbook() {
    let operations = read("docs/operations.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    assert!(
        anchors.contains("alerting"),
        "docs/operations.md has an Alerting section"
    );
    for (rules, value) in [
        (prometheus_rules(), "$value"),
        (grafana_rules(), ".Values.B.Value"),
    ] {
        for rule in rules {
            assert!(!rule.summary.is_empty(), "{}: summary", rule.name);
            assert!(
                rule.description.contains("abels.instance"),
                "{}: instance",
                rule.name
            );
            assert!(rule.description.contains(value), "{}: value", rule.name);
            let anchor = rule
                .runbook
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{}: runbook in docs/operations.md", rule.name));
            assert!(
                anchors.contains(anchor),
                "{}: no heading for #{anchor}",
                rule.name
            );
            assert!(
                rule.labels.contains_key("severity"),
                "{}: severity",
                rule.name
            );
            for text in [&rule.summary, &rule.description] {
                // Telegram's HTML parse mode would read these as markup.
                assert!(!text.contains(['<', '>', '&']), "{}: {text}", rule.name);
            }
        }
    }
}

#[test]
fn the_compose_stack_mounts_the_provisioning_and_passes_telegram_through() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let volumes = |service: &str| -> Vec<String> {
        seq(&services[service]["volumes"], service)
            .iter()
            .map(|v| string(v, "volume").to_owned())
            .collect()
    };
    assert!(
        volumes("grafana").contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".into())
    );
    let prometheus_config = yaml("prometheus/prometheus.yml");
    let rule_file = string(
        &seq(&prometheus_config["rule_files"], "rule_files")[0],
        "rule file",
    );
    assert!(volumes("prometheus").contains(&format!("./prometheus/alerts.yml:{rule_file}:ro")));
    assert!(volumes("prometheus")
        .contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".into()));
    for service in ["grafana", "alertmanager"] {
        for name in ["TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"] {
            assert_eq!(
                services[service]["environment"][name].as_str(),
                Some(format!("${{{name}:-}}").as_str()),
                "{service} gets {name} from .env"
            );
        }
    }
    let entrypoint = seq(&services["alertmanager"]["entrypoint"], "entrypoint");
    assert_eq!(
        entrypoint.last().and_then(Yaml::as_str),
        Some("/etc/alertmanager/source/entrypoint.sh")
    );
    // Both instances, scraped by the job the alerts name.
    let job = &seq(&prometheus_config["scrape_configs"], "scrape_configs")[0];
    assert_eq!(job["job_name"].as_str(), Some("pulseboard"));
    let targets: Vec<&str> = seq(&job["static_configs"][0]["targets"], "targets")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(targets, ["web-1:8080", "web-2:8080"]);
    for service in ["web-1", "web-2", "prometheus", "alertmanager", "grafana"] {
        assert!(services[service].is_mapping(), "service {service}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// `/usr/bin/<name>`, or `None` (the test then returns) when it is missing outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{} is missing: apt-get install prometheus prometheus-alertmanager (scripts/test.sh does)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// Runs a tool to completion; (success, stdout + stderr).
async fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .expect("write to the tool");
        drop(input);
    }
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within {PATIENCE:?}", program.display()))
        .expect("tool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn promtool_accepts_the_rules_and_amtool_the_alertmanager_configuration() {
    let (Some(promtool), Some(amtool)) = (tool("promtool"), tool("amtool")) else {
        return;
    };
    let rules = repo("prometheus/alerts.yml").display().to_string();
    let (ok, output) = run_tool(&promtool, &["check", "rules", &rules], None).await;
    assert!(ok, "promtool check rules:\n{output}");
    assert!(output.contains(&format!(
        "SUCCESS: {} rules found",
        prometheus_rules().len()
    )));

    // As committed (placeholders), and as the entrypoint renders it (what Alertmanager reads).
    let committed = repo("alertmanager/alertmanager.yml").display().to_string();
    let (ok, output) = run_tool(&amtool, &["check-config", &committed], None).await;
    assert!(ok, "amtool check-config {committed}:\n{output}");
    let folder = tempfile::tempdir().expect("temporary folder");
    let rendered = render_alertmanager_config(folder.path(), "http://127.0.0.1:9").await;
    let (ok, output) = run_tool(
        &amtool,
        &["check-config", &rendered.display().to_string()],
        None,
    )
    .await;
    assert!(ok, "amtool check-config (rendered):\n{output}");
    assert!(
        output.contains("1 templates"),
        "the message template loads:\n{output}"
    );
}

/// The Alertmanager configuration as `alertmanager/entrypoint.sh` renders it with the test's
/// Telegram credentials, then adjusted for a test: the Bot API at `api_url`, the templates from
/// the repository, one-second grouping and a short resolve timeout.
async fn render_alertmanager_config(folder: &Path, api_url: &str) -> PathBuf {
    let rendered = folder.join("alertmanager.yml");
    let output = Command::new("sh")
        .arg(repo("alertmanager/entrypoint.sh"))
        .env("AM_SOURCE", repo("alertmanager/alertmanager.yml"))
        .env("AM_RENDERED", &rendered)
        .env("AM_RENDER_ONLY", "1")
        .env("TELEGRAM_BOT_TOKEN", TEST_BOT_TOKEN)
        .env("TELEGRAM_CHAT_ID", TEST_CHAT_ID)
        .output()
        .await
        .expect("sh alertmanager/entrypoint.sh");
    assert!(
        output.status.success(),
        "entrypoint.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&rendered).expect("rendered configuration");
    let mut config: Yaml = serde_yaml::from_str(&text).expect("rendered YAML");
    let telegram = &config["receivers"][0]["telegram_configs"][0];
    assert_eq!(telegram["bot_token"].as_str(), Some(TEST_BOT_TOKEN));
    assert_eq!(telegram["chat_id"].as_i64(), TEST_CHAT_ID.parse().ok());
    config["receivers"][0]["telegram_configs"][0]["api_url"] = api_url.into();
    config["global"]["resolve_timeout"] = "5s".into();
    config["route"]["group_wait"] = "1s".into();
    config["route"]["group_interval"] = "1s".into();
    config["route"]["repeat_interval"] = "1h".into();
    let templates = repo("alertmanager/templates").join("*.tmpl");
    config["templates"] = Yaml::Sequence(vec![templates.display().to_string().into()]);
    let text = serde_yaml::to_string(&config).expect("YAML");
    std::fs::write(&rendered, text).expect("write the configuration");
    rendered
}

// ---------------------------------------------------------------------------------------------
// A service with traffic
// ---------------------------------------------------------------------------------------------

/// Keeps traffic of every kind going while it lives: an SSE stream that reads every snapshot,
/// a reconnecting one, long-polls, events (one malformed, for a dead letter), HTTP requests.
struct Traffic {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn start_traffic(service: &Service, broker: Broker) -> Traffic {
    let mut tasks = Vec::new();
    let mut stream = SseClient::connect(service, "/api/dashboard/stream", None).await;
    tasks.push(tokio::spawn(async move {
        while stream.next(Duration::from_secs(3600)).await.is_some() {}
    }));
    let mut resumed = SseClient::connect(service, "/api/dashboard/stream", Some("0")).await;
    tasks.push(tokio::spawn(async move {
        while resumed.next(Duration::from_secs(3600)).await.is_some() {}
    }));
    let client = service.client().clone();
    let base = service.base_url.clone();
    tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let id = format!("obs-{n}-{}", crate::helpers::short_id());
            let mut batch = vec![
                (
                    "order.placed".to_owned(),
                    event(&id, "order.placed", 2, "u-1", Some(1999)),
                ),
                (
                    "user.active".to_owned(),
                    event(&format!("{id}-a"), "user.active", 40, "u-2", None),
                ),
            ];
            if n == 1 {
                batch.push(("order.placed".to_owned(), b"not json".to_vec()));
            }
            broker.publish_all(&batch).await;
            for path in [
                "/api/dashboard/snapshot",
                "/healthz",
                "/no/such/page",
                "/api/dashboard/poll?timeout=0",
            ] {
                let _ = client.get(format!("{base}{path}")).send().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }));
    Traffic { tasks }
}

async fn metrics_text(service: &Service) -> String {
    match service.client().get(service.url("/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the service's own metrics show the traffic: deliveries over SSE, event ages,
/// a reconnect, HTTP requests.
async fn wait_for_traffic_metrics(service: &Service) -> String {
    let wanted = [
        "pulseboard_delivery_latency_seconds_count{",
        "pulseboard_event_age_seconds_count{",
        "pulseboard_reconnects_total{",
        "pulseboard_http_requests_total{",
        "pulseboard_messages_sent_total{",
    ];
    let started = Instant::now();
    loop {
        let text = metrics_text(service).await;
        let missing: Vec<&&str> = wanted
            .iter()
            .filter(|name| {
                !text
                    .lines()
                    .any(|l| l.starts_with(**name) && !l.ends_with(" 0"))
            })
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no traffic in the metrics: {missing:?}\n{text}\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn service_with_traffic() -> (Service, Traffic, TestDatabase) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "obs-1")).await;
    let traffic = start_traffic(&service, broker).await;
    (service, traffic, database)
}

/// `127.0.0.1:port` of a service, as Prometheus labels it (`instance`).
fn host_port(service: &Service) -> String {
    service
        .base_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_owned()
}

#[tokio::test]
async fn a_scrape_with_traffic_passes_promtool_check_metrics() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let (service, _traffic, _database) = service_with_traffic().await;
    // Raw paths never become label values: an unknown path is `unmatched`, a known one its
    // pattern, whatever the query string.
    let marker = crate::helpers::short_id();
    for path in [
        format!("/no-such-{marker}"),
        format!("/api/dashboard/history?minutes=5&x={marker}"),
    ] {
        service.get(&path).await;
    }
    let text = wait_for_traffic_metrics(&service).await;
    assert!(!text.contains(&marker), "a raw path in a label:\n{text}");
    assert!(text.contains("route=\"unmatched\""));
    assert!(text.contains("route=\"/api/dashboard/history\""));
    let (ok, output) = run_tool(&promtool, &["check", "metrics"], Some(&text)).await;
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics:\n{output}\n--- scrape:\n{text}"
    );
}

/// HTTP allows any token as a method: each would be a series of its own if `record_metrics`
/// labelled requests with the raw method.
#[tokio::test]
async fn an_unknown_http_method_adds_no_label_value() {
    let (service, _traffic, _database) = service_with_traffic().await;
    let method = format!("X{}", crate::helpers::short_id().to_uppercase());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method token");
    let _ = service
        .client()
        .request(method.clone(), service.url("/healthz"))
        .send()
        .await;
    let text = metrics_text(&service).await;
    assert!(!text.contains(method.as_str()), "method as a label value");
}

// ---------------------------------------------------------------------------------------------
// Prometheus, Alertmanager and the Telegram stand-in
// ---------------------------------------------------------------------------------------------

/// A Prometheus or Alertmanager of the test's own: its own folder and port; killed when dropped.
struct Daemon {
    child: Child,
    pub url: String,
    log: PathBuf,
    _folder: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program` with `args(port, folder)` and waits for `/-/ready`; tries again on
    /// another port when the one probed was taken meanwhile.
    async fn start(program: &Path, args: impl Fn(u16, &Path) -> Vec<String>) -> Daemon {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let folder = tempfile::tempdir().expect("temporary folder");
            let port = free_port();
            let log = folder.path().join("daemon.log");
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut child = Command::new(program)
                .args(args(port, folder.path()))
                .current_dir(folder.path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
            let url = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            let client = reqwest::Client::new();
            loop {
                let ready = client.get(format!("{url}/-/ready")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return Daemon {
                        child,
                        url,
                        log,
                        _folder: folder,
                    };
                }
                let exited = child.try_wait().ok().flatten();
                if exited.is_some() || started.elapsed() > PATIENCE {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!(
                        "{} on {port}: {exited:?}\n{text}",
                        program.display()
                    ));
                    let _ = child.kill().await;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!(
            "could not start {}:\n{}",
            program.display(),
            failures.join("\n---\n")
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `prometheus/alerts.yml` with every `for` shortened to two seconds and every 15-minute window
/// to 12 seconds ([`SHORT_WINDOW`]), written into `folder`.
fn shortened_rules(folder: &Path) -> PathBuf {
    let mut rules = yaml("prometheus/alerts.yml");
    let groups = rules["groups"].as_sequence_mut().expect("groups");
    for group in groups {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            assert!(rule["for"].is_string(), "every alert has a `for`");
            rule["for"] = "2s".into();
            // A 15-minute window (the business alerts) as 12 seconds, for the same reason.
            if let Some(expr) = rule["expr"].as_str().map(|e| e.replace("[15m]", "[12s]")) {
                rule["expr"] = expr.into();
            }
        }
    }
    let path = folder.join("alerts.yml");
    std::fs::write(&path, serde_yaml::to_string(&rules).expect("YAML")).expect("write rules");
    path
}

/// `prometheus/prometheus.yml` for a test: one-second intervals, these targets, the shortened
/// rules, and this Alertmanager (or none).
fn prometheus_config(folder: &Path, targets: &[String], alertmanager: Option<&str>) -> PathBuf {
    let mut config = yaml("prometheus/prometheus.yml");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["scrape_timeout"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules = shortened_rules(folder);
    config["rule_files"] = Yaml::Sequence(vec![rules.display().to_string().into()]);
    match alertmanager {
        Some(address) => {
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] =
                Yaml::Sequence(vec![address.into()]);
        }
        None => {
            if let Some(map) = config.as_mapping_mut() {
                map.remove("alerting");
            }
        }
    }
    let job = &mut config["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("pulseboard"));
    job["static_configs"][0]["targets"] =
        Yaml::Sequence(targets.iter().map(|t| t.as_str().into()).collect());
    let path = folder.join("prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write config");
    path
}

async fn start_prometheus(
    prometheus: &Path,
    targets: &[String],
    alertmanager: Option<&str>,
) -> (Daemon, tempfile::TempDir) {
    let config_folder = tempfile::tempdir().expect("temporary folder");
    let config = prometheus_config(config_folder.path(), targets, alertmanager);
    if let Some(promtool) = tool("promtool") {
        let (ok, output) = run_tool(
            &promtool,
            &["check", "config", &config.display().to_string()],
            None,
        )
        .await;
        assert!(ok, "promtool check config (test copy):\n{output}");
    }
    let daemon = Daemon::start(prometheus, |port, folder| {
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", folder.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--rules.alert.resend-delay=1s".into(),
            "--log.level=warn".into(),
        ]
    })
    .await;
    (daemon, config_folder)
}

/// `/api/v1/query`: the result list, or Prometheus' error.
async fn query(prometheus: &Daemon, expr: &str) -> Result<Vec<Json>, String> {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Json = response.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// One `sendMessage` the stand-in received.
#[derive(Debug, Clone)]
struct Sent {
    path: String,
    chat_id: String,
    text: String,
}

/// A stand-in for the Telegram Bot API (`api_url` of Alertmanager's `telegram_configs`): answers
/// `getMe` and `sendMessage` as Telegram does and records every message.
struct TelegramStandIn {
    url: String,
    sent: Arc<Mutex<Vec<Sent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TelegramStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TelegramStandIn {
    async fn start() -> TelegramStandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_telegram(socket, record.clone()));
            }
        });
        TelegramStandIn { url, sent, task }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first message containing every one of `words`; panics with what arrived after
    /// [`PATIENCE`].
    async fn wait_for(&self, words: &[&str], context: impl Fn() -> String) -> Sent {
        let started = Instant::now();
        loop {
            if let Some(message) = self
                .sent()
                .into_iter()
                .find(|m| words.iter().all(|w| m.text.contains(w)))
            {
                return message;
            }
            if started.elapsed() > PATIENCE {
                panic!(
                    "no Telegram message with {words:?} within {PATIENCE:?}; received: {:#?}\n{}",
                    self.sent(),
                    context()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One HTTP/1.1 request per connection (answered with `Connection: close`).
async fn serve_telegram(mut socket: tokio::net::TcpStream, sent: Arc<Mutex<Vec<Sent>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let body = &buffer[head_end..head_end + length];
    let fields: BTreeMap<String, String> = match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        _ => url::form_urlencoded::parse(body).into_owned().collect(),
    };
    let answer = if path.ends_with("/getMe") {
        serde_json::json!({"ok": true, "result": {"id": 424242, "is_bot": true,
            "first_name": "pulseboard test", "username": "pulseboard_test_bot"}})
    } else if path.ends_with("/sendMessage") {
        let message = Sent {
            path: path.clone(),
            chat_id: fields.get("chat_id").cloned().unwrap_or_default(),
            text: fields.get("text").cloned().unwrap_or_default(),
        };
        let mut all = sent.lock().unwrap_or_else(|p| p.into_inner());
        all.push(message);
        serde_json::json!({"ok": true, "result": {"message_id": all.len(), "date": 0,
            "chat": {"id": -1009, "type": "group", "title": "on-call"}, "text": "ok"}})
    } else {
        serde_json::json!({"ok": false, "error_code": 404, "description": "Not Found"})
    };
    let body = answer.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn start_alertmanager(alertmanager: &Path, api_url: &str) -> (Daemon, tempfile::TempDir) {
    let config_folder = tempfile::tempdir().expect("temporary folder");
    let config = render_alertmanager_config(config_folder.path(), api_url).await;
    let daemon = Daemon::start(alertmanager, |port, folder| {
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", folder.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // No gossip: a lone instance, and no port 9094 to collide on.
            "--cluster.listen-address=".into(),
            "--log.level=info".into(),
        ]
    })
    .await;
    (daemon, config_folder)
}

/// Waits until Prometheus answers `expr` with at least one series; its result.
async fn wait_for_series(prometheus: &Daemon, expr: &str) -> Vec<Json> {
    let started = Instant::now();
    loop {
        let last = query(prometheus, expr).await;
        match &last {
            Ok(result) if !result.is_empty() => return result.clone(),
            _ if started.elapsed() > PATIENCE => panic!(
                "no series for {expr} within {PATIENCE:?}: {last:?}\n{}",
                prometheus.log_text()
            ),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test]
async fn every_dashboard_and_alert_query_runs_on_a_real_prometheus() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let (service, _traffic, _database) = service_with_traffic().await;
    wait_for_traffic_metrics(&service).await;
    let (prometheus, _config) = start_prometheus(&prometheus, &[host_port(&service)], None).await;

    // Every alert's data query returns a series (rates need two scrapes after the traffic);
    // the business alerts' only where their guards hold (last week's baseline at least 5, 20
    // users active), which this traffic does not reach: theirs must evaluate, and their series
    // are proven by their end-to-end tests on a stand-in target.
    let guarded = [
        "PulseboardOrdersBelowLastWeek",
        "PulseboardNoOrdersWhileActive",
    ];
    for rule in prometheus_rules() {
        if guarded.contains(&rule.name.as_str()) {
            let full = format!("{} {} {}", rule.query, rule.op, rule.threshold);
            for expr in [&rule.query, &full] {
                query(&prometheus, expr)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {expr}: {e}", rule.name));
            }
            continue;
        }
        let series = wait_for_series(&prometheus, &rule.query).await;
        let labels = &series[0]["metric"];
        assert_eq!(labels["job"], "pulseboard", "{}: {series:?}", rule.name);
        assert_eq!(
            labels["instance"],
            host_port(&service).as_str(),
            "{}",
            rule.name
        );
        // The full expression, comparison included, is valid too.
        let full = format!("{} {} {}", rule.query, rule.op, rule.threshold);
        query(&prometheus, &full)
            .await
            .unwrap_or_else(|e| panic!("{}: {full}: {e}", rule.name));
    }
    // Every panel query parses and evaluates; the ones on the traffic's metrics return data.
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        match query(&prometheus, &expr).await {
            Ok(result) if result.is_empty() => empty.push(format!("{panel}: {expr}")),
            Ok(_) => {}
            Err(error) => panic!("{panel}: {expr}: {error}"),
        }
    }
    // Without console use, slow clients or 5xx answers, those panels have nothing to show; nor
    // has yesterday or last week for a service and a Prometheus born minutes ago (the baseline
    // gauges are absent without history, SPEC §8; `offset 1d` finds nothing).
    let expected_empty = [
        "Console",
        "Slow clients",
        "HTTP errors",
        "_baseline{",
        " offset 1d",
        " offset 7d",
    ];
    let unexpected: Vec<&String> = empty
        .iter()
        .filter(|e| !expected_empty.iter().any(|x| e.contains(x)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "panels without data: {unexpected:#?}"
    );
    let loaded = reqwest::get(format!("{}/api/v1/rules", prometheus.url))
        .await
        .expect("rules API")
        .json::<Json>()
        .await
        .expect("rules JSON");
    let count = loaded["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        count,
        prometheus_rules().len(),
        "Prometheus loaded every rule"
    );
}

/// What the test's Prometheus and Alertmanager said, for failure messages.
fn daemons_context(prometheus: &Daemon, alertmanager: &Daemon) -> String {
    format!(
        "--- prometheus log:\n{}\n--- alertmanager log:\n{}",
        prometheus.log_text(),
        alertmanager.log_text()
    )
}

fn assert_addressed(message: &Sent) {
    assert_eq!(message.path, format!("/bot{TEST_BOT_TOKEN}/sendMessage"));
    assert_eq!(message.chat_id, TEST_CHAT_ID);
    assert!(message.text.contains("Since: "), "{}", message.text);
    assert!(
        message.text.contains("Runbook: docs/operations.md#"),
        "{}",
        message.text
    );
}

#[tokio::test]
async fn no_instance_ingesting_reaches_telegram_then_resolves() {
    let (Some(prometheus), Some(alertmanager)) =
        (tool("prometheus"), tool("prometheus-alertmanager"))
    else {
        return;
    };
    // Arrange: a service on a broker of its own, ingesting.
    let rabbit = PrivateRabbit::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "obs-ingest");
    config.amqp_url = rabbit.amqp_url();
    let service = Service::start(&config).await;
    service
        .wait_for_snapshot(PATIENCE, |s| s["ingest"]["state"] == "running")
        .await;
    let telegram = TelegramStandIn::start().await;
    let (alertmanager, _am_config) = start_alertmanager(&alertmanager, &telegram.url).await;
    let am_address = format!("127.0.0.1:{}", alertmanager.port());
    let instance = host_port(&service);
    let (prometheus, _config) = start_prometheus(
        &prometheus,
        std::slice::from_ref(&instance),
        Some(&am_address),
    )
    .await;
    wait_for_series(&prometheus, "pulseboard_ingest_up == 1").await;
    let context = || {
        format!(
            "{}\n--- service log:\n{}\n--- rabbit:\n{}",
            daemons_context(&prometheus, &alertmanager),
            service.log_text(),
            rabbit.log_tail()
        )
    };

    // Act: the broker stops, so nothing ingests.
    rabbit.stop_app().await;

    // Assert: the alert arrives, naming the instance and the value (0 instances ingesting).
    let firing = telegram
        .wait_for(
            &[
                "FIRING PulseboardIngestStopped",
                &instance,
                "reports 0 instances",
            ],
            context,
        )
        .await;
    assert_addressed(&firing);

    // Act: the broker is back; ingest reconnects.
    rabbit.start_app().await;

    // Assert: the resolved message follows.
    let resolved = telegram
        .wait_for(&["RESOLVED PulseboardIngestStopped", &instance], context)
        .await;
    assert_addressed(&resolved);
    assert!(resolved.text.contains("resolved at"), "{}", resolved.text);
}

#[tokio::test]
async fn an_instance_down_reaches_telegram_then_resolves() {
    let (Some(prometheus), Some(alertmanager)) =
        (tool("prometheus"), tool("prometheus-alertmanager"))
    else {
        return;
    };
    // Arrange: two instances (each with its own database: "down" is about scraping).
    let (db_1, db_2) = (
        TestDatabase::new(Backend::Sqlite).await,
        TestDatabase::new(Backend::Sqlite).await,
    );
    let config_1 = ServiceConfig::new(&db_1, &Names::new(), "obs-down-1");
    let mut first = Service::start(&config_1).await;
    let second = Service::start(&ServiceConfig::new(&db_2, &Names::new(), "obs-down-2")).await;
    let telegram = TelegramStandIn::start().await;
    let (alertmanager, _am_config) = start_alertmanager(&alertmanager, &telegram.url).await;
    let am_address = format!("127.0.0.1:{}", alertmanager.port());
    let (victim, survivor) = (host_port(&first), host_port(&second));
    let targets = [victim.clone(), survivor.clone()];
    let (prometheus, _config) = start_prometheus(&prometheus, &targets, Some(&am_address)).await;
    let up = wait_for_series(&prometheus, "sum(up{job=\"pulseboard\"}) == 2").await;
    assert_eq!(up.len(), 1);
    let context = || daemons_context(&prometheus, &alertmanager);

    // Act: SIGKILL one instance.
    first.kill().await;

    // Assert: the alert names it and the value of `up`, and only it.
    let firing = telegram
        .wait_for(
            &["FIRING PulseboardInstanceDown", &victim, "up = 0"],
            context,
        )
        .await;
    assert_addressed(&firing);
    assert!(!firing.text.contains(&survivor), "{}", firing.text);

    // Act: the instance comes back on the same address.
    let mut again = config_1.clone();
    again.env.push(("PULSEBOARD_BIND".into(), victim.clone()));
    let _back = Service::start(&again).await;

    // Assert: resolved.
    let resolved = telegram
        .wait_for(&["RESOLVED PulseboardInstanceDown", &victim], context)
        .await;
    assert_addressed(&resolved);
}

/// SPEC §8: every labelled family exports each known label set from the start, so a fresh
/// instance already has the series Grafana panels and alert rules read ("No data" otherwise).
#[tokio::test]
async fn a_fresh_instance_exports_every_known_label_set_at_zero() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let service = Service::start(&ServiceConfig::new(&database, &names, "obs-zero")).await;
    let text = metrics_text(&service).await;
    let mut missing = Vec::new();
    let mut expect = |family: &str, labels: &[(&str, &str)]| {
        let found = text.lines().any(|line| {
            line.starts_with(&format!("{family}{{"))
                && labels
                    .iter()
                    .all(|(name, value)| line.contains(&format!("{name}=\"{value}\"")))
                && line.ends_with(" 0")
        });
        if !found {
            missing.push(format!("{family} {labels:?}"));
        }
    };
    for transport in ["sse", "ws", "poll"] {
        let t = [("transport", transport)];
        expect("pulseboard_connections", &t);
        expect("pulseboard_connections_opened_total", &t);
        expect("pulseboard_reconnects_total", &t);
        expect("pulseboard_delivery_latency_seconds_count", &t);
        expect("pulseboard_slow_client_coalesced_total", &t);
        expect("pulseboard_slow_client_disconnects_total", &t);
        for kind in ["snapshot", "announcement", "heartbeat"] {
            expect(
                "pulseboard_messages_sent_total",
                &[("transport", transport), ("kind", kind)],
            );
        }
    }
    for event_type in [
        "order.placed",
        "order.refunded",
        "user.active",
        "user.signed_out",
    ] {
        for outcome in ["applied", "duplicate", "ignored", "rejected"] {
            expect(
                "pulseboard_events_total",
                &[("type", event_type), ("outcome", outcome)],
            );
        }
    }
    expect(
        "pulseboard_console_commands_total",
        &[("command", "connections.kick"), ("outcome", "ok")],
    );
    expect(
        "pulseboard_console_commands_total",
        &[("command", "dlq.replay"), ("outcome", "unavailable")],
    );
    expect(
        "pulseboard_console_command_duration_seconds_count",
        &[("command", "status")],
    );
    for order_type in ["order.placed", "order.refunded"] {
        expect(
            "pulseboard_order_amount_minor_total",
            &[("type", order_type)],
        );
    }
    expect("pulseboard_late_events_total", &[]);
    // The baselines are absent while there is no history to take them from (SPEC §8).
    for family in [
        "pulseboard_orders_per_minute_baseline{",
        "pulseboard_active_users_baseline{",
    ] {
        if text.lines().any(|line| line.starts_with(family)) {
            missing.push(format!("{family} is exported without history"));
        }
    }
    assert!(
        missing.is_empty(),
        "not exported at 0 by a fresh instance:\n{}\n{text}",
        missing.join("\n")
    );
}

/// A metrics target whose exposition the test sets: the business alerts compare with last
/// week (a baseline the service takes from a week of its own history) and wait for 15 minutes
/// of figures, which a test cannot grow; their rules are exercised on values it chooses. Time
/// is shortened the way the other alert tests do it: the rules are rewritten with `for: 2s`
/// (`shortened_rules`), everything else of them as in `prometheus/alerts.yml`.
struct StandInTarget {
    address: String,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandInTarget {
    async fn start(body: &str) -> StandInTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in target");
        let address = listener.local_addr().expect("address").to_string();
        let body = Arc::new(Mutex::new(body.to_owned()));
        let served = body.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let text = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        StandInTarget {
            address,
            body,
            task,
        }
    }

    fn set(&self, body: &str) {
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = body.to_owned();
    }
}

/// No message naming `alert` arrives for `quiet` (several evaluations with `for: 2s`).
async fn assert_silent(telegram: &TelegramStandIn, alert: &str, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    let sent = telegram.sent();
    assert!(
        sent.iter().all(|m| !m.text.contains(alert)),
        "{alert} sent: {sent:#?}"
    );
}

/// A rule's 15-minute window as the alert tests run it (`shortened_rules`).
const SHORT_WINDOW: Duration = Duration::from_secs(12);

/// The alert's run on a real Prometheus and Alertmanager with the repository's rules: `quiet`
/// (must not fire), then `firing`: when `settles` it must not fire for most of a window
/// ([`SHORT_WINDOW`]) after the change, then it fires, with `words` in the message; then
/// `healed` (resolves).
async fn business_alert_fires_and_resolves(
    alert: &str,
    quiet: &str,
    (firing, settles): (&str, bool),
    words: &[&str],
    healed: &str,
) {
    let (Some(prometheus), Some(alertmanager)) =
        (tool("prometheus"), tool("prometheus-alertmanager"))
    else {
        return;
    };
    let target = StandInTarget::start(quiet).await;
    let telegram = TelegramStandIn::start().await;
    let (alertmanager, _am_config) = start_alertmanager(&alertmanager, &telegram.url).await;
    let am_address = format!("127.0.0.1:{}", alertmanager.port());
    let (prometheus, _config) = start_prometheus(
        &prometheus,
        std::slice::from_ref(&target.address),
        Some(&am_address),
    )
    .await;
    wait_for_series(&prometheus, "pulseboard_active_users").await;
    let context = || daemons_context(&prometheus, &alertmanager);

    // Not while the condition does not hold (more than `for` plus evaluations).
    assert_silent(&telegram, alert, Duration::from_secs(8)).await;

    target.set(firing);
    if settles {
        // Not yet: the condition has not held for the whole window (`for` alone is 2 s).
        assert_silent(&telegram, alert, SHORT_WINDOW - Duration::from_secs(4)).await;
    }
    let mut expected = vec![format!("FIRING {alert}"), target.address.clone()];
    expected.extend(words.iter().map(|w| w.to_string()));
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let fired = telegram.wait_for(&expected, context).await;
    assert_addressed(&fired);

    target.set(healed);
    let resolved = telegram
        .wait_for(&[&format!("RESOLVED {alert}"), &target.address], context)
        .await;
    assert_addressed(&resolved);
}

#[tokio::test]
async fn orders_below_half_of_last_week_reach_telegram_then_resolve() {
    let figures = |now: u32, last_week: u32| {
        format!(
            "pulseboard_active_users{{node=\"biz-1\"}} 300\n\
             pulseboard_orders_per_minute{{node=\"biz-1\"}} {now}\n\
             pulseboard_orders_per_minute_baseline{{compare=\"1d\",node=\"biz-1\"}} {last_week}\n\
             pulseboard_orders_per_minute_baseline{{compare=\"7d\",node=\"biz-1\"}} {last_week}\n"
        )
    };
    // Quiet: none now, but last week had fewer than 5 a minute at this time (a quiet hour).
    let quiet = figures(0, 4);
    // Checkout broken: 2 a minute against last week's 10.
    let broken = figures(2, 10);
    // Back to normal: 8 against 10.
    let healed = figures(8, 10);
    business_alert_fires_and_resolves(
        "PulseboardOrdersBelowLastWeek",
        &quiet,
        (&broken, false),
        &["20%", "biz-1"],
        &healed,
    )
    .await;
}

#[tokio::test]
async fn no_order_for_15_minutes_while_users_are_active_reaches_telegram_then_resolves() {
    let figures = |active: u32, orders: u32| {
        format!(
            "pulseboard_active_users{{node=\"biz-2\"}} {active}\n\
             pulseboard_orders_per_minute{{node=\"biz-2\"}} 0\n\
             pulseboard_events_total{{node=\"biz-2\",outcome=\"applied\",type=\"order.placed\"}} {orders}\n"
        )
    };
    // Quiet: a night without orders, only 19 users active.
    let quiet = figures(19, 100);
    // Morning: 25 users active and still no order. Not at once (they have not been there for
    // the window: the rule with `for` alone fired a minute after the users passed 20), only
    // once they were there for the whole window.
    let broken = figures(25, 100);
    // Orders again.
    let healed = figures(25, 160);
    business_alert_fires_and_resolves(
        "PulseboardNoOrdersWhileActive",
        &quiet,
        (&broken, true),
        &["biz-2", "0 orders were placed"],
        &healed,
    )
    .await;
}

/// The business dashboard (SPEC §9): active users, orders per minute and revenue, each against
/// yesterday and last week, in its stat and its time-series panels; revenue per minute from the
/// order amount counters (SPEC §8), never the delta of today's revenue, which falls at midnight.
#[test]
fn the_business_dashboard_compares_with_yesterday_and_last_week_from_the_right_series() {
    let (_, business) = dashboards()
        .into_iter()
        .find(|(_, d)| d["title"] == "Pulseboard — business")
        .expect("business dashboard");
    let compared = [
        (
            "Active users",
            "pulseboard_active_users_baseline{compare=\"1d\"}",
            "pulseboard_active_users_baseline{compare=\"7d\"}",
        ),
        (
            "Orders per minute",
            "pulseboard_orders_per_minute_baseline{compare=\"1d\"}",
            "pulseboard_orders_per_minute_baseline{compare=\"7d\"}",
        ),
        (
            "Revenue today",
            "pulseboard_revenue_today_minor offset 1d",
            "pulseboard_revenue_today_minor offset 7d",
        ),
        ("Revenue per minute", "offset 1d", "offset 7d"),
    ];
    for (title, yesterday, last_week) in compared {
        let found: Vec<&Json> = panels(&business)
            .into_iter()
            .filter(|p| p["title"] == title)
            .collect();
        let kinds: BTreeSet<&str> = found.iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(kinds, BTreeSet::from(["stat", "timeseries"]), "{title}");
        for panel in found {
            let targets: Vec<(&str, &str)> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        t["legendFormat"].as_str().unwrap_or_default(),
                        t["expr"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            let by_legend = |legend: &str| {
                targets
                    .iter()
                    .find(|(l, _)| *l == legend)
                    .map(|(_, e)| *e)
                    .unwrap_or_else(|| panic!("{title}: no {legend:?} series: {targets:?}"))
            };
            assert!(
                by_legend("yesterday").contains(yesterday),
                "{title}: {targets:?}"
            );
            assert!(
                by_legend("last week").contains(last_week),
                "{title}: {targets:?}"
            );
            if title == "Revenue per minute" {
                let now = targets[0].1;
                for part in [
                    "increase(pulseboard_order_amount_minor_total{type=\"order.placed\"}",
                    "increase(pulseboard_order_amount_minor_total{type=\"order.refunded\"}",
                ] {
                    assert!(now.contains(part), "{title}: {now}");
                }
            }
        }
    }
    for (panel, expr) in dashboard_queries() {
        assert!(
            !expr.contains("delta(pulseboard_revenue_today_minor"),
            "{panel}: {expr}"
        );
    }
}

#[tokio::test]
async fn revenue_per_minute_does_not_dip_at_midnight_on_a_real_prometheus() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let figures = |placed: u64, today: u64| {
        format!(
            "pulseboard_revenue_today_minor{{node=\"mid-1\"}} {today}\n\
             pulseboard_order_amount_minor_total{{node=\"mid-1\",type=\"order.placed\"}} {placed}\n\
             pulseboard_order_amount_minor_total{{node=\"mid-1\",type=\"order.refunded\"}} 0\n"
        )
    };
    // Before midnight: 1,000 taken today.
    let target = StandInTarget::start(&figures(1_000, 1_000)).await;
    let (prometheus, _config) =
        start_prometheus(&prometheus, std::slice::from_ref(&target.address), None).await;
    wait_for_series(&prometheus, "pulseboard_revenue_today_minor").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Midnight: today starts again at 0, and 500 more are taken.
    target.set(&figures(1_500, 500));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, panel) = dashboard_queries()
        .into_iter()
        .find(|(panel, expr)| panel.ends_with(": Revenue per minute") && !expr.contains("offset"))
        .expect("the revenue per minute query");
    let value = |result: Vec<Json>| -> f64 {
        result[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a value")
    };
    let now = value(query(&prometheus, &panel).await.expect("the panel's query"));
    assert!(now > 0.0, "revenue per minute across midnight: {now}");
    // What the panel used to show.
    let old = value(
        query(
            &prometheus,
            "max(delta(pulseboard_revenue_today_minor[1m])) / 100",
        )
        .await
        .expect("the old query"),
    );
    assert!(old < 0.0, "the delta of today's revenue dips: {old}");
}
