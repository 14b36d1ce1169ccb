//! End-to-end: the real `meridian` binary, driven over HTTP.
//! register → login → refresh → reuse detection → profile → telemetry → errors.

mod common;
use common::*;
use serde_json::json;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn account_lifecycle_profile_and_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let base = node.url();
    let c = client();

    // Register, with email.
    let (s, h, reg) = call(c.post(format!("{base}/auth/register")).json(&json!({
        "username": "Alice_01", "password": "correct horse battery", "email": "Alice@Example.com"
    })))
    .await;
    assert_eq!(s, 201, "{reg}");
    assert!(h.get("x-request-id").is_some());
    let player_id = reg["player_id"].as_str().unwrap().to_string();
    assert_eq!(reg["token_type"], "Bearer");
    assert_eq!(reg["expires_in"], 900);

    // Same name differing only in case, and full-width, conflict.
    for name in ["alice_01", "ＡＬＩＣＥ_01"] {
        let (s, _, b) = call(c.post(format!("{base}/auth/register")).json(&json!({
            "username": name, "password": "another password 1"
        })))
        .await;
        assert_eq!(s, 409, "{name}: {b}");
        assert_eq!(error_code(&b), "username_taken");
    }
    // Confusable (Cyrillic а) is rejected with the field named.
    let (s, _, b) = call(c.post(format!("{base}/auth/register")).json(&json!({
        "username": "аlice", "password": "another password 1"
    })))
    .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("username"),
        "{b}"
    );

    // Login by username (any case) and by email.
    for body in [
        json!({"username": "ALICE_01", "password": "correct horse battery"}),
        json!({"email": "alice@example.com", "password": "correct horse battery"}),
    ] {
        let (s, _, b) = call(c.post(format!("{base}/auth/login")).json(&body)).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["player_id"], player_id.as_str());
    }
    let (s, _, b) = call(c.post(format!("{base}/auth/login")).json(&json!({
        "username": "alice_01", "password": "wrong password"
    })))
    .await;
    assert_eq!(s, 401);
    assert_eq!(error_code(&b), "invalid_credentials");

    // Refresh rotation, then reuse of the spent token revokes the whole login.
    let r1 = reg["refresh_token"].as_str().unwrap().to_string();
    let (s, _, p2) = call(
        c.post(format!("{base}/auth/refresh"))
            .json(&json!({"refresh_token": r1})),
    )
    .await;
    assert_eq!(s, 200, "{p2}");
    let r2 = p2["refresh_token"].as_str().unwrap().to_string();
    let a2 = p2["access_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let (s, _, _) = call(
        c.get(format!("{base}/player/me"))
            .header("authorization", bearer(&a2)),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, b) = call(
        c.post(format!("{base}/auth/refresh"))
            .json(&json!({"refresh_token": r1})),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(error_code(&b), "refresh_token_reused");
    let (s, _, b) = call(
        c.post(format!("{base}/auth/refresh"))
            .json(&json!({"refresh_token": r2})),
    )
    .await;
    assert_eq!(s, 401, "the rotated token dies with its login: {b}");
    let (s, _, b) = call(
        c.get(format!("{base}/player/me"))
            .header("authorization", bearer(&a2)),
    )
    .await;
    assert_eq!(s, 401, "access tokens of a revoked login are refused: {b}");
    assert_eq!(error_code(&b), "token_revoked");

    // A fresh login for the rest.
    let (_, _, login) = call(c.post(format!("{base}/auth/login")).json(&json!({
        "username": "alice_01", "password": "correct horse battery"
    })))
    .await;
    let token = login["access_token"].as_str().unwrap().to_string();

    // Profile patch, read back publicly and privately.
    let (s, _, p) = call(
        c.patch(format!("{base}/player/me/profile"))
            .header("authorization", bearer(&token))
            .json(&json!({"display_name": "Alice", "settings": {"audio": {"volume": 7}}})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["display_name"], "Alice");
    let bob = register(&base, "bob_02", "bobs password 22").await;
    let bob_token = bob["access_token"].as_str().unwrap();
    let (s, _, pub_profile) = call(
        c.get(format!("{base}/player/{player_id}/profile"))
            .header("authorization", bearer(bob_token)),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(pub_profile["username"], "Alice_01");
    assert_eq!(pub_profile["display_name"], "Alice");
    assert_eq!(pub_profile["home_region"], "eu-west");
    for field in ["level", "xp", "created_at", "stats"] {
        assert!(
            !pub_profile[field].is_null(),
            "{field} missing in {pub_profile}"
        );
    }
    assert!(
        pub_profile.get("email").is_none(),
        "email must not be public"
    );
    let (s, _, me) = call(
        c.get(format!("{base}/player/me"))
            .header("authorization", bearer(&token)),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["settings"]["audio"]["volume"], 7);
    // Unknown profile field is named.
    let (s, _, b) = call(
        c.patch(format!("{base}/player/me/profile"))
            .header("authorization", bearer(&token))
            .json(&json!({"display_nam": "x"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("display_nam"),
        "{b}"
    );

    // Telemetry: batch with a duplicate, then read back as admin.
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!({"events": [
        {"event_id": "e-1", "event_type": "match.start", "payload": {"map": "dust"}, "timestamp": now},
        {"event_id": "e-1", "event_type": "match.start", "payload": {}, "timestamp": now},
        {"event_id": "e-2", "event_type": "shot", "payload": {"hit": true}, "timestamp": chrono::Utc::now().to_rfc3339()}
    ]});
    let (s, _, b) = call(
        c.post(format!("{base}/game/telemetry"))
            .header("authorization", bearer(&token))
            .json(&events),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b, json!({"accepted": 2, "duplicates": 1}));
    let (s, _, b) = call(
        c.post(format!("{base}/game/telemetry"))
            .header("authorization", bearer(&token))
            .json(&events),
    )
    .await;
    assert_eq!((s, b), (202, json!({"accepted": 0, "duplicates": 3})));
    let (s, _, page) = call(
        c.get(format!(
            "{base}/admin/telemetry?player_id={player_id}&event_type=shot"
        ))
        .header("authorization", bearer(ADMIN_TOKEN)),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let evs = page["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["payload"]["hit"], true);
    // Players cannot read telemetry.
    let (s, _, _) = call(
        c.get(format!("{base}/admin/telemetry"))
            .header("authorization", bearer(&token)),
    )
    .await;
    assert_eq!(s, 403);

    // Logout revokes the login.
    let r = login["refresh_token"].as_str().unwrap();
    let (s, _, _) = call(
        c.post(format!("{base}/auth/logout"))
            .header("authorization", bearer(&token))
            .json(&json!({"refresh_token": r})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = call(
        c.post(format!("{base}/auth/refresh"))
            .json(&json!({"refresh_token": r})),
    )
    .await;
    assert_eq!(s, 401);

    // Device login: created once, then the same account.
    let (s, _, d1) = call(
        c.post(format!("{base}/auth/device"))
            .json(&json!({"device_id": "device-abc-123"})),
    )
    .await;
    assert_eq!(s, 201, "{d1}");
    let (s, _, d2) = call(
        c.post(format!("{base}/auth/device"))
            .json(&json!({"device_id": "device-abc-123"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(d1["player_id"], d2["player_id"]);
    assert!(d1["username"].as_str().unwrap().starts_with("guest-"));

    // JWKS publishes an EdDSA key with a kid; the token header names it.
    let (s, _, jwks) = call(c.get(format!("{base}/.well-known/jwks.json"))).await;
    assert_eq!(s, 200);
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert_eq!(key["region"], "eu-west");
}

#[tokio::test]
async fn bad_input_gets_json_errors_never_500() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[("MERIDIAN_LIMITS__HTTP_BODY_MAX_BYTES", "65536")],
    );
    let base = node.url();
    let c = client();
    let user = register(&base, "carol_03", "carols password").await;
    let token = user["access_token"].as_str().unwrap().to_string();

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.post(format!("{base}/auth/register"))
                .header("content-type", "application/json")
                .body("{\"username\":"),
            400,
            "malformed_json",
        ),
        (
            c.post(format!("{base}/auth/register"))
                .json(&json!({"username": 5, "password": "x"})),
            400,
            "invalid_field",
        ),
        (
            c.post(format!("{base}/auth/register"))
                .json(&json!({"username": "dave_04", "password": "pw"})),
            400,
            "invalid_field",
        ),
        (
            c.post(format!("{base}/auth/register"))
                .json(&json!({"username": "dave_04", "password": "davespassword", "admin": true})),
            400,
            "invalid_field",
        ),
        (
            c.post(format!("{base}/auth/register")).body("username=x"),
            415,
            "unsupported_media_type",
        ),
        (
            // Its own client: the server answers 413 before reading the body
            // and closes that connection, which a shared pool would reuse.
            client()
                .post(format!("{base}/auth/register"))
                .header("content-type", "application/json")
                .body(vec![b' '; 70_000]),
            413,
            "payload_too_large",
        ),
        (c.get(format!("{base}/player/me")), 401, "missing_token"),
        (
            c.get(format!("{base}/player/me"))
                .header("authorization", "Bearer not.a.jwt"),
            401,
            "invalid_token",
        ),
        (
            c.get(format!("{base}/player/me"))
                .header("authorization", "Basic abc"),
            401,
            "invalid_token",
        ),
        (
            c.get(format!("{base}/player/not-a-uuid/profile"))
                .header("authorization", bearer(&token)),
            400,
            "invalid_field",
        ),
        (
            c.get(format!(
                "{base}/player/00000000-0000-0000-0000-000000000000/profile"
            ))
            .header("authorization", bearer(&token)),
            404,
            "player_not_found",
        ),
        (c.get(format!("{base}/no/such/route")), 404, "not_found"),
        (
            c.delete(format!("{base}/auth/login")),
            405,
            "method_not_allowed",
        ),
        (
            c.get(format!("{base}/admin/telemetry?limit=0"))
                .header("authorization", bearer(ADMIN_TOKEN)),
            400,
            "invalid_field",
        ),
        (
            c.get(format!("{base}/admin/telemetry?limit=abc"))
                .header("authorization", bearer(ADMIN_TOKEN)),
            400,
            "invalid_query",
        ),
        (
            c.post(format!("{base}/game/telemetry"))
                .header("authorization", bearer(&token))
                .json(&json!({"events": []})),
            400,
            "invalid_field",
        ),
        (
            c.post(format!("{base}/game/telemetry"))
                .header("authorization", bearer(ADMIN_TOKEN))
                .json(&json!({"events": []})),
            403,
            "forbidden",
        ),
        (
            c.post(format!("{base}/auth/login"))
                .json(&json!({"password": "x"})),
            400,
            "invalid_field",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let (s, _, b) = call(req).await;
        assert_eq!(s, status, "case {i}: {b}");
        assert_eq!(error_code(&b), code, "case {i}: {b}");
    }

    // A forged token: valid header and claims, signature of another key.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(parts[2].len()));
    let (s, _, b) = call(
        c.get(format!("{base}/player/me"))
            .header("authorization", bearer(&forged)),
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (401, "invalid_token"));
    // An HS256 token (alg confusion) is refused.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hs = format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        parts[1],
        b64.encode(b"sig")
    );
    let (s, _, _) = call(
        c.get(format!("{base}/player/me"))
            .header("authorization", bearer(&hs)),
    )
    .await;
    assert_eq!(s, 401);

    // Telemetry batch at the limit is accepted, one over is refused.
    let now = chrono::Utc::now().timestamp_millis();
    let batch = |n: usize, tag: &str| json!({"events": (0..n).map(|i| json!({"event_id": format!("{tag}-{i}"), "event_type": "t", "timestamp": now})).collect::<Vec<_>>()});
    let (s, _, b) = call(
        c.post(format!("{base}/game/telemetry"))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&batch(500, "a")),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let (s, _, b) = call(
        c.post(format!("{base}/game/telemetry"))
            .header("authorization", bearer(SERVER_TOKEN))
            .json(&batch(501, "b")),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    // Admin endpoints with no admin token configured: 403 (other node).
    // Metrics carry per-route counters; OpenAPI lists the routes.
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("http_requests_total") && text.contains("route=\"/auth/register\""),
        "{text}"
    );
    let (s, _, api) = call(c.get(format!("{base}/openapi.json"))).await;
    assert_eq!(s, 200);
    for path in [
        "/auth/register",
        "/auth/refresh",
        "/player/me/profile",
        "/game/telemetry",
        "/.well-known/jwks.json",
    ] {
        assert!(api["paths"][path].is_object(), "{path} missing in openapi");
    }
    // The request id a client sends is echoed.
    let resp = c
        .get(format!("{base}/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            ("MERIDIAN_RATE_LIMITS", "on"),
            ("MERIDIAN_RATE_LIMITS__AUTH_PER_ACCOUNT_PER_MIN", "3"),
            ("MERIDIAN_RATE_LIMITS__AUTH_PER_IP_PER_MIN", "1000"),
            ("MERIDIAN_ADMIN_TOKEN", ""),
        ],
    );
    let base = node.url();
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, h, b) = call(
            c.post(format!("{base}/auth/login"))
                .json(&json!({"username": "eve_05", "password": "wrong password"})),
        )
        .await;
        if s == 429 {
            assert_eq!(error_code(&b), "rate_limited");
            let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![401, 401, 401, 429]);
    // Another account from the same IP is not affected.
    let (s, _, _) = call(
        c.post(format!("{base}/auth/login"))
            .json(&json!({"username": "frank_06", "password": "wrong password"})),
    )
    .await;
    assert_eq!(s, 401);
    // With an empty admin token configured, admin endpoints answer 403.
    let (s, _, b) = call(
        c.get(format!("{base}/admin/telemetry"))
            .header("authorization", "Bearer x"),
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (403, "forbidden"));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let base = node.url();
    let reg = register(&base, "grace_07", "graces password").await;
    assert_eq!(node.terminate(), Some(0), "log:\n{}", node.log_tail());
    node.spawn();
    let (s, _, b) = call(
        client()
            .post(format!("{}/auth/login", node.url()))
            .json(&json!({"username": "grace_07", "password": "graces password"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["player_id"], reg["player_id"]);
}
