//! The agent's HTTP API (`network.api_port`, off unless set): the control requests the
//! CLI sends over the local socket, over HTTPS, with the same semantics — reads go
//! through the leader as `quorate status` does, operations are acknowledged through
//! Raft — and the CLI's exit codes as HTTP statuses with JSON problem details
//! (RFC 9457): 1 (invalid or refused) → 422, 3 (destructive) → 409, 4 (no quorum) →
//! 503.
//!
//! Who may ask: a client certificate from the cluster CA that carries a role
//! (`quorate ca issue NAME --role viewer|operator --client`), or a token (`quorate
//! token create`, `Authorization: Bearer …`). Nothing else: no certificate and no token
//! → 401; a certificate of another CA fails the TLS handshake; a node's certificate
//! carries no role → 401; a viewer asking for an operation → 403. Every operation is
//! recorded in `events` as `api:NAME@NODE`.
//!
//! **Architecture Invariant:** knows nothing of Raft or the agent: it turns HTTP into
//! [`ControlRequest`]s and hands them to the [`Handler`] the agent gives it. [`ROUTES`]
//! is the one list of endpoints; `docs/openapi.json` is checked against it.

pub mod tokens;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quorate_api::{ControlReply, ControlRequest};
use quorate_pki::Role;
use serde::Deserialize;
use serde_json::json;

/// Hands a request to the agent, with who asked (`api:NAME`); returns its reply.
pub type Handler = Arc<
    dyn Fn(ControlRequest, String) -> Pin<Box<dyn Future<Output = ControlReply> + Send>>
        + Send
        + Sync,
>;

/// The node's metrics in Prometheus' text format.
pub type MetricsText = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// One endpoint: what it is, and the least role that may call it.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path, with `{name}` parameters as OpenAPI writes them.
    pub path: &'static str,
    /// The least role.
    pub role: Role,
}

const fn route(method: &'static str, path: &'static str, role: Role) -> Route {
    Route { method, path, role }
}

/// Every endpoint of the API.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/status", Role::Viewer),
    route("GET", "/v1/events", Role::Viewer),
    route("GET", "/v1/services/{service}/explain", Role::Viewer),
    route("POST", "/v1/services/{service}/move", Role::Operator),
    route("POST", "/v1/services/{service}/restart", Role::Operator),
    route("POST", "/v1/services/{service}/disable", Role::Operator),
    route("POST", "/v1/services/{service}/enable", Role::Operator),
    route("POST", "/v1/nodes/{node}/drain", Role::Operator),
    route("POST", "/v1/nodes/{node}/undrain", Role::Operator),
    route("POST", "/v1/nodes/{node}/maintenance", Role::Operator),
    route("GET", "/metrics", Role::Viewer),
    route("GET", "/v1/stream", Role::Viewer),
    route("GET", "/v1/nodes", Role::Viewer),
    route("GET", "/v1/services", Role::Viewer),
    route("GET", "/v1/storage", Role::Viewer),
    route("GET", "/v1/simulate", Role::Viewer),
    route("POST", "/v1/services/{service}/ban", Role::Operator),
    route("POST", "/v1/services/{service}/unban", Role::Operator),
    route("POST", "/v1/services/{service}/cleanup", Role::Operator),
    route("POST", "/v1/cluster/maintenance", Role::Operator),
];

