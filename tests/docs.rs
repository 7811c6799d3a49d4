//! The docs against the code (issue #33): every counter, gauge and reason the code
//! defines is in docs/metrics.md and every name there exists; every config key the
//! parser accepts is in its role's table, with the table's defaults and bounds; the
//! README's layout table names every source file and folder; and every fenced block
//! in README.md, docs/ and sidecar/README.md is marked with what it is, and loaded:
//! filter configurations through the real parser and real Envoy (the loader of
//! `WSGIPROXY_LOADER`, as every test here), the sidecar's TOML through `--check`,
//! whole Envoy configs through `envoy --mode validate`.
//!
//! A block's marker is an HTML comment on the line before it (invisible when rendered):
//! `<!-- test: filter -->`, `<!-- test: filter env NAME="value" -->` (the environment
//! the example's keys are read from; `\n` in a value is a line break), `<!-- test:
//! refused "message" -->` (the parser and Envoy must refuse it with that message),
//! `<!-- test: sidecar -->`, `<!-- test: envoy -->`, or `<!-- test: fragment -->`
//! (not a whole configuration: shown text, commands, parts of a file). A filter
//! configuration inside a fragment (`value: '{"role": ...}'`) or inline in the text
//! (`` `{"role": "peer"}` ``) is parsed too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::*;
use wsgiproxy_protocol::config;
use wsgiproxy_protocol::counters;
use wsgiproxy_protocol::reason::Reason;

const ROLES: [&str; 5] = ["app", "middleware", "exact", "spawn", "peer"];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The markdown files whose examples are checked.
fn doc_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string(), "sidecar/README.md".to_string()];
    for dir in ["docs", "docs/roles"] {
        let mut names: Vec<String> = std::fs::read_dir(repo_root().join(dir))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".md"))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        files.extend(names);
    }
    files
}

