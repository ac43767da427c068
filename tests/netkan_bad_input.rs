//! Bad input to the inflator: each case ends with `Success=false` and an `ErrorMessage` that
//! names the problem, and a good mod inflates fine afterwards (nothing poisoned the cache).

mod upstream;

use kraken::netkan::{Fetcher, Options, Upstreams};
use serde_json::{json, Value};
use std::io::Write;
use upstream::{Answer, Upstream};

fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for (path, bytes) in files {
            z.start_file(*path, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

struct Env {
    up: Upstream,
    ups: Upstreams,
    fetcher: Fetcher,
    _cache: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        let up = Upstream::start().await;
        let ups = up.upstreams(
            Some("t0ken".into()),
            vec![("https://files.example".into(), format!("{}/files", up.base))],
        );
        let cache = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(ups.clone(), cache.path(), 1 << 28).unwrap();
        Self {
            up,
            ups,
            fetcher,
            _cache: cache,
        }
    }

    fn serve(&self, public: &str, answer: Answer) {
        self.up.route_url(&self.ups.reach(public), answer);
    }

    /// A GitHub repo `o/<repo>` whose newest release has `asset` served with `bytes`.
    fn github_mod(&self, repo: &str, asset: &str, bytes: Vec<u8>) {
        self.serve(
            &format!("https://api.github.com/repos/o/{repo}"),
            Answer::json(&json!({"html_url": format!("https://github.com/o/{repo}"), "description": "A mod",
                "has_issues": true, "license": {"spdx_id": "MIT"}, "owner": {"login": "o", "type": "User"}})),
        );
        let url = format!("https://github.com/o/{repo}/releases/download/1.0/{asset}");
        self.serve(
            &format!("https://api.github.com/repos/o/{repo}/releases"),
            Answer::json(&json!([{"tag_name": "1.0", "author": {"login": "o", "type": "User"},
                "published_at": "2024-01-01T00:00:00Z",
                "assets": [{"name": asset, "browser_download_url": url, "updated_at": "2024-01-01T00:00:00Z"}]}])),
        );
        self.serve(&url, Answer::bytes("application/octet-stream", bytes));
    }

    async fn inflate(&self, netkan: &str) -> kraken::netkan::Outcome {
        kraken::netkan::inflate(netkan, &Options::default(), &self.fetcher).await
    }

    async fn fails_with(&self, case: &str, netkan: &str, expected: &str) {
        let o = self.inflate(netkan).await;
        assert!(!o.success, "{case}: should fail, got {:?}", o.ckan);
        let msg = o.error_message.clone().unwrap_or_default();
        assert!(
            msg.contains(expected),
            "{case}: error `{msg}` should mention `{expected}`"
        );
        assert!(
            o.ckan.is_none() && o.file_name.is_none(),
            "{case}: no .ckan on failure"
        );
    }
}

fn good_zip(id: &str) -> Vec<u8> {
    zip(&[(&format!("GameData/{id}/{id}.dll"), b"dll")])
}

fn gh(id: &str, repo: &str) -> String {
    format!("identifier: {id}\n$kref: '#/ckan/github/o/{repo}'\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_netkans_are_refused_with_the_reason() {
    let e = Env::new().await;
    e.fails_with("bad json", r#"{"identifier": "A", }"#, "not valid JSON")
        .await;
    e.fails_with("bad yaml", "identifier: [A\n", "not valid YAML")
        .await;
    e.fails_with("a list", "- a\n- b\n", "not an object").await;
    e.fails_with("empty", "", "empty").await;
    e.fails_with("no identifier", "name: X\n", "no `identifier`")
        .await;
    e.fails_with(
        "unknown kref",
        "identifier: Ab\n$kref: '#/ckan/curse/123'\n",
        "unknown kref `#/ckan/curse/123`",
    )
    .await;
    e.fails_with(
        "kref shape",
        "identifier: Ab\n$kref: 'github/o/r'\n",
        "does not start with `#/ckan/`",
    )
    .await;
    e.fails_with(
        "kref not string",
        "identifier: Ab\n$kref: [1]\n",
        "must be a string",
    )
    .await;
    e.fails_with(
        "github no repo",
        "identifier: Ab\n$kref: '#/ckan/github/o'\n",
        "needs an owner and a repository",
    )
    .await;
    e.fails_with(
        "github option",
        "identifier: Ab\n$kref: '#/ckan/github/o/r/frobnicate/x'\n",
        "unknown option `frobnicate`",
    )
    .await;
    e.fails_with(
        "asset_match regex",
        "identifier: Ab\n$kref: '#/ckan/github/o/r/asset_match/(['\n",
        "asset_match",
    )
    .await;
    e.fails_with(
        "spacedock id",
        "identifier: Ab\n$kref: '#/ckan/spacedock/abc'\n",
        "numeric mod id",
    )
    .await;
    e.fails_with(
        "http kref",
        "identifier: Ab\n$kref: '#/ckan/http/ftp://x/y.zip'\n",
        "http(s) URL",
    )
    .await;
    e.fails_with(
        "static without download",
        "identifier: Ab\nversion: '1'\n",
        "neither a `$kref` nor a `download`",
    )
    .await;
    e.fails_with(
        "identifiers differ",
        "identifier: Ab\n$kref: '#/ckan/github/o/r'\n---\nidentifier: Cd\n",
        "has identifier",
    )
    .await;
    e.fails_with(
        "meta of meta",
        "identifier: Ab\n$kref: '#/ckan/netkan/https://files.example/m.netkan'\n",
        "does not exist",
    )
    .await;
    e.serve(
        "https://files.example/meta2.netkan",
        Answer::bytes(
            "text/plain",
            b"identifier: Ab\n$kref: '#/ckan/netkan/https://files.example/x'\n".to_vec(),
        ),
    );
    e.fails_with(
        "meta of meta",
        "identifier: Ab\n$kref: '#/ckan/netkan/https://files.example/meta2.netkan'\n",
        "may not point at another metanetkan",
    )
    .await;
    e.serve(
        "https://files.example/broken.netkan",
        Answer::bytes("text/plain", b"{ nope".to_vec()),
    );
    e.fails_with(
        "meta broken",
        "identifier: Ab\n$kref: '#/ckan/netkan/https://files.example/broken.netkan'\n",
        "metanetkan target",
    )
    .await;
    let opts = Options {
        file_name: Some("Other.netkan".into()),
        ..Default::default()
    };
    let o = kraken::netkan::inflate(
        "identifier: Ab\n$kref: '#/ckan/github/o/r'\n",
        &opts,
        &e.fetcher,
    )
    .await;
    assert!(o.error_message.unwrap().contains("named `Other`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_failures_are_clear_and_retryable() {
    let e = Env::new().await;
    e.fails_with(
        "404 repo",
        &gh("Ab", "missing"),
        "GitHub repository o/missing does not exist",
    )
    .await;
    e.serve("https://api.github.com/repos/o/err", Answer::status(500));
    e.fails_with("500", &gh("Ab", "err"), "answered 500").await;
    e.serve(
        "https://api.github.com/repos/o/limited",
        Answer::status(403).header("X-RateLimit-Remaining", "0"),
    );
    e.fails_with("rate limit", &gh("Ab", "limited"), "rate limit exceeded")
        .await;
    e.serve(
        "https://api.github.com/repos/o/junk",
        Answer::bytes("application/json", b"<html>".to_vec()),
    );
    e.fails_with("junk json", &gh("Ab", "junk"), "invalid JSON")
        .await;
    // releases without a matching asset, drafts only
    e.github_mod("noasset", "notes.txt", b"x".to_vec());
    e.fails_with(
        "no asset",
        &gh("Ab", "noasset"),
        "no release with an asset matching",
    )
    .await;
    e.fails_with(
        "spacedock 404",
        "identifier: Ab\n$kref: '#/ckan/spacedock/9'\n",
        "SpaceDock mod 9 does not exist",
    )
    .await;
    e.serve(
        "https://spacedock.info/api/mod/8",
        Answer::json(&json!({"error": true, "reason": "Mod not found."})),
    );
    e.fails_with(
        "spacedock error",
        "identifier: Ab\n$kref: '#/ckan/spacedock/8'\n",
        "Mod not found",
    )
    .await;
    e.serve(
        "https://spacedock.info/api/mod/7",
        Answer::json(&json!({"id": 7, "name": "X", "author": "a", "versions": []})),
    );
    e.fails_with(
        "spacedock no versions",
        "identifier: Ab\n$kref: '#/ckan/spacedock/7'\n",
        "has no versions",
    )
    .await;
    e.fails_with(
        "http 404",
        "identifier: Ab\n$kref: '#/ckan/http/https://files.example/gone.zip'\n",
        "download failed",
    )
    .await;
    // API requests went to the configured API base
    let hits = e.up.hits.lock().unwrap().clone();
    assert!(hits.iter().any(|h| h.contains("/gh-api/repos/o/err")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_downloads_fail_and_do_not_poison_the_cache() {
    let e = Env::new().await;
    e.github_mod(
        "notzip",
        "Ab.zip",
        b"<html>this is a login page</html>".to_vec(),
    );
    e.fails_with("not a zip", &gh("Ab", "notzip"), "not a readable zip")
        .await;
    // the same URL now serves the real zip: the failed download was not kept
    e.github_mod("notzip", "Ab.zip", good_zip("Ab"));
    let o = e.inflate(&gh("Ab", "notzip")).await;
    assert!(o.success, "{:?}", o.error_message);

    e.github_mod(
        "escape",
        "Ab.zip",
        zip(&[("GameData/Ab/x.dll", b"x"), ("../../etc/evil", b"x")]),
    );
    e.fails_with("traversal", &gh("Ab", "escape"), "unsafe path")
        .await;

    e.github_mod("empty", "Ab.zip", zip(&[("Other/readme.txt", b"x")]));
    e.fails_with("nothing to install", &gh("Ab", "empty"), "matches no files")
        .await;

    e.github_mod("noavc", "Ab.zip", good_zip("Ab"));
    e.fails_with(
        "no version file",
        &format!("{}$vref: '#/ckan/ksp-avc'\n", gh("Ab", "noavc")),
        "installs none",
    )
    .await;

    e.github_mod(
        "badavc",
        "Ab.zip",
        zip(&[("GameData/Ab/Ab.version", b"{ \"VERSION\": ")]),
    );
    e.fails_with(
        "version file not json",
        &format!("{}$vref: '#/ckan/ksp-avc'\n", gh("Ab", "badavc")),
        "is not valid JSON",
    )
    .await;

    e.github_mod(
        "twoavc",
        "Ab.zip",
        zip(&[
            ("GameData/Ab/a.version", b"{}"),
            ("GameData/Ab/b.version", b"{}"),
        ]),
    );
    e.fails_with(
        "two version files",
        &format!("{}$vref: '#/ckan/ksp-avc'\n", gh("Ab", "twoavc")),
        "2 .version files",
    )
    .await;
    e.fails_with(
        "named version file missing",
        &format!("{}$vref: '#/ckan/ksp-avc/c.version'\n", gh("Ab", "twoavc")),
        "not among the installed files",
    )
    .await;
    e.fails_with(
        "unknown vref",
        &format!("{}$vref: '#/ckan/foo'\n", gh("Ab", "twoavc")),
        "unknown vref",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformer_and_validation_errors() {
    let e = Env::new().await;
    e.github_mod("ok", "Ab.zip", good_zip("Ab"));
    let base = gh("Ab", "ok");
    e.fails_with(
        "strict edit",
        &format!("{base}x_netkan_version_edit: '^v(?<version>.*)$'\n"),
        "does not match the version `1.0`",
    )
    .await;
    e.fails_with(
        "edit regex",
        &format!("{base}x_netkan_version_edit: '('\n"),
        "x_netkan_version_edit",
    )
    .await;
    e.fails_with(
        "epoch",
        &format!("{base}x_netkan_epoch: many\n"),
        "not a whole number",
    )
    .await;
    e.fails_with(
        "override list",
        &format!("{base}x_netkan_override: 3\n"),
        "must be a list",
    )
    .await;
    e.fails_with(
        "override op",
        &format!("{base}x_netkan_override:\n  - version: '=>1.0'\n    override: {{}}\n"),
        "unknown comparison",
    )
    .await;
    e.fails_with(
        "license",
        &format!("{base}license: Proprietary-Thing\n"),
        "license \"Proprietary-Thing\"",
    )
    .await;
    e.fails_with(
        "install not list",
        &format!("{base}install: GameData\n"),
        "must be a list",
    )
    .await;
    e.fails_with(
        "install stanza",
        &format!("{base}install:\n  - install_to: GameData\n"),
        "needs one of",
    )
    .await;
    e.github_mod("dash", "-x.zip", good_zip("-x"));
    e.fails_with(
        "identifier",
        "identifier: -x\n$kref: '#/ckan/github/o/dash'\n",
        "identifier `-x` is not valid",
    )
    .await;

    // the same mod with good settings: edits, epoch, override and staging all apply
    let netkan = format!(
        "{base}x_netkan_version_edit:\n  find: '^(?<version>.*)$'\n  replace: 'v${{version}}'\nx_netkan_epoch: 2\nx_netkan_staging: true\nx_netkan_staging_reason: check the license\nx_netkan_override:\n  - version: '>=2:v1.0'\n    override:\n      ksp_version: '1.12'\n"
    );
    let o = e.inflate(&netkan).await;
    assert!(o.success, "{:?}", o.error_message);
    assert!(o.staged);
    assert_eq!(o.staging_reason.as_deref(), Some("check the license"));
    assert_eq!(o.file_name.as_deref(), Some("Ab-2-v1.0.ckan"));
    let ckan: Value = serde_json::from_str(o.ckan.as_deref().unwrap()).unwrap();
    assert_eq!(ckan["version"], "2:v1.0");
    assert_eq!(ckan["ksp_version"], "1.12");
    assert_eq!(ckan["name"], "ok");
    assert_eq!(ckan["license"], "MIT");
    assert_eq!(ckan["release_date"], "2024-01-01T00:00:00Z");
    assert!(ckan.get("x_netkan_epoch").is_none() && ckan.get("$kref").is_none());

    // out of order against the index: the epoch is raised and the result staged
    let opts = Options {
        highest_version: Some("2.0".into()),
        ..Default::default()
    };
    let o = kraken::netkan::inflate(&base, &opts, &e.fetcher).await;
    assert!(o.success && o.staged, "{o:?}");
    assert!(o
        .staging_reason
        .unwrap()
        .contains("Auto-epoching out of order version: 1.0 < 2.0"));
    let ckan: Value = serde_json::from_str(o.ckan.as_deref().unwrap()).unwrap();
    assert_eq!(ckan["version"], "1:1.0");
    // unless the netkan allows it
    let o = kraken::netkan::inflate(
        &format!("{base}x_netkan_allow_out_of_order: true\n"),
        &opts,
        &e.fetcher,
    )
    .await;
    let ckan: Value = serde_json::from_str(o.ckan.as_deref().unwrap()).unwrap();
    assert_eq!(ckan["version"], "1.0");
    assert!(!o.staged);
}

/// The command a user runs: writes `<identifier>-<version>.ckan` and prints the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_inflates_a_file() {
    let e = Env::new().await;
    e.github_mod("cli", "CliMod.zip", good_zip("CliMod"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("CliMod.netkan");
    std::fs::write(
        &file,
        "identifier: CliMod\n$kref: '#/ckan/github/o/cli'\nx_netkan_epoch: 1\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kraken"))
            .args(args)
            .env("KRAKEN_GITHUB_API", &e.ups.github_api)
            .env("KRAKEN_GITHUB_WEB", &e.ups.github_web)
            .env("KRAKEN_SPACEDOCK_URL", &e.ups.spacedock)
            .env("KRAKEN_NETKAN_CACHE_DIR", dir.path().join("cache"))
            .env("KRAKEN_NODE_LOG", "warn")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let o = run(vec![
        "netkan".into(),
        "inflate".into(),
        file.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(printed["Success"], true);
    assert_eq!(printed["FileName"], "CliMod-1-1.0.ckan");
    assert_eq!(printed["ModIdentifier"], "CliMod");
    assert_eq!(printed["GameId"], "KSP");
    let ckan = std::fs::read_to_string(out.join("CliMod-1-1.0.ckan")).unwrap();
    assert!(ckan.starts_with("{\n    \"spec_version\": 1,\n    \"identifier\": \"CliMod\""));
    // a failure prints the reason and exits non-zero
    std::fs::write(
        &file,
        "identifier: CliMod\n$kref: '#/ckan/github/o/nothing'\n",
    )
    .unwrap();
    let o = run(vec![
        "netkan".into(),
        "inflate".into(),
        file.display().to_string(),
    ]);
    assert!(!o.status.success());
    let printed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(printed["Success"], false);
    assert!(printed["ErrorMessage"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_shapes_of_bad_input() {
    let e = Env::new().await;
    e.fails_with(
        "second doc not object",
        "identifier: Ab\n---\n- x\n",
        "document 2",
    )
    .await;
    e.serve(
        "https://files.example/two.netkan",
        Answer::bytes(
            "text/plain",
            b"identifier: Ab\n---\nidentifier: Ab\n".to_vec(),
        ),
    );
    e.fails_with(
        "meta two docs",
        "identifier: Ab\n$kref: '#/ckan/netkan/https://files.example/two.netkan'\n",
        "one is supported",
    )
    .await;
    e.github_mod("m", "Ab.zip", good_zip("Ab"));
    let base = gh("Ab", "m");
    e.fails_with(
        "filter_regexp",
        &format!(
            "{base}install:\n  - find: Ab\n    install_to: GameData\n    filter_regexp: '['\n"
        ),
        "filter_regexp",
    )
    .await;
    e.fails_with(
        "find_regexp",
        &format!("{base}install:\n  - find_regexp: '('\n    install_to: GameData\n"),
        "find_regexp",
    )
    .await;
    e.fails_with(
        "override no version",
        &format!("{base}x_netkan_override:\n  - override: {{}}\n"),
        "needs a `version`",
    )
    .await;
    e.fails_with(
        "override not object",
        &format!("{base}x_netkan_override:\n  - 3\n"),
        "must be an object",
    )
    .await;
    e.fails_with(
        "edit shape",
        &format!("{base}x_netkan_version_edit: [1]\n"),
        "string or an object",
    )
    .await;
    e.fails_with(
        "license list",
        &format!("{base}license: [MIT, Mine]\n"),
        "license \"Mine\"",
    )
    .await;
    e.github_mod("one", "A.zip", good_zip("A"));
    e.fails_with(
        "one-letter identifier",
        "identifier: A\n$kref: '#/ckan/github/o/one'\n",
        "identifier `A` is not valid",
    )
    .await;
    // no description on GitHub and none in the netkan: the abstract is missing
    e.serve(
        "https://api.github.com/repos/o/nodesc",
        Answer::json(&json!({"html_url": "https://github.com/o/nodesc", "license": {"spdx_id": "MIT"}, "owner": {"login": "o", "type": "User"}})),
    );
    e.serve(
        "https://api.github.com/repos/o/nodesc/releases",
        Answer::json(&json!([{"tag_name": "1.0", "author": {"login": "o", "type": "User"},
            "assets": [{"name": "Ab.zip", "browser_download_url": "https://github.com/o/nodesc/releases/download/1.0/Ab.zip"}]}])),
    );
    e.serve(
        "https://github.com/o/nodesc/releases/download/1.0/Ab.zip",
        Answer::bytes("application/zip", good_zip("Ab")),
    );
    e.fails_with(
        "no abstract",
        &gh("Ab", "nodesc"),
        "required property `abstract` is missing",
    )
    .await;
    e.serve(
        "https://api.github.com/repos/o/shape",
        Answer::json(&json!({"html_url": "https://github.com/o/shape", "owner": null})),
    );
    e.serve(
        "https://api.github.com/repos/o/shape/releases",
        Answer::json(&json!({"message": "not a list"})),
    );
    e.fails_with("releases shape", &gh("Ab", "shape"), "unexpected answer")
        .await;
    e.serve(
        "https://spacedock.info/api/mod/5",
        Answer::json(&json!({"id": 5})),
    );
    e.fails_with(
        "spacedock shape",
        "identifier: Ab\n$kref: '#/ckan/spacedock/5'\n",
        "unexpected answer",
    )
    .await;
    e.serve(
        "https://files.example/moved",
        Answer::redirect(&e.ups.reach("https://files.example/nowhere.zip")),
    );
    e.fails_with(
        "redirect to 404",
        "identifier: Ab\n$kref: '#/ckan/http/https://files.example/moved'\n",
        "answered 404",
    )
    .await;

    // good variants: an HTML content type on a real zip, a string KSP_VERSION, an http kref
    // whose version comes from the .version file
    let avc = br#"{"NAME":"Ab","VERSION":"2.5","KSP_VERSION":"1.12"}"#;
    e.serve(
        "https://files.example/Ab-latest.zip",
        Answer::bytes(
            "text/html",
            zip(&[
                ("GameData/Ab/Ab.version", avc),
                ("GameData/Ab/Ab.dll", b"x"),
            ]),
        ),
    );
    let o = e
        .inflate("identifier: Ab\nname: Ab\nabstract: x\nauthor: me\nlicense: MIT\n$kref: '#/ckan/http/https://files.example/Ab-latest.zip'\n$vref: '#/ckan/ksp-avc'\n")
        .await;
    assert!(o.success, "{:?}", o.error_message);
    let ckan: Value = serde_json::from_str(o.ckan.as_deref().unwrap()).unwrap();
    assert_eq!(ckan["version"], "2.5");
    assert_eq!(ckan["ksp_version"], "1.12");
    assert_eq!(ckan["download_content_type"], "application/zip");
    assert_eq!(ckan["download"], "https://files.example/Ab-latest.zip");
    assert!(ckan.get("release_date").is_none());
}

/// A zip whose entries claim 12 GiB in all is refused before anything is unpacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_is_refused() {
    let e = Env::new().await;
    let mut bomb = zip(&[
        ("GameData/Ab/a.bin", b"0"),
        ("GameData/Ab/b.bin", b"0"),
        ("GameData/Ab/c.bin", b"0"),
    ]);
    // claim ~4 GiB for each entry in the central directory
    let mut at = 0;
    while let Some(pos) = bomb[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let header = at + pos;
        bomb[header + 24..header + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        at = header + 4;
    }
    e.github_mod("bomb", "Ab.zip", bomb);
    e.fails_with("zip bomb", &gh("Ab", "bomb"), "zip bomb")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_version_file_is_preferred_only_for_the_same_version() {
    let e = Env::new().await;
    let avc_zip = |repo: &str| {
        let local = format!(
            r#"{{"NAME": "Ab", "VERSION": "1.0", "KSP_VERSION": "1.8.1",
                "URL": "https://github.com/o/{repo}/blob/main/Ab.version"}}"#
        );
        zip(&[
            ("GameData/Ab/Ab.dll", b"dll"),
            ("GameData/Ab/Ab.version", local.as_bytes()),
        ])
    };
    let netkan = |repo: &str| format!("{}$vref: '#/ckan/ksp-avc'\n", gh("Ab", repo));
    let ckan = |o: &kraken::netkan::Outcome| -> Value {
        assert!(o.success, "{:?}", o.error_message);
        serde_json::from_str(o.ckan.as_deref().unwrap()).unwrap()
    };

    // same version: the remote file's game versions win; the page URL is read as raw
    e.github_mod("same", "Ab.zip", avc_zip("same"));
    e.serve(
        "https://raw.githubusercontent.com/o/same/main/Ab.version",
        Answer::json(&json!({"VERSION": {"MAJOR": 1, "MINOR": 0},
            "KSP_VERSION_MIN": "1.8.0", "KSP_VERSION_MAX": "1.12.5"})),
    );
    let c = ckan(&e.inflate(&netkan("same")).await);
    assert_eq!(c["ksp_version_min"], "1.8.0");
    assert_eq!(c["ksp_version_max"], "1.12.5");
    assert!(c.get("ksp_version").is_none());
    assert_eq!(
        c["resources"]["remote-avc"],
        "https://github.com/o/same/blob/main/Ab.version"
    );

    // a newer version upstream describes another release: the local file stands
    e.github_mod("newer", "Ab.zip", avc_zip("newer"));
    e.serve(
        "https://raw.githubusercontent.com/o/newer/main/Ab.version",
        Answer::json(&json!({"VERSION": "1.1", "KSP_VERSION": "1.12.5"})),
    );
    assert_eq!(
        ckan(&e.inflate(&netkan("newer")).await)["ksp_version"],
        "1.8.1"
    );

    // a remote file that is not JSON, or missing: no error, the local file stands
    e.github_mod("broken", "Ab.zip", avc_zip("broken"));
    e.serve(
        "https://raw.githubusercontent.com/o/broken/main/Ab.version",
        Answer::bytes("text/plain", b"<html>".to_vec()),
    );
    assert_eq!(
        ckan(&e.inflate(&netkan("broken")).await)["ksp_version"],
        "1.8.1"
    );
    e.github_mod("missing", "Ab.zip", avc_zip("missing"));
    assert_eq!(
        ckan(&e.inflate(&netkan("missing")).await)["ksp_version"],
        "1.8.1"
    );
    let hits = e.up.hits.lock().unwrap().clone();
    assert!(
        hits.iter()
            .any(|h| h.contains("/_raw/o/missing/main/Ab.version")),
        "the remote file was asked for: {hits:?}"
    );
}

#[test]
fn github_page_urls_are_read_as_raw_files() {
    use kraken::netkan::transform::raw_github_url;
    assert_eq!(
        raw_github_url("https://github.com/o/r/tree/dev/GameData/X/X.version"),
        "https://raw.githubusercontent.com/o/r/dev/GameData/X/X.version"
    );
    for same in [
        "https://github.com/o/r/releases/latest/download/X.version",
        "https://github.com/o/r/blob/main",
        "https://example.com/o/r/blob/main/X.version",
        "https://raw.githubusercontent.com/o/r/main/X.version",
    ] {
        assert_eq!(raw_github_url(same), same);
    }
}
