//! The inflator against real metadata: every mod of `../shared/netkan-corpus` (or
//! `$NETKAN_CORPUS`) is inflated against a test server that answers, in GitHub's and
//! SpaceDock's real API shapes, what the upstreams answered when the official inflator made
//! the corpus' `.ckan`; the result must match it field by field. Download-derived fields
//! must match the zip the test served instead. Also CKAN's version ordering against the
//! corpus' real version strings.

mod corpus;
mod upstream;

use corpus::*;

use kraken::netkan::version::{cmp_str, Version};
use kraken::netkan::{Fetcher, Options};
use serde_json::{json, Value};
use sha2::Digest;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use upstream::Upstream;

#[test]
fn version_order_matches_ckan_meta() {
    let Some(dir) = corpus() else { return };
    // every mod's versions, lowest first, as CKAN-meta orders them
    let mut by_mod: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in tsv(&dir.join("ckan-meta-versions.tsv")) {
        by_mod
            .entry(row[0].clone())
            .or_default()
            .push(row[1].clone());
    }
    let mut checked = 0;
    for (id, versions) in &by_mod {
        for w in versions.windows(2) {
            assert_eq!(
                cmp_str(&w[0], &w[1]),
                Ordering::Less,
                "{id}: {} < {}",
                w[0],
                w[1]
            );
            checked += 1;
        }
    }
    assert!(checked > 900, "only {checked} pairs checked");
}

#[test]
fn version_order_is_total_on_real_versions() {
    let Some(dir) = corpus() else { return };
    let text = std::fs::read_to_string(dir.join("versions.tsv")).unwrap();
    let versions: Vec<Version> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "version")
        .map(Version::new)
        .collect();
    assert_eq!(versions.len(), 200);
    for a in &versions {
        for b in &versions {
            let ab = a.cmp(b);
            assert_eq!(ab, b.cmp(a).reverse(), "{a} vs {b} is not antisymmetric");
            if a.as_str() != b.as_str() {
                assert_ne!(ab, Ordering::Equal, "{a} and {b} must differ");
            }
        }
    }
    let mut sorted = versions.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        assert_eq!(w[0].cmp(&w[1]), Ordering::Less);
    }
    for (lo, hi) in [
        ("pre-alpha-04", "1:beta-02-3"),
        ("1:beta-02-3", "2:release-1-0-1"),
        ("2:release-1.8.1-26", "2:release-1.12.1-247"),
        ("v1.22", "2:2.2.0"),
    ] {
        assert_eq!(cmp_str(lo, hi), Ordering::Less, "{lo} < {hi}");
    }
}

const DOWNLOAD_DERIVED: [&str; 4] = [
    "download_size",
    "download_hash",
    "install_size",
    "download_content_type",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_inflates_field_by_field() {
    let Some(dir) = corpus() else { return };
    let up = Upstream::start().await;
    let mods = load_mods(&dir);
    assert_eq!(mods.len(), 25);
    // every host any download names is reached through the test server
    let ups = corpus_upstreams(&up, &mods);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(ups.clone(), cache.path(), 1 << 30).unwrap();
    let mut failures = Vec::new();
    for m in &mods {
        let served = serve_mod(&up, &ups, m, &dir);
        let opts = Options {
            highest_version: m.highest.clone(),
            game_id: Some("KSP".into()),
            prereleases: false,
            file_name: Some(format!("{}.netkan", m.id)),
        };
        let outcome = kraken::netkan::inflate(&m.netkan, &opts, &fetcher).await;
        if !outcome.success {
            failures.push(format!(
                "{}: inflation failed: {:?}",
                m.id, outcome.error_message
            ));
            continue;
        }
        let text = outcome.ckan.clone().unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n    \""),
            "{}: layout",
            m.id
        );
        let got: Value = serde_json::from_str(&text).unwrap();
        let want = &m.ckan;
        let keys: BTreeSet<&String> = got
            .as_object()
            .unwrap()
            .keys()
            .chain(want.as_object().unwrap().keys())
            .collect();
        for k in keys {
            if DOWNLOAD_DERIVED.contains(&k.as_str()) {
                continue;
            }
            if got.get(k) != want.get(k) {
                failures.push(format!(
                    "{}: `{k}`: got {} want {}",
                    m.id,
                    got.get(k).map(|v| v.to_string()).unwrap_or("-".into()),
                    want.get(k).map(|v| v.to_string()).unwrap_or("-".into())
                ));
            }
        }
        // the download-derived fields describe what was really served
        let sha1 = hex::encode_upper(sha1::Sha1::digest(&served.zip));
        let sha256 = hex::encode_upper(sha2::Sha256::digest(&served.zip));
        let source_archive = want["download_content_type"] == "application/vnd.github+json";
        let expect = json!({
            "download_size": served.zip.len(),
            "download_hash": {"sha1": sha1, "sha256": sha256},
            "install_size": served.install_size,
            "download_content_type": if source_archive { "application/vnd.github+json" } else { "application/zip" },
        });
        for k in DOWNLOAD_DERIVED {
            if got.get(k) != expect.get(k) {
                failures.push(format!(
                    "{}: `{k}`: got {:?} want {}",
                    m.id,
                    got.get(k),
                    expect[k]
                ));
            }
        }
        // the key order is CKAN's
        let want_keys: Vec<&String> = want.as_object().unwrap().keys().collect();
        let got_keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        if want_keys
            == got_keys
                .iter()
                .copied()
                .filter(|k| want.get(k.as_str()).is_some())
                .collect::<Vec<_>>()
        {
        } else {
            failures.push(format!(
                "{}: key order {got_keys:?}, want {want_keys:?}",
                m.id
            ));
        }
        let expected_name = format!(
            "{}-{}.ckan",
            m.id,
            want["version"].as_str().unwrap().replace(':', "-")
        );
        if outcome.file_name.as_deref() != Some(expected_name.as_str()) {
            failures.push(format!(
                "{}: file name {:?}, want {expected_name}",
                m.id, outcome.file_name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
