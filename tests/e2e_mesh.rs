//! The region mesh with real `meridian` processes on loopback: convergence,
//! crash detection, rejoin with a new incarnation, and refusal of a process
//! whose certificate is not from the cluster CA.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// `meridian_mesh::membership::CONVERGENCE_BOUND` plus start-up slack.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
/// `meridian_mesh::membership::DOWN_DETECTION_BOUND` (5 s) plus 2 s of polling slack.
const DOWN_WITHIN: Duration = Duration::from_secs(7);

pub async fn mesh_view(node: &Node) -> Value {
    let (s, _, b) = call(
        client()
            .get(format!("{}/admin/mesh", node.url()))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

/// State and incarnation of `node_id` in `viewer`'s member list.
pub async fn member(viewer: &Node, node_id: &str) -> Option<(String, u64)> {
    let v = mesh_view(viewer).await;
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == node_id)
        .map(|m| {
            (
                m["state"].as_str().unwrap_or("").to_string(),
                m["incarnation"].as_u64().unwrap_or(0),
            )
        })
}

fn start_region(dir: &Path, name: &str, region: &str, ca: &Path, seeds: &[&Node]) -> Node {
    let seeds: Vec<String> = seeds
        .iter()
        .map(|n| format!("\"{}\"", n.env("MERIDIAN_MESH_ADDR").unwrap()))
        .collect();
    let seeds = format!("[{}]", seeds.join(","));
    Node::start(
        &dir.join(name),
        &[
            ("MERIDIAN_REGION", region),
            ("MERIDIAN_NODE_NAME", name),
            ("MERIDIAN_MESH__CA_DIR", ca.to_str().unwrap()),
            ("MERIDIAN_MESH__SEEDS", &seeds),
        ],
    )
}

async fn alive_count(n: &Node) -> usize {
    mesh_view(n).await["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["state"] == "alive").count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_detect_a_crash_and_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let a = start_region(dir.path(), "node-a", "eu-west", &ca, &[]);
    let b = start_region(dir.path(), "node-b", "us-east", &ca, &[&a]);
    let mut c = start_region(dir.path(), "node-c", "ap-south", &ca, &[&a, &b]);

    let t = wait_for(
        "3 alive members on every node",
        CONVERGE_WITHIN,
        async || {
            alive_count(&a).await == 3 && alive_count(&b).await == 3 && alive_count(&c).await == 3
        },
    )
    .await;
    eprintln!("converged in {t:?}");
    let (_, inc_before) = member(&a, "node-c").await.unwrap();

    // /regions reflects the mesh.
    let (_, _, regions) = call(client().get(format!("{}/regions", a.url()))).await;
    let status = |r: &str| {
        regions
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["region"] == r)
            .map(|x| x["status"].clone())
    };
    assert_eq!(status("eu-west"), Some("self".into()), "{regions}");
    assert_eq!(status("us-east"), Some("alive".into()), "{regions}");
    assert_eq!(status("ap-south"), Some("alive".into()), "{regions}");

    // kill -9 one: both others see it down within the bound.
    c.kill9();
    let t = wait_for("node-c seen down by a and b", DOWN_WITHIN, async || {
        member(&a, "node-c").await.is_some_and(|(s, _)| s == "down")
            && member(&b, "node-c").await.is_some_and(|(s, _)| s == "down")
    })
    .await;
    eprintln!("kill -9 detected as down in {t:?}");

    // Restart with the same name: alive again with a higher incarnation.
    c.spawn();
    let t = wait_for("node-c alive again", CONVERGE_WITHIN, async || {
        member(&a, "node-c")
            .await
            .is_some_and(|(s, inc)| s == "alive" && inc > inc_before)
            && member(&b, "node-c")
                .await
                .is_some_and(|(s, _)| s == "alive")
    })
    .await;
    eprintln!("rejoined in {t:?}");

    // Metrics export member states.
    let text = client()
        .get(format!("{}/metrics", a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("mesh_members{state=\"alive\"} 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_a_foreign_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_region(dir.path(), "node-a", "eu-west", &dir.path().join("ca"), &[]);
    let b = start_region(
        dir.path(),
        "node-b",
        "us-east",
        &dir.path().join("ca"),
        &[&a],
    );
    // An intruder with its own CA, pointed at both.
    let x = start_region(
        dir.path(),
        "intruder",
        "ap-south",
        &dir.path().join("other-ca"),
        &[&a, &b],
    );
    wait_for("a and b see each other", CONVERGE_WITHIN, async || {
        alive_count(&a).await == 2
    })
    .await;
    // Give the intruder ample time to try (join retries start at 500 ms).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in [&a, &b] {
        assert!(
            member(n, "intruder").await.is_none(),
            "intruder admitted: {}",
            mesh_view(n).await
        );
    }
    assert_eq!(
        alive_count(&x).await,
        1,
        "intruder sees members: {}",
        mesh_view(&x).await
    );
    let stats = mesh_view(&a).await["stats"].clone();
    assert!(
        stats["handshakes_refused"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
}
