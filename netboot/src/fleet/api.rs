//! The fleet's HTTP API (mounted by [`crate::http::router`] when the server has a state
//! folder).
//!
//! | path | who | what |
//! | --- | --- | --- |
//! | `GET /api/v1/agent/nonce?node=N` | node | a single-use nonce for its next message |
//! | `POST /api/v1/agent`, `POST /api/v1/ready` | node | a signed message; the answer is signed |
//! | `GET /api/v1/fleet` | anyone | every node: versions, agent, last report |
//! | `GET /api/v1/state` | admin | the desired versions and installs, which a following server mirrors |
//! | `POST /api/v1/power` | admin | `{"action": "on"/"off"/"reboot"/"status", "nodes": [...], "recipe": R, "all": bool}` |
//! | `PUT`/`DELETE /api/v1/desired/NODE` | admin | `{"version": V}`: set or clear a desired version |
//! | `GET`/`POST /api/v1/rollouts` | anyone / admin | list, or start (see [`super::rollout::Request`]) |
//! | `GET /api/v1/rollouts/ID` | anyone | one rollout |
//! | `POST /api/v1/rollouts/ID/abort`, `.../resume` | admin | stop or resume it |
//! | `POST /api/v1/install/NODE` | admin | a fresh install at the node's next network boot (its install record cleared) |
//! | `POST /api/v1/inventory/nodes` | admin | `{"mac": M, "name": N, "recipe": R}`: a discovered machine becomes a node (the inventory file rewritten, comments kept) |
//!
//! Admin requests carry `Authorization: Bearer TOKEN` (the state folder's `admin-token`);
//! without it they get 401 and change nothing. A server started with `--follow LEADER`
//! answers them 409: the leader is the one writer of the fleet's state.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;

use super::auth::{self, SIGNATURE_HEADER};
use super::rollout::Request;
use super::{Fleet, PowerAction};

/// The fleet routes.
pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/api/v1/agent/nonce", get(nonce))
        .route("/api/v1/agent", post(agent))
        .route("/api/v1/ready", post(agent))
        .route("/api/v1/fleet", get(status))
        .route("/api/v1/state", get(shared_state))
        .route("/api/v1/power", post(power))
        .route(
            "/api/v1/desired/{node}",
            put(set_desired).delete(clear_desired),
        )
        .route("/api/v1/rollouts", get(list).post(start))
        .route("/api/v1/rollouts/{id}", get(one))
        .route("/api/v1/rollouts/{id}/abort", post(abort))
        .route("/api/v1/rollouts/{id}/resume", post(resume))
        .route("/api/v1/inventory/nodes", post(enroll))
        .route("/api/v1/install/{node}", post(install))
        .with_state(fleet)
}

fn answer(f: &Fleet, status: StatusCode, resp: Response) -> Response {
    crate::http::count(&f.hub, status);
    resp
}

fn error(f: &Fleet, status: u16, why: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": why }).to_string();
    answer(
        f,
        status,
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
    )
}

fn json<T: serde::Serialize>(f: &Fleet, status: StatusCode, v: &T) -> Response {
    let body = serde_json::to_string_pretty(v).expect("serialises");
    answer(
        f,
        status,
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
    )
}

/// `Err(401)` unless the request carries the admin token; `Err(409)` on a server that
/// follows another (changes go to the one that leads).
fn admin(
    f: &Fleet,
    headers: &HeaderMap,
    peer: SocketAddr,
    what: &str,
) -> Result<(), Box<Response>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if auth::token_matches(&f.state.keys.token, t.trim()) => match f.follows() {
            None => Ok(()),
            Some(leader) => {
                tracing::warn!(%peer, what, %leader, "refused: this server follows another");
                Err(Box::new(error(
                    f,
                    409,
                    &format!(
                        "this server follows {leader}, which takes the fleet's changes: send \
                         them there (ironbake --server {leader} ...)"
                    ),
                )))
            }
        },
        _ => {
            tracing::warn!(%peer, what, "refused: no valid admin token");
            let mut r = error(
                f,
                401,
                "this changes the fleet: send the admin token (Authorization: Bearer TOKEN; \
                 the token is the server's state folder's admin-token)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
            Err(Box::new(r))
        }
    }
}

#[derive(Debug, Deserialize)]
struct NodeQuery {
    node: Option<String>,
}

async fn nonce(State(f): State<Arc<Fleet>>, Query(q): Query<NodeQuery>) -> Response {
    let Some(node) = q.node.filter(|n| !n.is_empty() && n.len() <= 63) else {
        return error(&f, 400, "ask /api/v1/agent/nonce?node=NAME");
    };
    if f.nodes.mac_of(&node).is_none() {
        return error(&f, 404, "no such node");
    }
    match f.nonce(&node) {
        Ok(n) => answer(&f, StatusCode::OK, format!("{n}\n").into_response()),
        Err(e) => error(&f, 500, &format!("making a nonce: {e}")),
    }
}

async fn agent(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match f.receive(peer.ip(), &body, sig) {
        Ok(m) => {
            let (text, sig) = f.answer(&m).await;
            answer(
                &f,
                StatusCode::OK,
                ([(SIGNATURE_HEADER, sig)], text).into_response(),
            )
        }
        Err(r) => {
            tracing::warn!(%peer, status = r.status, "node message refused: {}", r.why);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            answer(&f, status, (status, format!("{}\n", r.why)).into_response())
        }
    }
}

