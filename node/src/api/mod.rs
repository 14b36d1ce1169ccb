//! The HTTP API (axum): router, middleware and the extractors every handler
//! uses. Handlers are thin: parse and authorize, call one domain function,
//! map its error to an [`ApiError`].
//!
//! Middleware, outermost first: request id (`x-request-id`, generated when
//! absent, echoed back) → tracing span → metrics per matched route → JSON
//! error bodies → timeout (408) → concurrency limit → body limit (413).

pub mod auth;
pub mod economy;
pub mod games;
pub mod leaderboards;
pub mod mesh;
pub mod ops;
pub mod player;
pub mod telemetry;

use crate::auth::accounts::Accounts;
use crate::auth::ratelimit::RateLimiter;
use crate::config::Config;
use crate::error::{default_for_status, ApiError, ErrorInfo};
use crate::profiles::Profiles;
use crate::telemetry::Telemetry;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use meridian_replication::Storage;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

/// Everything handlers share.
pub struct AppState {
    pub cfg: Config,
    pub region: crate::regions::Region,
    pub catalog: std::collections::BTreeMap<String, crate::regions::Region>,
    pub storage: Storage,
    pub accounts: Accounts,
    pub profiles: Profiles,
    pub telemetry: Telemetry,
    pub limiter: RateLimiter,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// False until start-up finished and again once draining began.
    pub ready: AtomicBool,
    /// Draining: no new matches; the economy's voters move to other nodes.
    pub draining: AtomicBool,
    /// During a takeover's close window: every response says
    /// `Connection: close`, so clients stop reusing keep-alive connections.
    pub closing_connections: AtomicBool,
    /// Cross-region replication (Raft over the mesh, CRDT sync).
    pub replica: crate::replica::Replica,
    /// The region mesh; `None` when disabled or after shutdown left it.
    pub mesh: std::sync::RwLock<Option<meridian_mesh::MeshHandle>>,
    pub beacon: Option<meridian_mesh::beacon::BeaconServer>,
    pub economy: meridian_replication::economy::Economy,
    pub leaderboards: meridian_replication::leaderboard::LeaderboardEngine,
    pub games: crate::games::Games,
    /// The payment gateway and its webhook processor, when payments are on.
    pub payments: Option<(
        Arc<dyn meridian_replication::economy::PaymentGateway>,
        meridian_replication::economy::WebhookProcessor,
    )>,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The release label this process runs (`/healthz`).
    pub fn release(&self) -> &str {
        self.cfg.release()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Run `f` with the mesh handle, if the mesh runs.
    pub fn with_mesh<T>(&self, f: impl FnOnce(&meridian_mesh::MeshHandle) -> T) -> Option<T> {
        self.mesh
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}

pub fn router(state: Shared) -> Router {
    let limits = state.cfg.limits.clone();
    Router::new()
        .merge(auth::routes())
        .merge(player::routes())
        .merge(telemetry::routes())
        .merge(ops::routes())
        .merge(mesh::routes())
        .merge(economy::routes())
        .merge(leaderboards::routes())
        .merge(games::routes())
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(limits.http_body_max_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limits.http_body_max_bytes))
        .layer(tower::limit::ConcurrencyLimitLayer::new(limits.http_concurrency_max))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(limits.http_request_timeout_ms),
        ))
        .layer(axum::middleware::from_fn(error_body))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                },
            ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            connection_close,
        ))
        .with_state(state)
}

/// During a takeover's close window, ask every client to close its
/// connection after this response (hyper then closes it too).
async fn connection_close(
    axum::extract::State(state): axum::extract::State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if state.closing_connections.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Render every error response as the API's JSON error, with the request id.
async fn error_body(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut resp = next.run(req).await;
    let status = resp.status();
    let info = resp.extensions_mut().remove::<ErrorInfo>();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if info.is_none() && (status.as_u16() < 400 || is_json) {
        return resp;
    }
    let info = info.unwrap_or_else(|| default_for_status(status));
    let body = serde_json::json!({
        "error": {"code": info.code, "message": info.message, "request_id": request_id}
    });
    let (mut parts, _) = resp.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}` per matched route.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// `Json<T>` whose rejections become API errors that name the problem
/// (400 malformed/invalid with serde's path and message, 413, 415).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_request(
                "invalid_field",
                e.body_text().replace(
                    "Failed to deserialize the JSON body into the target type: ",
                    "",
                ),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::bad_request("malformed_json", e.body_text()))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds the limit",
            )),
            Err(e) => Err(ApiError::bad_request("bad_request", e.body_text())),
        }
    }
}

/// Query strings with errors as API errors naming the parameter.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::bad_request(
                "invalid_query",
                e.body_text()
                    .replace("Failed to deserialize query string: ", ""),
            )),
        }
    }
}

/// Who is calling, from `Authorization: Bearer ...`.
#[derive(Debug, Clone)]
pub enum Caller {
    Player { id: String },
    Server,
    Admin,
}

impl Caller {
    pub fn role(&self) -> &'static str {
        match self {
            Caller::Player { .. } => "player",
            Caller::Server => "server",
            Caller::Admin => "admin",
        }
    }
    /// The player id, or 403 for other roles.
    pub fn player(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Player { id } => Ok(id),
            _ => Err(ApiError::forbidden("this endpoint is for players")),
        }
    }
}

/// The admin role, for `/admin/*`. With no admin token configured every
/// admin call is 403, whatever it presents.
pub struct AdminCaller;

impl FromRequestParts<Shared> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let Some(admin) = &state.cfg.admin_token else {
            return Err(ApiError::forbidden(
                "admin endpoints are disabled: no admin token configured",
            ));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_token",
                    "Authorization: Bearer <admin token> required",
                )
            })?;
        if ct_eq(token.trim().as_bytes(), admin.as_bytes()) {
            Ok(AdminCaller)
        } else {
            Err(ApiError::forbidden("admin role required"))
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "Authorization: Bearer <token> required")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("invalid_token", "expected a Bearer token"))?;
        caller_from_token(state, token)
    }
}

/// Verify a bearer token: admin, server, or a player's access token.
pub fn caller_from_token(state: &Shared, token: &str) -> Result<Caller, ApiError> {
    if let Some(admin) = &state.cfg.admin_token {
        if ct_eq(token.as_bytes(), admin.as_bytes()) {
            return Ok(Caller::Admin);
        }
    }
    if state
        .cfg
        .auth
        .server_tokens
        .iter()
        .any(|t| ct_eq(token.as_bytes(), t.as_bytes()))
    {
        return Ok(Caller::Server);
    }
    use crate::auth::tokens::TokenError;
    let claims = state.accounts.keys().verify(token).map_err(|e| match e {
        TokenError::Expired => {
            ApiError::unauthorized("token_expired", "access token expired; refresh it")
        }
        other => ApiError::unauthorized("invalid_token", other.to_string()),
    })?;
    if claims.role != "player" {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "unknown role in token",
        ));
    }
    if state.accounts.login_revoked(&claims.sid) {
        return Err(ApiError::unauthorized(
            "token_revoked",
            "this login was revoked; log in again",
        ));
    }
    if crate::erasure::is_erased(state, &claims.sub) {
        return Err(ApiError::unauthorized(
            "player_erased",
            "this player was erased",
        ));
    }
    Ok(Caller::Player { id: claims.sub })
}
