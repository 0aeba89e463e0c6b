//! Prometheus/OpenMetrics. Every label value comes from a fixed set — the
//! route templates the router knows (or `other`), known HTTP methods (or
//! `other`), status classes — so no request can grow `/metrics`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The route templates the router serves; `/v2` requests are labelled by
/// the endpoint the dispatcher chose (see `oci::dispatch`).
pub const ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/metrics",
    "/v1/failures",
    "/v1/blobs/{digest}",
    "/v1/objects",
    "/v1/objects/{arch}/{version}/{release}",
    "/{version}/{arch}/{file}",
    "/v2/",
    "/v2",
    "/v2/_catalog",
    "/v2/{name}/tags/list",
    "/v2/{name}/manifests/{reference}",
    "/v2/{name}/referrers/{digest}",
    "/v2/{name}/blobs/uploads/",
    "/v2/{name}/blobs/uploads/{id}",
    "/v2/{name}/blobs/{digest}",
];

/// A `/v2` handler's route template, set as a response extension.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    /// At `--max-connections`: the connection that had waited longest for a
    /// request head made room for a newcomer.
    Evicted,
    /// No byte moved for `--idle-timeout` during a request.
    Stalled,
    /// The request head did not arrive within `--header-timeout`.
    HeaderTimeout,
    /// The TLS handshake failed or did not finish within `--header-timeout`.
    Handshake,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Shed::Evicted => "evicted",
            Shed::Stalled => "stalled",
            Shed::HeaderTimeout => "header_timeout",
            Shed::Handshake => "tls_handshake",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    bytes_served: Counter,
    connections: Gauge,
    shed: Family<ShedLabels, Counter>,
    coverage_abandoned: Counter,
    registry: prometheus_client::registry::Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_served = Counter::default();
        let connections = Gauge::default();
        let shed = Family::<ShedLabels, Counter>::default();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("bpfarm_http_requests", "HTTP requests by route, method and status class", requests.clone());
        registry.register("bpfarm_bytes_served", "Object bytes sent", bytes_served.clone());
        registry.register("bpfarm_http_connections", "Open client connections", connections.clone());
        registry.register(
            "bpfarm_http_connections_shed",
            "Connections the server closed itself, by reason",
            shed.clone(),
        );
        let coverage_abandoned = Counter::default();
        registry.register(
            "bpfarm_coverage_abandoned",
            "Coverage answers (page or /v1/coverage) whose work stopped because the client left",
            coverage_abandoned.clone(),
        );
        Self { requests, bytes_served, connections, shed, coverage_abandoned, registry }
    }
}

impl Metrics {
    pub fn served(&self, bytes: u64) {
        self.bytes_served.inc_by(bytes);
    }
    pub fn connection_opened(&self) {
        self.connections.inc();
    }
    pub fn connection_closed(&self) {
        self.connections.dec();
    }
    pub fn shed(&self, why: Shed) {
        self.shed.get_or_create(&ShedLabels { reason: why.label() }).inc();
    }
    pub fn coverage_abandoned(&self) {
        self.coverage_abandoned.inc();
    }
    /// The OpenMetrics text, with the current object count.
    pub fn render(&self, objects: i64) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text.replace(
            "# EOF\n",
            &format!(
                "# HELP bpfarm_objects Current objects.\n# TYPE bpfarm_objects gauge\nbpfarm_objects {objects}\n# EOF\n"
            ),
        ))
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_label(s: u16) -> &'static str {
    match s / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied()).unwrap_or("other")
}

/// One request being counted, by (route, method, status class): its
/// route and method are taken when it arrives (`Metrics::start`), its
/// status when it is answered (`finish`). What `auth::Guard` holds.
#[derive(Debug)]
pub struct Tally {
    metrics: Arc<Metrics>,
    route: &'static str,
    method: &'static str,
}

impl Metrics {
    /// Starts counting `req` (the route it matched, its method).
    pub fn start(self: &Arc<Self>, req: &Request) -> Tally {
        Tally {
            metrics: self.clone(),
            route: route_label(req.extensions().get::<MatchedPath>()),
            method: method_label(req.method()),
        }
    }
}

impl Tally {
    /// Counts the request answered with `resp` (labelled by a `/v2`
    /// handler's `RouteLabel` when it set one), and hands `resp` on.
    pub fn finish(&self, resp: Response) -> Response {
        let route = resp.extensions().get::<RouteLabel>().map(|r| r.0).unwrap_or(self.route);
        let status = status_label(resp.status().as_u16());
        self.metrics.requests.get_or_create(&RequestLabels { route, method: self.method, status }).inc();
        resp
    }
}
