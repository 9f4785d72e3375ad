//! The fleet page: `GET /` and `GET /node/NAME`, served by the boot server itself (built with
//! the default `page` feature).
//!
//! | path | what |
//! | --- | --- |
//! | `GET /` | every inventory node, the discovered machines, the published versions, rollouts |
//! | `GET /node/NAME` | one node: its recent boots stage by stage, what its agent said, the server's log lines about it |
//! | `GET /-/fleet`, `GET /-/node/NAME` | the live part of those pages as server-sent events (`event: update`, the HTML in `data:`); `?once=1` answers it once, as HTML, for clients without `EventSource` |
//! | `GET /-/page.css`, `GET /-/page.js` | the page's style and behaviour |
//!
//! The pages are HTML rendered here with minijinja, HTML auto-escaping on for every value (a
//! MAC, a host name, a vendor class, a log line: whatever came from the network is text), and
//! sent with a Content-Security-Policy that runs only `/-/page.js`, so even markup that got
//! through could not run a script. Nothing is fetched from elsewhere: the page works on a LAN
//! without internet. Actions (power, rollouts, enrolling a discovered machine) are the fleet
//! API's own routes, called by `page.js` with the admin token the user pastes, which stays in
//! the browser tab's session storage.
//!
//! An event stream renders at most every [`COALESCE`] after something moved (a boot stage, a
//! discovered machine, a node's message), and every [`REFRESH`] in any case (an agent that went
//! silent); the fleet part is rendered once per change for every open page.

pub mod view;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::fleet::Fleet;
use crate::hub::Hub;
use crate::nodes::Inventories;

/// The least time between two renders of one stream: the changes of a burst go out together.
pub const COALESCE: Duration = Duration::from_millis(400);
/// A stream renders at least this often, for what moves without an event (a silent agent).
pub const REFRESH: Duration = Duration::from_secs(5);

const CSS: &str = include_str!("assets/page.css");
const JS: &str = include_str!("assets/page.js");
const TEMPLATES: [(&str, &str); 5] = [
    ("base.html", include_str!("assets/base.html")),
    ("index.html", include_str!("assets/index.html")),
    ("fleet.html", include_str!("assets/fleet.html")),
    ("node.html", include_str!("assets/node.html")),
    ("node_live.html", include_str!("assets/node_live.html")),
];

/// Only the page's own script and style, no inline code, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// What the page's handlers share.
#[derive(Clone)]
pub struct Page {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    nodes: Arc<Inventories>,
    hub: Arc<Hub>,
    fleet: Option<Arc<Fleet>>,
    env: minijinja::Environment<'static>,
    /// The fleet part as last rendered, with what it was rendered from.
    cached: Mutex<Option<(CacheKey, Arc<String>)>>,
}

type CacheKey = (u64, u64, u64);

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Page {
    /// The page of a server of `root` (with its fleet, when it has a state folder).
    pub fn new(
        root: PathBuf,
        nodes: Arc<Inventories>,
        hub: Arc<Hub>,
        fleet: Option<Arc<Fleet>>,
    ) -> Page {
        Page {
            inner: Arc::new(Inner {
                root,
                nodes,
                hub,
                fleet,
                env: environment(),
                cached: Mutex::new(None),
            }),
        }
    }
}