/// What a following server mirrors: the desired versions and the installs (admin token).
async fn shared_state(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| auth::token_matches(&f.state.keys.token, t.trim())) {
        tracing::warn!(%peer, "refused the shared state: no valid admin token");
        return error(
            &f,
            401,
            "send the admin token (Authorization: Bearer TOKEN)",
        );
    }
    json(&f, StatusCode::OK, &f.shared())
}

async fn status(State(f): State<Arc<Fleet>>) -> Response {
    json(&f, StatusCode::OK, &f.status())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerRequest {
    action: PowerAction,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    recipe: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn power(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "power") {
        return *r;
    }
    let req: PowerRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(&f, 400, &format!("not a power request: {e}")),
    };
    let inv = f.nodes.get();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let unknown: Vec<&String> = req
        .nodes
        .iter()
        .filter(|n| !inv.nodes.contains_key(*n))
        .collect();
    if !unknown.is_empty() {
        return error(
            &f,
            400,
            &format!(
                "{} lists no node named {}: nothing was done",
                f.nodes.shown(),
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    names.extend(req.nodes.iter().cloned());
    for (name, n) in &inv.nodes {
        if req.all || req.recipe.as_deref() == Some(n.recipe.as_str()) {
            names.insert(name.clone());
        }
    }
    if names.is_empty() {
        return error(
            &f,
            400,
            "name nodes, a recipe, or all: nothing was selected",
        );
    }
    let runs = names.iter().map(|n| f.power(n, req.action));
    let results = futures_util::future::join_all(runs).await;
    json(&f, StatusCode::OK, &results)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredRequest {
    version: String,
}

async fn set_desired(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "desired version") {
        return *r;
    }
    let req: DesiredRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(&f, 400, &format!("expected {{\"version\": V}}: {e}")),
    };
    match f.set_desired(&node, &req.version).await {
        Ok(w) => json(&f, StatusCode::OK, &w),
        Err((s, why)) => error(&f, s, &why),
    }
}

async fn clear_desired(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "desired version") {
        return *r;
    }
    match f.state.desired.set(&node, None) {
        Ok(()) => {
            f.bump();
            json(
                &f,
                StatusCode::OK,
                &serde_json::json!({ "node": node, "desired": null }),
            )
        }
        Err(e) => error(&f, 500, &format!("writing the desired versions: {e}")),
    }
}

async fn install(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "install") {
        return *r;
    }
    match f.reinstall(&node) {
        Ok(was) => json(
            &f,
            StatusCode::OK,
            &serde_json::json!({
                "node": node,
                "was": was,
                "next": "its next network boot installs its recipe's disk image afresh",
            }),
        ),
        Err(r) => error(&f, r.status, &r.why),
    }
}

async fn list(State(f): State<Arc<Fleet>>) -> Response {
    json(&f, StatusCode::OK, &f.rollouts.list())
}

async fn one(State(f): State<Arc<Fleet>>, Path(id): Path<String>) -> Response {
    match f.rollouts.get(&id) {
        Some(r) => json(&f, StatusCode::OK, &r),
        None => error(&f, 404, &format!("no rollout {id}")),
    }
}

async fn start(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "rollout") {
        return *r;
    }
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(&f, 400, &format!("not a rollout request: {e}")),
    };
    match f.start_rollout(req).await {
        Ok(r) => json(&f, StatusCode::CREATED, &r),
        Err((s, why)) => error(&f, s, &why),
    }
}

async fn abort(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "rollout abort") {
        return *r;
    }
    match f.abort_rollout(&id) {
        Ok(r) => json(&f, StatusCode::OK, &r),
        Err((s, why)) => error(&f, s, &why),
    }
}

async fn resume(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "rollout resume") {
        return *r;
    }
    match f.resume_rollout(&id) {
        Ok(r) => json(&f, StatusCode::OK, &r),
        Err((s, why)) => error(&f, s, &why),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    mac: String,
    name: String,
    #[serde(default)]
    recipe: Option<String>,
}

async fn enroll(
    State(f): State<Arc<Fleet>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admin(&f, &headers, peer, "enroll") {
        return *r;
    }
    let req: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                &f,
                400,
                &format!("expected {{\"mac\": M, \"name\": N, \"recipe\": R}}: {e}"),
            );
        }
    };
    let nodes = Arc::clone(&f.nodes);
    let (mac, name, recipe) = (req.mac, req.name, req.recipe);
    let name2 = name.clone();
    let done = tokio::task::spawn_blocking(move || nodes.add_node(&mac, &name2, recipe.as_deref()))
        .await
        .unwrap_or_else(|e| Err(format!("enrolling stopped: {e}")));
    match done {
        Ok(mac) => {
            tracing::info!(%peer, %mac, node = %name, "enrolled: {} now lists {mac} as {name}", f.nodes.shown());
            f.bump();
            let inv = f.nodes.get();
            json(
                &f,
                StatusCode::CREATED,
                &serde_json::json!({ "node": name, "mac": mac, "recipe": inv.nodes[&name].recipe }),
            )
        }
        Err(why) => {
            tracing::warn!(%peer, node = %name, "enroll refused: {why}");
            let status = if why.starts_with("writing") || why.starts_with("reading") {
                500
            } else if why.contains("already has") {
                409
            } else {
                400
            };
            error(&f, status, &why)
        }
    }
}
