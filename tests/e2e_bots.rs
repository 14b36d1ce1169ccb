//! A short smoke run of every bot scenario against the real binary: the bots
//! must see zero errors (not a speed threshold).

mod common;
use common::*;

#[test]
fn every_bot_scenario_runs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Short matches, so the full-session scenario plays whole games in the smoke run.
    let node = Node::start(dir.path(), &[("MERIDIAN_DGS__MATCH_DURATION_S", "1")]);
    for scenario in meridian_sim::bots::SCENARIOS {
        let out = dir.path().join(format!("{scenario}.json"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([
                "bots",
                "--quiet",
                "--players",
                "20",
                "--concurrency",
                "4",
                "--duration",
                "2s",
                "--scenario",
                scenario,
                "--target",
            ])
            .arg(node.url())
            .arg("--json")
            .arg(&out)
            .arg("--server-token")
            .arg(SERVER_TOKEN)
            .status()
            .unwrap();
        assert!(status.success(), "{scenario}: bots exited {status}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(report["total_errors"], 0, "{scenario}: {report}");
        assert!(
            report["total_ok"].as_u64().unwrap() > 0,
            "{scenario}: no operation done: {report}"
        );
    }
    // Open loop mode too.
    let out = dir.path().join("open.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "bots",
            "--quiet",
            "--players",
            "10",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--scenario",
            "profile-read",
            "--target",
        ])
        .arg(node.url())
        .arg("--json")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["total_errors"], 0, "{report}");
    let done = report["total_ok"].as_u64().unwrap();
    assert!(
        (300..=400).contains(&done),
        "open loop at 200/s for 2 s did {done}"
    );
    // Remote targets are refused.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "bots",
            "--quiet",
            "--scenario",
            "profile-read",
            "--target",
            "http://192.0.2.1:7700",
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