/// The text between each pair of backticks in `s`.
fn code_spans(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The rows of the first markdown table after the heading `heading` (or, when
/// `heading` is empty, of the first table whose header row starts with `header`),
/// each as its cells.
fn table(text: &str, heading: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| !heading.is_empty() && l.trim() != heading);
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in &mut lines {
        if !in_table {
            if line.starts_with(header) {
                in_table = true;
            }
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("|---") {
            continue;
        }
        // `\|` inside a cell is a literal bar.
        let cells: Vec<String> =
            line.replace("\\|", "\u{1}").trim_matches('|').split('|').map(|c| c.trim().replace('\u{1}', "|")).collect();
        rows.push(cells);
    }
    assert!(in_table, "no table `{header}` after {heading:?}");
    rows
}

// ---------------------------------------------------------------------------
// Metrics

fn counter_like(name: &str) -> bool {
    ROLES.iter().any(|role| name.strip_prefix(role).is_some_and(|rest| rest.starts_with('.')))
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
}

/// The gauge names the loaders define (without `wsgiproxy.`).
fn gauges_in_code() -> BTreeSet<String> {
    let wasm = read("src/middleware.rs");
    let native = read("native/src/metrics.rs");
    let constant = |text: &str| {
        let line = text.lines().find(|l| l.contains("const REPLAY_GAUGE: &str = \"")).expect("REPLAY_GAUGE");
        line.split('"').nth(1).unwrap().trim_start_matches("wsgiproxy.").to_string()
    };
    assert_eq!(constant(&wasm), constant(&native), "the two loaders name the gauge differently");
    // Any other gauge a loader defines or sets by name must be added here (and so to
    // the docs): every call outside the ABI binding names REPLAY_GAUGE or an id.
    let mut others = Vec::new();
    for path in walk_rs(&repo_root().join("src")).into_iter().chain(walk_rs(&repo_root().join("native/src"))) {
        if path.components().any(|c| c.as_os_str() == "abi") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            for call in ["set_gauge(", "define_gauge("] {
                let Some((_, args)) = line.split_once(call) else { continue };
                let first = args.split([',', ')']).next().unwrap_or_default().trim();
                if line.contains("fn ") || first.starts_with('*') || first == "id" || first == "REPLAY_GAUGE" {
                    continue;
                }
                others.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(others.is_empty(), "a gauge besides REPLAY_GAUGE: add it to this test and docs/metrics.md:\n{}", others.join("\n"));
    BTreeSet::from([constant(&wasm)])
}

fn walk_rs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_rs(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_counter_gauge_and_reason_is_in_docs_metrics_md_and_only_those() {
    let doc = read("docs/metrics.md");
    // Counters.
    let listed: BTreeSet<String> =
        table(&doc, "## Counters", "| counter").iter().flat_map(|row| code_spans(&row[0])).filter(|n| !n.contains('{')).collect();
    let defined: BTreeSet<String> = ROLES.iter().flat_map(|r| counters::of_role(r).iter().map(|n| n.to_string())).collect();
    assert_eq!(listed, defined, "docs/metrics.md's Counters table and protocol/src/counters.rs differ");
    assert!(doc.contains("`{role}.rejected.{reason}`"), "the refusal counters' pattern");
    // Every role that refuses declares one counter per reason, and the page says which.
    for role in ROLES {
        let refusals: Vec<String> = counters::refusals(role).collect();
        assert_eq!(refusals.len(), if counters::refuses(role) { Reason::ALL.len() } else { 0 }, "{role}");
    }
    let refusing: Vec<&str> = ROLES.iter().copied().filter(|r| counters::refuses(r)).collect();
    let says = format!("The `{}`, `{}` and `{}` roles declare", refusing[0], refusing[1], refusing[2]);
    assert!(doc.replace('\n', " ").contains(&says), "docs/metrics.md should say: {says} ...");
    // Gauges.
    let gauges: BTreeSet<String> = table(&doc, "## Gauges", "| gauge").iter().flat_map(|row| code_spans(&row[0])).collect();
    assert_eq!(gauges, gauges_in_code(), "docs/metrics.md's Gauges table and the loaders' gauges differ");
    // Reasons.
    let reasons: Vec<String> = table(&doc, "## Reasons", "| reason").iter().flat_map(|row| code_spans(&row[0])).collect();
    let code: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().to_string()).collect();
    assert_eq!(reasons, code, "docs/metrics.md's Reasons table and protocol/src/reason.rs differ (same order)");
    // The namespaces /stats shows them under, for each loader.
    for prefix in [Loader::Wasm.stat_prefix(), Loader::Native.stat_prefix()] {
        assert!(doc.contains(&format!("`{prefix}wsgiproxy.app.requests`")), "docs/metrics.md should show {prefix}wsgiproxy.*");
    }
}

/// Each reason is in the page of every role the Reasons table says answers it (with
/// its status there), and the table's roles are those that can.
#[test]
fn every_reason_is_in_its_roles_pages() {
    let doc = read("docs/metrics.md");
    let mut missing = Vec::new();
    for row in table(&doc, "## Reasons", "| reason") {
        let reason = code_spans(&row[0]).remove(0);
        for role in code_spans(&row[1]) {
            assert!(ROLES.contains(&role.as_str()), "docs/metrics.md: {reason}: no role {role}");
            if !read(&format!("docs/roles/{role}.md")).contains(&format!("`{reason}`")) {
                missing.push(format!("docs/roles/{role}.md: `{reason}`"));
            }
        }
    }
    assert!(missing.is_empty(), "role pages that do not list a refusal of theirs:\n{}", missing.join("\n"));
}

/// Every counter-like name any doc mentions exists: `wsgiproxy.{role}.{name}`,
/// `{role}.{name}` and `{role}.rejected.{reason}`.
#[test]
fn every_counter_the_docs_name_exists() {
    let mut known: BTreeSet<String> = ROLES.iter().flat_map(|r| counters::declared(r)).collect();
    known.extend(gauges_in_code());
    let reasons: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let mut unknown = Vec::new();
    for file in doc_files() {
        for span in code_spans(&read(&file)) {
            for prefix in ["wasmcustom.wsgiproxy.", "dynamicmodulescustom.wsgiproxy.", "wsgiproxy."] {
                if let Some(rest) = span.strip_prefix(prefix) {
                    if counter_like(rest) && !known.contains(rest) {
                        unknown.push(format!("{file}: `{span}`"));
                    }
                }
            }
            // `middleware.rejected.signature_bad`, and the short `.rejected.{reason}` forms.
            if let Some((_, reason)) = span.split_once(".rejected.") {
                if !reason.contains('{') && !reasons.contains(reason) {
                    unknown.push(format!("{file}: `{span}`"));
                }
            }
            if counter_like(&span) && span.matches('.').count() == 1 && !known.contains(&span) && !span.ends_with(".md") {
                // `app.requests`-shaped spans in docs/metrics.md, where names are listed.
                if file == "docs/metrics.md" {
                    unknown.push(format!("{file}: `{span}`"));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "the docs name counters the code does not define:\n{}", unknown.join("\n"));
}

#[test]
fn every_sidecar_metric_is_in_docs_metrics_md_and_its_readme() {
    let code = read("sidecar/src/metrics.rs");
    let mut registered = BTreeSet::new();
    for part in code.split("registry.register(").skip(1) {
        let name = part.split('"').nth(1).unwrap();
        registered.insert(name.to_string());
    }
    assert!(registered.len() >= 10, "{registered:?}");
    let doc = read("docs/metrics.md");
    let rows = table(&doc, "## The sidecar's", "| metric");
    let mut listed = BTreeSet::new();
    for row in &rows {
        let name = code_spans(&row[0]).remove(0);
        let base = if row[1] == "counter" {
            name.strip_suffix("_total").unwrap_or_else(|| panic!("a counter is scraped as {name}_total")).to_string()
        } else {
            name.clone()
        };
        listed.insert(base);
    }
    assert_eq!(listed, registered, "docs/metrics.md's sidecar table and sidecar/src/metrics.rs differ");
    let readme = read("sidecar/README.md");
    for name in &registered {
        assert!(readme.contains(&format!("`{name}")), "sidecar/README.md does not describe {name}");
    }
    // And every sidecar metric any doc names exists.
    for file in doc_files() {
        for span in code_spans(&read(&file)) {
            if let Some(i) = span.find("wsgiproxy_sidecar_") {
                let name: String = span[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let base = ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                // `wsgiproxy_sidecar_*` names them all.
                assert!(registered.contains(base) || name == "wsgiproxy_sidecar_", "{file}: `{span}` names no sidecar metric");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration keys, defaults and bounds

/// A configuration of `role` that loads, to which a test adds one key.
fn base_config(role: &str) -> Value {
    match role {
        "app" => json!({"role": "app", "href": "http://backend:8080/"}),
        "middleware" => json!({"role": "middleware", "secret": {"keys": [{"id": "k1", "value": "docs-test-key-0123456789"}]}}),
        "spawn" => json!({"role": "spawn", "app": "blog", "sidecar_cluster": "sidecar"}),
        "exact" => json!({"role": "exact", "allow_hosts": ["example.com:80"]}),
        "peer" => json!({"role": "peer"}),
        _ => unreachable!(),
    }
}

fn parse(config: &Value) -> Result<config::Config, config::ConfigError> {
    config::parse(config.to_string().as_bytes(), &|_| None)
}

/// The keys the real parser accepts at `path` (`[]` the top level, `["waiting_page"]`
/// an object under it), read from serde's answer to an unknown key.
fn accepted_keys(role: &str, path: &[&str]) -> BTreeSet<String> {
    let mut inner = json!({"zz_not_a_key": 1});
    for part in path.iter().rev() {
        inner = match *part {
            "[]" => json!([inner]),
            key => json!({ key: inner }),
        };
    }
    let mut config = inner;
    config["role"] = json!(role);
    let error = parse(&config).err().unwrap_or_else(|| panic!("{role} {path:?}: an unknown key was accepted")).to_string();
    assert!(error.contains("unknown field `zz_not_a_key`"), "{role} {path:?}: {error}");
    match error.split_once("expected") {
        Some((_, list)) => code_spans(list).into_iter().collect(),
        None => {
            assert!(error.contains("there are no fields"), "{error}");
            BTreeSet::new()
        }
    }
}

struct KeyRow {
    keys: Vec<String>,
    kind: String,
    default: String,
    meaning: String,
}

fn role_table(role: &str) -> Vec<KeyRow> {
    let doc = read(&format!("docs/roles/{role}.md"));
    table(&doc, "", "| key |")
        .into_iter()
        .map(|cells| KeyRow {
            keys: code_spans(&cells[0]),
            kind: cells[1].clone(),
            default: cells[2].clone(),
            meaning: cells[3..].join("|"),
        })
        .collect()
}

/// `(LO–HI` or `, LO–HI` in a cell: the bounds it states.
fn stated_bounds(text: &str) -> Option<(u64, u64)> {
    let (lo, hi) = text.split_once('–')?;
    let lo: String = lo.chars().rev().take_while(char::is_ascii_digit).collect::<Vec<_>>().into_iter().rev().collect();
    let hi: String = hi.chars().take_while(char::is_ascii_digit).collect();
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

#[test]
fn every_config_key_is_in_its_role_table_and_only_those() {
    for role in ROLES {
        let accepted = accepted_keys(role, &[]);
        if role == "peer" {
            assert!(accepted.is_empty(), "the peer role takes keys now: {accepted:?}; give docs/roles/peer.md a key table");
            assert!(read("docs/roles/peer.md").contains("takes no settings"), "docs/roles/peer.md should say it takes no settings");
            continue;
        }
        let rows = role_table(role);
        let documented: BTreeSet<String> = rows.iter().flat_map(|r| r.keys.clone()).filter(|k| k != "role").collect();
        assert_eq!(documented, accepted, "docs/roles/{role}.md's table and the config code differ");
    }
    // Objects inside a key: their keys are named in the key's row.
    for (role, path, row_key) in [
        ("spawn", vec!["waiting_page"], "waiting_page"),
        ("app", vec!["string_keys", "[]"], "string_keys"),
        ("app", vec!["json_keys", "[]"], "json_keys"),
        ("middleware", vec!["key_directories", "[]"], "key_directories"),
        ("app", vec!["publish_key_directory"], "publish_key_directory"),
    ] {
        let row = role_table(role).into_iter().find(|r| r.keys.iter().any(|k| k == row_key)).unwrap();
        let spans = code_spans(&row.meaning).join(" ");
        for key in accepted_keys(role, &path) {
            assert!(
                spans.contains(&format!("\"{key}\"")) || code_spans(&row.meaning).contains(&key),
                "docs/roles/{role}.md: `{row_key}`'s row does not name `{key}`"
            );
        }
    }
    // The secret's keys, in docs/signatures.md.
    let signatures = read("docs/signatures.md");
    for role in ["app", "middleware"] {
        let config =
            json!({"role": role, "href": "http://x/", "secret": {"keys": [{"id": "k", "value": "0123456789abcdef", "zz_not_a_key": 1}]}});
        assert!(parse(&config).is_err());
    }
    for key in ["\"keys\"", "\"id\"", "\"env\"", "\"value\""] {
        assert!(signatures.contains(key), "docs/signatures.md does not show {key}");
    }
    // Every key `secret` and its entries accept, in docs/keys.md's table or examples.
    // (serde's list of them is not shown under `secret`, where a value may be a key.)
    let keys_doc = read("docs/keys.md");
    for key in ["\"keys\"", "\"id\"", "\"env\"", "\"value\"", "\"file\"", "secret.file_check_ms"] {
        assert!(keys_doc.contains(key), "docs/keys.md does not show {key}");
    }
    let with_check = json!({"role": "middleware", "secret": {"keys": [{"id": "k", "value": "0123456789abcdef"}], "file_check_ms": 1000}});
    parse(&with_check).unwrap_or_else(|e| panic!("secret.file_check_ms is refused: {e}"));
    let with_file = json!({"role": "middleware", "secret": {"keys": [{"id": "k", "file": "/k"}]}});
    assert_eq!(parse(&with_file).err().map(|e| e.field), Some("secret.keys[0].file".to_string()), "without file access");
}

#[test]
fn role_tables_state_the_code_s_defaults_and_bounds() {
    let mut checked = Vec::new();
    for role in ["app", "middleware", "spawn", "exact"] {
        let base = base_config(role);
        let as_loaded = format!("{:?}", parse(&base).unwrap_or_else(|e| panic!("{role}'s base config: {e}")));
        for row in role_table(role) {
            let [key] = row.keys.as_slice() else { continue };
            if key == "role" {
                continue;
            }
            let with = |value: Value| {
                let mut c = base.clone();
                c[key.as_str()] = value;
                parse(&c)
            };
            // The default: the key set to it loads as the key left out does.
            let spans = code_spans(&row.default);
            if spans.len() == 1 && row.default == format!("`{}`", spans[0]) && !spans[0].contains('<') {
                let value = serde_json::from_str::<Value>(&spans[0]).unwrap_or_else(|_| Value::String(spans[0].clone()));
                let loaded =
                    with(value.clone()).unwrap_or_else(|e| panic!("docs/roles/{role}.md: `{key}`'s default {value} is refused: {e}"));
                assert_eq!(format!("{loaded:?}"), as_loaded, "docs/roles/{role}.md: `{key}`'s default is not {value}");
                checked.push(format!("{role}.{key} = {value}"));
            }
            if row.kind != "number" {
                continue;
            }
            match stated_bounds(&row.meaning) {
                Some((lo, hi)) => {
                    for ok in [lo, hi] {
                        with(json!(ok))
                            .unwrap_or_else(|e| panic!("docs/roles/{role}.md: `{key}` {ok} is within {lo}–{hi} and refused: {e}"));
                    }
                    let mut outside = vec![hi + 1];
                    if lo > 0 {
                        outside.push(lo - 1);
                    }
                    for bad in outside {
                        let e = with(json!(bad))
                            .err()
                            .unwrap_or_else(|| panic!("docs/roles/{role}.md: `{key}` {bad} is outside {lo}–{hi} and loads"));
                        assert_eq!(e.field, *key, "{e}");
                    }
                    checked.push(format!("{role}.{key} in {lo}–{hi}"));
                }
                None => {
                    // No bounds stated: the code must have none a user could meet.
                    for value in [0u64, 1, 65_535, u32::MAX as u64] {
                        if let Err(e) = with(json!(value)) {
                            panic!("docs/roles/{role}.md: `{key}` states no bounds, and {value} is refused: {e}");
                        }
                    }
                }
            }
        }
    }
    // Nested settings with `` `name` (`default`, LO–HI `` in a row.
    let spawn = role_table("spawn").into_iter().find(|r| r.keys == ["waiting_page"]).unwrap();
    let after = spawn.meaning.split("`refresh_seconds` (").nth(1).unwrap();
    let (lo, hi) = stated_bounds(after.split(')').next().unwrap()).unwrap();
    let default = code_spans(after).remove(0);
    let page = |v: u64| {
        let mut c = base_config("spawn");
        c["waiting_page"] = json!({ "refresh_seconds": v });
        parse(&c)
    };
    assert!(page(lo).is_ok() && page(hi).is_ok() && page(hi + 1).is_err() && (lo == 0 || page(lo - 1).is_err()));
    let mut c = base_config("spawn");
    let as_loaded = format!("{:?}", parse(&c).unwrap());
    c["waiting_page"] = json!({ "refresh_seconds": default.parse::<u64>().unwrap() });
    assert_eq!(format!("{:?}", parse(&c).unwrap()), as_loaded, "waiting_page.refresh_seconds's default");
    // after_ms: the smaller of 1000 and half of ensure_timeout_ms.
    assert!(spawn.meaning.contains("the smaller of `1000` and half of `ensure_timeout_ms`"));
    for ensure in [200u64, 1_500, 2_000, 35_000] {
        let mut plain = base_config("spawn");
        plain["ensure_timeout_ms"] = json!(ensure);
        let mut explicit = plain.clone();
        explicit["waiting_page"] = json!({ "after_ms": 1_000u64.min(ensure / 2) });
        assert_eq!(format!("{:?}", parse(&plain).unwrap()), format!("{:?}", parse(&explicit).unwrap()), "after_ms's default at {ensure}");
    }
    assert!(checked.len() >= 10, "{checked:?}");
}

// ---------------------------------------------------------------------------
// The README's layout table

#[test]
fn the_readme_layout_table_names_every_source_file_and_folder() {
    let readme = read("README.md");
    let rows = table(&readme, "## Layout", "| path |");
    let row = |first: &str| -> String {
        rows.iter().find(|r| r[0] == format!("`{first}`")).unwrap_or_else(|| panic!("README's layout table has no `{first}` row")).join(" ")
    };
    let names = |text: &str, entry: &str, is_dir: bool| {
        let spans = code_spans(text);
        spans.iter().any(|s| {
            let s = s.as_str();
            if is_dir {
                s == entry || s == format!("{entry}/") || s.starts_with(&format!("{entry}/")) || s.contains(&format!("/{entry}/"))
            } else {
                s == entry || s.ends_with(&format!("/{entry}"))
            }
        })
    };
    let mut missing = Vec::new();
    // (folder, the row that describes it, whether its folders are named too)
    let places: [(&str, &str, bool); 12] = [
        ("protocol/src", "protocol/", true),
        ("protocol/src/config", "protocol/", false),
        ("protocol/src/replay", "protocol/", false),
        ("protocol/src/asymmetric", "protocol/", false),
        ("protocol/tests", "protocol/", false),
        ("src", "src/", true),
        ("native/src", "native/", true),
        ("native/src/abi", "native/", false),
        ("sidecar/src", "sidecar/", true),
        ("sidecar/src/workload", "sidecar/", false),
        ("sidecar/tests", "sidecar/", false),
        ("tests", "tests/", true),
    ];
    for (dir, first, folders_too) in places {
        let text = row(first);
        for entry in std::fs::read_dir(repo_root().join(dir)).unwrap().flatten() {
            let name = entry.file_name().into_string().unwrap();
            let is_dir = entry.path().is_dir();
            if (is_dir && !folders_too) || (!is_dir && !name.ends_with(".rs")) {
                continue;
            }
            if !names(&text, &name, is_dir) {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "README.md's layout table does not name:\n{}", missing.join("\n"));
    // And every file it names exists.
    let mut gone = Vec::new();
    for (first, dirs) in [
        ("protocol/", vec!["protocol/src", "protocol"]),
        ("src/", vec!["src"]),
        ("native/", vec!["native/src", "native"]),
        ("sidecar/", vec!["sidecar/src", "sidecar"]),
        ("tests/", vec!["tests", "."]),
    ] {
        for span in code_spans(&row(first)) {
            if !span.ends_with(".rs") || span.contains(' ') {
                continue;
            }
            let found = dirs.iter().any(|d| {
                let base = repo_root().join(d);
                base.join(&span).exists() || walk_rs(&base).iter().any(|p| p.ends_with(&span))
            });
            if !found {
                gone.push(format!("{first}: {span}"));
            }
        }
    }
    assert!(gone.is_empty(), "README.md's layout table names files that do not exist:\n{}", gone.join("\n"));
    // The top-level folders.
    for entry in std::fs::read_dir(repo_root()).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let path = entry.path();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            assert!(rows.iter().any(|r| r[0].starts_with(&format!("`{name}/"))), "README.md's layout table has no row for {name}/");
        }
    }
}

// ---------------------------------------------------------------------------
// Examples

#[derive(Debug, Clone, PartialEq)]
enum Mark {
    Filter { env: Vec<(String, String)> },
    Refused { message: String, env: Vec<(String, String)> },
    Sidecar,
    EnvoyConfig,
    Fragment,
}

#[derive(Debug)]
struct Block {
    at: String,
    lang: String,
    text: String,
    mark: Option<Mark>,
}

/// Words of a marker; `"quoted words"` are one, with `\n` a line break.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if chars.peek() == Some(&'n') => {
                chars.next();
                word.push('\n');
            }
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn mark(comment: &str, at: &str) -> Mark {
    let body = comment.trim().strip_prefix("<!-- test:").and_then(|b| b.strip_suffix("-->")).unwrap_or_else(|| panic!("{at}: {comment}"));
    let words = words(body);
    let env = |rest: &[String]| -> Vec<(String, String)> {
        rest.chunks(2)
            .map(|pair| {
                assert_eq!(pair[0], "env", "{at}: expected `env NAME=value` in {comment}");
                let (name, value) = pair[1].split_once('=').unwrap_or_else(|| panic!("{at}: {comment}"));
                (name.to_string(), value.to_string())
            })
            .collect()
    };
    match words.first().map(String::as_str) {
        Some("filter") => Mark::Filter { env: env(&words[1..]) },
        Some("refused") => Mark::Refused { message: words[1].clone(), env: env(&words[2..]) },
        Some("sidecar") => Mark::Sidecar,
        Some("envoy") => Mark::EnvoyConfig,
        Some("fragment") => Mark::Fragment,
        _ => panic!("{at}: unknown marker {comment}"),
    }
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for file in doc_files() {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim_start();
            if let Some(lang) = line.strip_prefix("```") {
                let at = format!("{file}:{}", i + 1);
                let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
                let mark = previous.filter(|l| l.starts_with("<!-- test:")).map(|l| mark(l, &at));
                let end =
                    (i + 1..lines.len()).find(|j| lines[*j].trim_start().starts_with("```")).unwrap_or_else(|| panic!("{at}: unclosed"));
                out.push(Block { at, lang: lang.trim().to_string(), text: lines[i + 1..end].join("\n"), mark });
                i = end + 1;
            } else {
                i += 1;
            }
        }
    }
    out
}

/// The JSON objects of a block, one after another.
fn json_objects(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text).into_iter::<Value>().map(|v| v.unwrap_or_else(|e| panic!("not JSON: {e}\n{text}"))).collect()
}

/// Filter configurations inside a fragment or the text: `'{"role": ...}'` and
/// `` `{"role": ...}` ``.
fn embedded_configs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '`'] {
        for piece in text.split(quote).skip(1).step_by(2) {
            if piece.starts_with("{\"role\"") {
                out.push(piece.to_string());
            }
        }
    }
    out
}

fn env_lookup(env: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

#[test]
fn every_fenced_block_is_marked() {
    let unmarked: Vec<String> = blocks().into_iter().filter(|b| b.mark.is_none()).map(|b| format!("{} ({})", b.at, b.lang)).collect();
    assert!(
        unmarked.is_empty(),
        "these blocks have no `<!-- test: ... -->` marker on the line before (filter, refused \"message\", sidecar, envoy or fragment):\n{}",
        unmarked.join("\n")
    );
    for block in blocks() {
        match (&block.mark, block.lang.as_str()) {
            (Some(Mark::Filter { .. } | Mark::Refused { .. }), "json")
            | (Some(Mark::Sidecar), "toml")
            | (Some(Mark::EnvoyConfig), "yaml") => {}
            (Some(Mark::Fragment), _) => {}
            (mark, lang) => panic!("{}: a ```{lang} block marked {mark:?}", block.at),
        }
    }
}

#[test]
fn every_filter_configuration_example_parses() {
    let mut checked = 0;
    for block in blocks() {
        let Some(mark) = &block.mark else { continue };
        match mark {
            Mark::Filter { env } => {
                for config in json_objects(&block.text) {
                    config::parse(config.to_string().as_bytes(), &env_lookup(env))
                        .unwrap_or_else(|e| panic!("{}: {config}\nis refused: {e}", block.at));
                    checked += 1;
                }
            }
            Mark::Refused { message, env } => {
                for config in json_objects(&block.text) {
                    let e = config::parse(config.to_string().as_bytes(), &env_lookup(env))
                        .err()
                        .unwrap_or_else(|| panic!("{}: {config}\nloads; it is marked refused", block.at));
                    assert!(e.to_string().contains(message.as_str()), "{}: refused with {e}, not {message:?}", block.at);
                    checked += 1;
                }
            }
            Mark::Fragment => {
                for config in embedded_configs(&block.text) {
                    config::parse(config.as_bytes(), &|_| None).unwrap_or_else(|e| panic!("{}: {config}\nis refused: {e}", block.at));
                    checked += 1;
                }
            }
            Mark::Sidecar | Mark::EnvoyConfig => {}
        }
    }
    for file in doc_files() {
        for config in embedded_configs(&read(&file)) {
            config::parse(config.as_bytes(), &|_| None).unwrap_or_else(|e| panic!("{file}: {config}\nis refused: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");
}

/// Adds `names` to every `host_env_keys` list (the Wasm VM's environment).
fn pass_env(doc: &mut serde_yaml::Value, names: &[String]) {
    match doc {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                if k.as_str() == Some("host_env_keys") {
                    if let Some(list) = v.as_sequence_mut() {
                        for name in names {
                            list.push(serde_yaml::Value::String(name.clone()));
                        }
                    }
                } else {
                    pass_env(v, names);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(|v| pass_env(v, names)),
        _ => {}
    }
}

fn overrides(config: &Value, env: &[(String, String)]) -> Overrides {
    let mut o = Overrides::default().plugin(config.clone());
    for (name, value) in env {
        o = o.env(name, value);
    }
    let names: Vec<String> = env.iter().map(|(n, _)| n.clone()).collect();
    o.edit_with = Some(std::sync::Arc::new(move |doc: &mut serde_yaml::Value| pass_env(doc, &names)));
    o
}

/// Each filter example loads in real Envoy (the loader of this run), in its role's
/// shipped configuration; each refused one is refused with its message.
#[test]
fn every_filter_configuration_example_loads_in_envoy() {
    let mut started = 0;
    for block in blocks() {
        let (configs, env, refused) = match &block.mark {
            Some(Mark::Filter { env }) => (json_objects(&block.text), env, None),
            Some(Mark::Refused { message, env }) => (json_objects(&block.text), env, Some(message)),
            _ => continue,
        };
        for config in configs {
            let role = config["role"].as_str().unwrap_or("app").to_string();
            if role == "peer" {
                continue;
            }
            let file = format!("envoy/{role}.yaml");
            let o = overrides(&config, env);
            match refused {
                None => {
                    let envoy = Envoy::start_serving(&file, &o);
                    drop(envoy);
                }
                Some(message) => {
                    let log = Envoy::start_refused(&file, &o);
                    assert!(log.contains(message.as_str()), "{}: Envoy refused {config} without {message:?}:\n{log}", block.at);
                }
            }
            started += 1;
        }
    }
    // Configurations inside fragments and the text: the peer role's are the shipped
    // network filters' own; the others load in their role's shipped configuration.
    let mut embedded = BTreeSet::new();
    for file in doc_files() {
        embedded.extend(embedded_configs(&read(&file)));
    }
    for block in blocks().into_iter().filter(|b| b.mark == Some(Mark::Fragment)) {
        embedded.extend(embedded_configs(&block.text));
    }
    for config in embedded {
        if support::is_peer_role(&config) {
            assert!(read("envoy/app.yaml").contains(&format!("'{config}'")), "{config} is not what envoy/app.yaml runs");
            continue;
        }
        let config: Value = serde_json::from_str(&config).unwrap();
        let role = config["role"].as_str().unwrap().to_string();
        drop(Envoy::start_serving(&format!("envoy/{role}.yaml"), &overrides(&config, &[])));
        started += 1;
    }
    assert!(started >= 3, "{started}");
}

#[test]
fn every_sidecar_example_passes_check() {
    let sidecar = bin_path("wsgiproxy-sidecar");
    let mut examples: Vec<(String, String)> =
        blocks().into_iter().filter(|b| b.mark == Some(Mark::Sidecar)).map(|b| (b.at.clone(), b.text.clone())).collect();
    examples.push(("sidecar/example.toml".into(), read("sidecar/example.toml")));
    for (at, text) in examples {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, &text).unwrap();
        // A container app is checked against Docker too: with none here, a warning.
        let out = Command::new(&sidecar)
            .arg("--config")
            .arg(&path)
            .arg("--docker-socket")
            .arg(dir.path().join("no-docker.sock"))
            .arg("--check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{at}: the sidecar refuses it:\n{stderr}");
    }
}

#[test]
fn every_whole_envoy_example_validates() {
    for block in blocks().into_iter().filter(|b| b.mark == Some(Mark::EnvoyConfig)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, block.text.replace("/etc/envoy/wsgiproxy_filter.wasm", &wasm_path().to_string_lossy())).unwrap();
        let out = Command::new(envoy_bin()).args(["--mode", "validate", "-c"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}: envoy --mode validate:\n{}", block.at, String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn marker_words_are_read_as_written() {
    assert_eq!(words(r#"filter env A="x y\nz" env B=1"#), ["filter", "env", "A=x y\nz", "env", "B=1"]);
    assert_eq!(stated_bounds("how far (1–3600)."), Some((1, 3600)));
    assert_eq!(embedded_configs("value: '{\"role\": \"peer\"}'"), ["{\"role\": \"peer\"}"]);
}