/// What the API needs from the agent.
#[derive(Clone)]
pub struct Api {
    /// Answers control requests.
    pub handler: Handler,
    /// Renders the node's metrics.
    pub metrics: MetricsText,
    /// The node's token file (`<data-dir>/api-tokens`).
    pub tokens: PathBuf,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Who asked, from the connection's client certificate (if it carries a role).
#[derive(Clone, Debug)]
struct ConnIdentity(Option<(String, Role)>);

/// A JSON problem (RFC 9457).
struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    exit_code: Option<u8>,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            exit_code: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(code) = self.exit_code {
            body["exit_code"] = json!(code);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The caller's name and role: the connection's certificate, else a bearer token;
/// refused when neither, or when the role is below `needed`.
fn authorize(
    api: &Api,
    conn: &ConnIdentity,
    headers: &HeaderMap,
    needed: Role,
) -> Result<String, Problem> {
    // A browser's EventSource cannot set headers: reads also take the token from
    // `?access_token=` (see `with_query_token`); operations never do, so a link cannot
    // make a logged-in browser operate.
    let query_token = (needed == Role::Viewer)
        .then(|| headers.get(QUERY_TOKEN).and_then(|v| v.to_str().ok()))
        .flatten();
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token);
    let who = match (&conn.0, bearer) {
        (Some(identity), _) => Some(identity.clone()),
        (None, Some(token)) => tokens::lookup(&api.tokens, token.trim()),
        (None, None) => None,
    };
    let Some((name, role)) = who else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "present a client certificate with a role from the cluster CA (`quorate ca issue NAME --client --role viewer|operator`) or a token (`Authorization: Bearer …`, from `quorate token create`)",
        ));
    };
    if role < needed {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "`{name}` is a {}; this needs an {}",
                role.as_str(),
                needed.as_str()
            ),
        ));
    }
    Ok(format!("api:{name}"))
}

/// An internal header carrying `?access_token=` from the query to [`authorize`]; one
/// sent by a client is removed first.
const QUERY_TOKEN: &str = "x-quorate-query-token";

/// Moves `?access_token=` into [`QUERY_TOKEN`] (dropping any such header the client
/// sent), so that handlers see it like a header.
async fn with_query_token(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.headers_mut().remove(QUERY_TOKEN);
    let token = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        request.headers_mut().insert(QUERY_TOKEN, value);
    }
    next.run(request).await
}

/// The agent's reply as HTTP: a refusal as a problem with the CLI's exit code.
fn reply(answer: ControlReply) -> Response {
    match answer {
        ControlReply::Refused {
            exit_code, message, ..
        } => {
            let (status, title) = match exit_code {
                3 => (StatusCode::CONFLICT, "Destructive change refused"),
                4 => (StatusCode::SERVICE_UNAVAILABLE, "No quorum"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "Refused"),
            };
            Problem {
                status,
                title,
                detail: message,
                exit_code: Some(exit_code),
            }
            .into_response()
        }
        ControlReply::Status(report) => Json(report).into_response(),
        other => Json(other).into_response(),
    }
}

/// What every handler needs: the API, who the connection is (its client
/// certificate) and the request's headers (a token).
struct Ctx {
    api: Api,
    conn: ConnIdentity,
    headers: HeaderMap,
}

impl axum::extract::FromRequestParts<Api> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Api,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            api: api.clone(),
            conn: parts
                .extensions
                .get::<ConnIdentity>()
                .cloned()
                .unwrap_or(ConnIdentity(None)),
            headers: parts.headers.clone(),
        })
    }
}

impl Ctx {
    /// The caller as events name it, or the refusal.
    fn authorize(&self, needed: Role) -> Result<String, Problem> {
        authorize(&self.api, &self.conn, &self.headers, needed)
    }

    /// Hands `request` to the agent as the caller.
    async fn handle(&self, request: ControlRequest, by: String) -> ControlReply {
        (self.api.handler)(request, by).await
    }

    /// Authorizes the caller first (so a stranger learns nothing from a body's
    /// errors), then refuses a bad body, then hands the request to the agent.
    async fn ask(&self, needed: Role, request: Result<ControlRequest, Problem>) -> Response {
        let by = match self.authorize(needed) {
            Ok(by) => by,
            Err(problem) => return problem.into_response(),
        };
        match request {
            Ok(request) => reply(self.handle(request, by).await),
            Err(refused) => refused.into_response(),
        }
    }
}

/// A body that is not the JSON an endpoint takes: 400 with what was wrong.
fn bad_body(rejection: &JsonRejection) -> Problem {
    Problem {
        status: StatusCode::BAD_REQUEST,
        title: "Bad request body",
        detail: format!("{rejection}; nothing was changed"),
        exit_code: Some(1),
    }
}