/// The templates, HTML-escaped by their `.html` names, strict about undefined values.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .expect("the page's templates parse (checked by a test)");
    }
    env.add_filter("clock", clock);
    env.add_global("server_version", env!("CARGO_PKG_VERSION"));
    env.add_global(
        "class_words",
        minijinja::Value::from(minijinja::value::Serde(BTreeMap::from([
            ("ok", "ready"),
            ("busy", "booting"),
            ("bad", "need a look"),
            ("idle", "off or not seen"),
        ]))),
    );
    env.add_global(
        "rollout_class",
        minijinja::Value::from(minijinja::value::Serde(BTreeMap::from([
            ("running", "busy"),
            ("paused", "busy"),
            ("succeeded", "ok"),
            ("failed", "bad"),
            ("aborted", "idle"),
        ]))),
    );
    env
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (the page shows it as "N s
/// ago" and keeps this as the title).
pub fn clock(unix: u64) -> String {
    let (date, time) = crate::date::utc(unix);
    format!("{date} {time} UTC")
}

/// The page's routes.
pub fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/node/{name}", get(node_page))
        .route("/-/fleet", get(fleet_live))
        .route("/-/node/{name}", get(node_live))
        .route("/-/page.css", get(css))
        .route("/-/page.js", get(js))
        .with_state(page)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    fn snapshot(&self) -> view::Snapshot {
        let inventory = self.nodes.get();
        let published = crate::layout::list_published(&self.root).unwrap_or_else(|e| {
            tracing::warn!("the page cannot list the published versions: {e}");
            Vec::new()
        });
        let (fleet, power, rollouts) = match &self.fleet {
            Some(f) => (
                Some(
                    f.status()
                        .into_iter()
                        .map(|s| (s.name.clone(), s))
                        .collect(),
                ),
                f.last_power(),
                f.rollouts.list(),
            ),
            None => (None, BTreeMap::new(), Vec::new()),
        };
        view::Snapshot {
            now_unix: unix_now(),
            inventory,
            boots: self
                .hub
                .boots()
                .into_iter()
                .map(|b| (b.mac.clone(), b))
                .collect(),
            discovered: self.hub.discovered_list(),
            fleet,
            power,
            published,
            rollouts,
        }
    }

    fn render(&self, template: &str, ctx: impl serde::Serialize) -> Result<String, String> {
        self.env
            .get_template(template)
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
            .map_err(|e| {
                tracing::error!("the page's {template}: {e:#}");
                format!("the page could not be made ({template}): see the server's log")
            })
    }

    fn key(&self) -> CacheKey {
        let fleet = self.fleet.as_ref().map_or(0, |f| f.generation());
        (self.hub.generation(), fleet, unix_now() / REFRESH.as_secs())
    }

    /// The fleet page's live part, rendered once per change for every page open.
    fn fleet_part(&self) -> Result<Arc<String>, String> {
        let key = self.key();
        if let Some((k, html)) = &*self.cached.lock().unwrap_or_else(|e| e.into_inner())
            && *k == key
        {
            return Ok(Arc::clone(html));
        }
        let html = Arc::new(self.render("fleet.html", view::fleet(&self.snapshot()))?);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, Arc::clone(&html)));
        Ok(html)
    }

    fn node_view(&self, name: &str) -> Option<view::NodeView> {
        let s = self.snapshot();
        let node = s.inventory.nodes.get(name)?;
        let boots = self.hub.boots_of(&node.mac);
        let log = self.hub.logs.lines(&[name, node.mac.as_str()]);
        Some(view::node(&s, name, &boots, log))
    }
}