/// Operations without parameters take no body, or `{}`: anything else is refused, so
/// a client that thinks it sends parameters learns that they are not taken.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

fn no_body(body: &axum::body::Bytes) -> Result<(), Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<NoBody>(body)
        .map(drop)
        .map_err(|e| Problem {
            status: StatusCode::BAD_REQUEST,
            title: "Bad request body",
            detail: format!(
                "this operation takes no parameters (no body, or `{{}}`): {e}; nothing was changed"
            ),
            exit_code: Some(1),
        })
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    local: bool,
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
    /// A cursor: only events after this `seq`.
    after: Option<u64>,
}

#[derive(Deserialize)]
struct SimulateQuery {
    /// Nodes that fail, comma-separated.
    #[serde(default)]
    fail: String,
    /// Nodes that drain, comma-separated.
    #[serde(default)]
    drain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    node: String,
    /// How long, in ms; none: until `unban`.
    #[serde(default)]
    for_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupBody {
    #[serde(default)]
    node: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    node: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
}

/// The router of [`ROUTES`], without transport (for [`serve`] and tests).
pub fn router(api: Api) -> Router {
    async fn status(ctx: Ctx, Query(q): Query<StatusQuery>) -> Response {
        let request = ControlRequest::Status { local: q.local };
        ctx.ask(Role::Viewer, Ok(request)).await
    }
    async fn events(ctx: Ctx, Query(q): Query<EventsQuery>) -> Response {
        let limit = q.limit.unwrap_or(50).min(10_000);
        let Some(after) = q.after else {
            return ctx
                .ask(Role::Viewer, Ok(ControlRequest::Events { limit }))
                .await;
        };
        // With a cursor: the first `limit` events after it.
        let by = match ctx.authorize(Role::Viewer) {
            Ok(by) => by,
            Err(problem) => return problem.into_response(),
        };
        match ctx
            .handle(ControlRequest::Events { limit: 10_000 }, by)
            .await
        {
            ControlReply::Events { events } => {
                let events: Vec<serde_json::Value> = events
                    .into_iter()
                    .filter(|e| e["seq"].as_u64().is_some_and(|s| s > after))
                    .take(limit)
                    .collect();
                Json(ControlReply::Events { events }).into_response()
            }
            other => reply(other),
        }
    }
    async fn explain(ctx: Ctx, Path(service): Path<String>) -> Response {
        ctx.ask(Role::Viewer, Ok(ControlRequest::Explain { service }))
            .await
    }
    async fn move_service(
        ctx: Ctx,
        Path(service): Path<String>,
        body: Result<Json<MoveBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| ControlRequest::Move {
                service,
                node: b.node,
            })
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn restart(ctx: Ctx, Path(service): Path<String>, body: Bytes) -> Response {
        let request = no_body(&body).map(|()| ControlRequest::Restart { service });
        ctx.ask(Role::Operator, request).await
    }
    async fn disable(ctx: Ctx, Path(service): Path<String>, body: Bytes) -> Response {
        let request = no_body(&body).map(|()| ControlRequest::SetDisabled {
            service,
            disabled: true,
        });
        ctx.ask(Role::Operator, request).await
    }
    async fn enable(ctx: Ctx, Path(service): Path<String>, body: Bytes) -> Response {
        let request = no_body(&body).map(|()| ControlRequest::SetDisabled {
            service,
            disabled: false,
        });
        ctx.ask(Role::Operator, request).await
    }
    fn admin(node: String, state: &str) -> ControlRequest {
        ControlRequest::SetAdmin {
            node,
            state: state.to_owned(),
        }
    }
    async fn drain(ctx: Ctx, Path(node): Path<String>, body: Bytes) -> Response {
        let request = no_body(&body).map(|()| admin(node, "draining"));
        ctx.ask(Role::Operator, request).await
    }
    async fn undrain(ctx: Ctx, Path(node): Path<String>, body: Bytes) -> Response {
        let request = no_body(&body).map(|()| admin(node, "active"));
        ctx.ask(Role::Operator, request).await
    }
    async fn maintenance(
        ctx: Ctx,
        Path(node): Path<String>,
        body: Result<Json<MaintenanceBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| admin(node, if b.on { "maintenance" } else { "active" }))
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn metrics(ctx: Ctx) -> Response {
        if let Err(problem) = ctx.authorize(Role::Viewer) {
            return problem.into_response();
        }
        let text = (ctx.api.metrics)().await;
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    }
    async fn stream(ctx: Ctx) -> Response {
        let by = match ctx.authorize(Role::Viewer) {
            Ok(by) => by,
            Err(problem) => return problem.into_response(),
        };
        let events = futures_util::stream::unfold(
            (ctx, by, String::new(), 0u64, None::<std::time::Instant>),
            |(ctx, by, last_status, last_seq, sent_at)| async move {
                let mut first = sent_at.is_none();
                loop {
                    if !first {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    first = false;
                    let status = match ctx
                        .handle(ControlRequest::Status { local: false }, by.clone())
                        .await
                    {
                        ControlReply::Status(report) => {
                            serde_json::to_string(&report).unwrap_or_default()
                        }
                        other => serde_json::to_string(&other).unwrap_or_default(),
                    };
                    let ControlReply::Events { events } = ctx
                        .handle(ControlRequest::Events { limit: 50 }, by.clone())
                        .await
                    else {
                        continue;
                    };
                    let newest = events
                        .iter()
                        .filter_map(|e| e["seq"].as_u64())
                        .max()
                        .unwrap_or(0);
                    let stale = sent_at.is_none_or(|t| t.elapsed() > Duration::from_secs(15));
                    if status != last_status || newest != last_seq || stale {
                        let data = json!({"status": serde_json::from_str::<serde_json::Value>(&status).unwrap_or_default(), "events": events}).to_string();
                        let event = axum::response::sse::Event::default()
                            .event("cluster")
                            .data(data);
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (ctx, by, status, newest, Some(std::time::Instant::now())),
                        ));
                    }
                }
            },
        );
        axum::response::sse::Sse::new(events)
            .keep_alive(axum::response::sse::KeepAlive::default())
            .into_response()
    }
    /// One part of the status report (`nodes`, `services`, `storage`).
    async fn part(ctx: &Ctx, key: &str) -> Response {
        let by = match ctx.authorize(Role::Viewer) {
            Ok(by) => by,
            Err(problem) => return problem.into_response(),
        };
        match ctx
            .handle(ControlRequest::Status { local: false }, by)
            .await
        {
            ControlReply::Status(report) => {
                let value = serde_json::to_value(&report).unwrap_or_default();
                Json(json!({ key: value[key] })).into_response()
            }
            other => reply(other),
        }
    }
    async fn nodes(ctx: Ctx) -> Response {
        part(&ctx, "nodes").await
    }
    async fn services(ctx: Ctx) -> Response {
        part(&ctx, "services").await
    }
    async fn storage(ctx: Ctx) -> Response {
        part(&ctx, "storage").await
    }
    async fn simulate(ctx: Ctx, Query(q): Query<SimulateQuery>) -> Response {
        let by = match ctx.authorize(Role::Viewer) {
            Ok(by) => by,
            Err(problem) => return problem.into_response(),
        };
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (fail, drain) = (list(&q.fail), list(&q.drain));
        let view = match ctx.handle(ControlRequest::SchedulerInput, by).await {
            ControlReply::SchedulerInput(view) => view,
            other => return reply(other),
        };
        let unknown = fail
            .iter()
            .chain(&drain)
            .find(|n| !view.spec.nodes.contains_key(*n));
        if let Some(unknown) = unknown {
            return Problem {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                title: "Refused",
                detail: format!(
                    "`{unknown}` is not a node of the spec (nodes: {})",
                    view.spec
                        .nodes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                exit_code: Some(1),
            }
            .into_response();
        }
        let sim = quorate_api::simulate::simulate(&view, &fail, &drain);
        Json(quorate_api::simulate::report(
            &view, &sim, &fail, &drain, true,
        ))
        .into_response()
    }
    async fn ban(
        ctx: Ctx,
        Path(service): Path<String>,
        body: Result<Json<BanBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| ControlRequest::Ban {
                service,
                node: b.node,
                for_ms: b.for_ms,
            })
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn unban(
        ctx: Ctx,
        Path(service): Path<String>,
        body: Result<Json<NodeBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| ControlRequest::Unban {
                service,
                node: b.node,
            })
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn cleanup(
        ctx: Ctx,
        Path(service): Path<String>,
        body: Result<Json<CleanupBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| ControlRequest::Cleanup {
                service,
                node: b.node,
            })
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn cluster_maintenance(
        ctx: Ctx,
        body: Result<Json<MaintenanceBody>, JsonRejection>,
    ) -> Response {
        let request = body
            .map(|Json(b)| ControlRequest::ClusterMaintenance { on: b.on })
            .map_err(|e| bad_body(&e));
        ctx.ask(Role::Operator, request).await
    }
    async fn dashboard() -> Response {
        (
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            include_str!("dashboard.html"),
        )
            .into_response()
    }
    async fn not_found() -> Response {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such endpoint; see docs/openapi.json",
        )
        .into_response()
    }

    // Every entry of ROUTES, and nothing else (a test asks each of them).
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/services/{service}/explain", get(explain))
        .route("/v1/services/{service}/move", post(move_service))
        .route("/v1/services/{service}/restart", post(restart))
        .route("/v1/services/{service}/disable", post(disable))
        .route("/v1/services/{service}/enable", post(enable))
        .route("/v1/nodes/{node}/drain", post(drain))
        .route("/v1/nodes/{node}/undrain", post(undrain))
        .route("/v1/nodes/{node}/maintenance", post(maintenance))
        .route("/metrics", get(metrics))
        .route("/v1/stream", get(stream))
        .route("/v1/nodes", get(nodes))
        .route("/v1/services", get(services))
        .route("/v1/storage", get(storage))
        .route("/v1/simulate", get(simulate))
        .route("/v1/services/{service}/ban", post(ban))
        .route("/v1/services/{service}/unban", post(unban))
        .route("/v1/services/{service}/cleanup", post(cleanup))
        .route("/v1/cluster/maintenance", post(cluster_maintenance))
        // The page holds no data: it asks the API with the token the user gives it.
        .route("/", get(dashboard))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(with_query_token))
        .with_state(api)
}

/// How many connections the API serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serves the API on `listener` with `tls` (see [`quorate_pki::api_server_config`])
/// until the task is dropped. Handshakes must finish within 10 s and request headers
/// arrive within 10 s; at most 64 connections are served at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    api: Api,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "API handshake refused: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(quorate_pki::client_role);
            let service = hyper_util::service::TowerToHyperService::new(
                app.layer(Extension(ConnIdentity(identity))),
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn every_listed_route_is_served_and_asks_who_is_calling() {
        let handler: Handler =
            Arc::new(|_, _| Box::pin(async { panic!("no request gets past authorization") }));
        let metrics: MetricsText =
            Arc::new(|| Box::pin(async { panic!("no request gets past authorization") }));
        let dir = tempfile::tempdir().unwrap();
        let app = router(Api {
            handler,
            metrics,
            tokens: dir.path().join(tokens::TOKENS_FILE),
        })
        .layer(Extension(ConnIdentity(None)));
        for route in ROUTES {
            let uri = route
                .path
                .replace("{service}", "web")
                .replace("{node}", "n1");
            let request = axum::http::Request::builder()
                .method(route.method)
                .uri(&uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{} {uri}",
                route.method
            );
        }
        let request = axum::http::Request::builder()
            .uri("/v1/nope")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