fn html(hub: &Hub, status: StatusCode, body: String) -> Response {
    crate::http::count(hub, status);
    crate::hub::Metrics::add(&hub.metrics.http_bytes, body.len() as u64);
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn plain(hub: &Hub, status: StatusCode, body: String) -> Response {
    crate::http::count(hub, status);
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn rendered(hub: &Hub, r: Result<String, String>) -> Response {
    match r {
        Ok(body) => html(hub, StatusCode::OK, body),
        Err(why) => plain(hub, StatusCode::INTERNAL_SERVER_ERROR, why + "\n"),
    }
}

async fn index(State(p): State<Page>) -> Response {
    let s = &p.inner;
    let v = view::fleet(&s.snapshot());
    rendered(&s.hub, s.render("index.html", v))
}

fn no_node(hub: &Hub, name: &str) -> Response {
    plain(
        hub,
        StatusCode::NOT_FOUND,
        format!("the inventory lists no node named {name:?}\n"),
    )
}

async fn node_page(State(p): State<Page>, Path(name): Path<String>) -> Response {
    let s = &p.inner;
    match s.node_view(&name) {
        Some(v) => rendered(&s.hub, s.render("node.html", v)),
        None => no_node(&s.hub, &name),
    }
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    once: Option<String>,
}

async fn fleet_live(State(p): State<Page>, Query(q): Query<LiveQuery>) -> Response {
    if q.once.is_some() {
        let s = &p.inner;
        return match s.fleet_part() {
            Ok(h) => html(&s.hub, StatusCode::OK, (*h).clone()),
            Err(why) => plain(&s.hub, StatusCode::INTERNAL_SERVER_ERROR, why + "\n"),
        };
    }
    stream(p, None)
}

async fn node_live(
    State(p): State<Page>,
    Path(name): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Response {
    let s = &p.inner;
    if s.nodes.mac_of(&name).is_none() {
        return no_node(&s.hub, &name);
    }
    if q.once.is_some() {
        return match s.node_view(&name) {
            Some(v) => rendered(&s.hub, s.render("node_live.html", v)),
            None => no_node(&s.hub, &name),
        };
    }
    stream(p, Some(name))
}

/// Waits until something the page shows may have moved: a boot, a node's message, or
/// [`REFRESH`].
async fn moved(
    hub: &mut tokio::sync::watch::Receiver<u64>,
    fleet: &mut Option<tokio::sync::watch::Receiver<u64>>,
) {
    let fleet_moved = async {
        match fleet {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = hub.changed() => if r.is_err() { tokio::time::sleep(REFRESH).await },
        _ = fleet_moved => {}
        _ = tokio::time::sleep(REFRESH) => {}
    }
}

/// The event stream of the fleet part (`node: None`) or of one node's part.
fn stream(p: Page, node: Option<String>) -> Response {
    crate::http::count(&p.inner.hub, StatusCode::OK);
    struct St {
        p: Page,
        node: Option<String>,
        hub: tokio::sync::watch::Receiver<u64>,
        fleet: Option<tokio::sync::watch::Receiver<u64>>,
        last: Option<Arc<String>>,
        first: bool,
    }
    let st = St {
        hub: p.inner.hub.subscribe(),
        fleet: p.inner.fleet.as_ref().map(|f| f.subscribe()),
        p,
        node,
        last: None,
        first: true,
    };
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if !st.first {
                moved(&mut st.hub, &mut st.fleet).await;
                tokio::time::sleep(COALESCE).await;
                st.hub.mark_unchanged();
                if let Some(f) = st.fleet.as_mut() {
                    f.mark_unchanged();
                }
            }
            st.first = false;
            let s = &st.p.inner;
            let html = match &st.node {
                None => s.fleet_part(),
                Some(name) => match s.node_view(name) {
                    Some(v) => s.render("node_live.html", v).map(Arc::new),
                    None => Err(format!("{name} is no longer in the inventory")),
                },
            };
            let html = html.unwrap_or_else(|why| {
                Arc::new(format!(
                    "<p class=\"bad-box\">{}</p>",
                    minijinja::HtmlEscape(&why)
                ))
            });
            if st.last.as_ref() == Some(&html) {
                continue;
            }
            crate::hub::Metrics::add(&s.hub.metrics.http_bytes, html.len() as u64);
            st.last = Some(Arc::clone(&html));
            // SSE cannot carry a carriage return; the HTML needs none.
            let data = html.replace('\r', "");
            return Some((
                Ok::<_, Infallible>(Event::default().event("update").data(data)),
                st,
            ));
        }
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(hub: &Hub, kind: &'static str, body: &'static str) -> Response {
    crate::http::count(hub, StatusCode::OK);
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page and its assets change together, with the server's binary.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn css(State(p): State<Page>) -> Response {
    asset(&p.inner.hub, "text/css; charset=utf-8", CSS)
}

async fn js(State(p): State<Page>) -> Response {
    asset(&p.inner.hub, "text/javascript; charset=utf-8", JS)
}

#[cfg(test)]
mod tests;
