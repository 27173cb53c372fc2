//! A scriptable fault-injection reverse proxy in front of one real registry, and a
//! `Canary` listener that records whatever reaches it.
//!
//! The proxy listens on 127.0.0.1:0 and forwards every request to its upstream registry
//! (plain HTTP), streaming bodies both ways. It changes nothing unless a [`Rule`] says so,
//! except that absolute upstream `Location` headers are rewritten to the proxy's own
//! address, so upload sessions keep going through it. Rules are checked in the order they
//! were added; each counts the requests it matches (method and path regex) on its own and
//! fires on the nth / every / every k-th of them. The first rule that fires decides what
//! happens to the request. Every request is recorded (method, path and query, headers
//! including `Authorization`, body sizes, the status answered and the rule that fired).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, HOST, LOCATION, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One request as the proxy (or the canary) saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path and query, e.g. `/v2/team/app/blobs/uploads/?mount=sha256:..&from=x`.
    pub path: String,
    /// Request headers as received (lower-case names), `Authorization` included.
    pub headers: Vec<(String, String)>,
    /// When the request arrived.
    pub at: Instant,
    /// Status answered to the client; `None` when the connection was dropped instead.
    pub status: Option<u16>,
    /// Label of the rule that fired on this request, if any.
    pub rule: Option<String>,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes handed to the client's connection.
    pub response_bytes: u64,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this request is `method` on a path matching `path_regex`.
    pub fn is(&self, method: &str, path_regex: &str) -> bool {
        self.method == method && Regex::new(path_regex).expect("regex").is_match(&self.path)
    }
}

/// A record while its request is in flight: sizes and status are filled in as it runs.
struct Record {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    at: Instant,
    status: Mutex<Option<u16>>,
    rule: Mutex<Option<String>>,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

impl Record {
    fn new<B>(req: &Request<B>) -> Record {
        Record {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| req.uri().path().to_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            at: Instant::now(),
            status: Mutex::new(None),
            rule: Mutex::new(None),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> Seen {
        Seen {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            at: self.at,
            status: *self.status.lock().unwrap(),
            rule: self.rule.lock().unwrap().clone(),
            request_bytes: self.request_bytes.load(Ordering::SeqCst),
            response_bytes: self.response_bytes.load(Ordering::SeqCst),
        }
    }
}

/// Which of a rule's matching requests it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only the nth match (1-based).
    Nth(usize),
    /// The first n matches.
    FirstN(usize),
    /// Every match.
    Every,
    /// Every k-th match: the k-th, 2k-th, ...
    EveryKth(usize),
}

impl When {
    fn fires(self, count: usize) -> bool {
        match self {
            When::Nth(n) => count == n,
            When::FirstN(n) => count <= n,
            When::Every => true,
            When::EveryKth(k) => k > 0 && count.is_multiple_of(k),
        }
    }
}

/// The body of a canned answer.
#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// These exact bytes (with a `Content-Length`).
    Bytes(Bytes),
    /// `len` filler bytes generated on the fly, never held in memory; `content_length`
    /// says whether the answer announces its length or is sent chunked.
    Filler {
        /// Number of bytes.
        len: u64,
        /// Announce `Content-Length`.
        content_length: bool,
    },
}

/// A canned answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: ReplyBody,
}

impl Reply {
    /// An answer with `status`, no extra headers and an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Bytes(Bytes::new()),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = ReplyBody::Bytes(body.into());
        self
    }

    /// A body of `len` generated bytes (streamed, not buffered).
    pub fn filler(mut self, len: u64, content_length: bool) -> Reply {
        self.body = ReplyBody::Filler {
            len,
            content_length,
        };
        self
    }

    /// A distribution-style JSON error: `{"errors":[{"code":..,"message":..}]}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Reply {
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        Reply::status(status)
            .header("content-type", "application/json; charset=utf-8")
            .body(serde_json::to_vec(&body).expect("json"))
    }

    /// A 429 with `Retry-After: retry_after`, with the JSON `TOOMANYREQUESTS` body or
    /// the plain `Too Many Requests (HAP429)` one some proxies send.
    pub fn too_many_requests(retry_after: u64, json: bool) -> Reply {
        let reply = if json {
            Reply::json_error(429, "TOOMANYREQUESTS", "rate limit exceeded")
        } else {
            Reply::status(429)
                .header("content-type", "text/plain")
                .body("Too Many Requests (HAP429)")
        };
        reply.header("retry-after", &retry_after.to_string())
    }
}

/// What a rule does to a request it fires on.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward unchanged (only counts and labels the request).
    Forward,
    /// Answer without forwarding (the request body is read first, as a registry would).
    Respond(Reply),
    /// Forward, then cut the response body after this many bytes and abort the connection.
    CutAfter(u64),
    /// Forward, flipping every bit of the response body byte at this offset.
    FlipByte(u64),
    /// Forward; after the headers, send `chunk` bytes of the body every `every`.
    Trickle {
        /// Pause before each piece.
        every: Duration,
        /// Bytes per piece.
        chunk: usize,
    },
    /// Forward the request (the upstream does the work), then close the connection
    /// without answering.
    DropResponse,
    /// Forward, then point the answer's `Location` at this base (`http://host:port`),
    /// keeping path and query.
    LocationTo(String),
    /// Forward, then replace the `realm` of the answer's `WWW-Authenticate`.
    RealmTo(String),
    /// Read the request, then never answer (the connection stays open): a peer that
    /// accepts and goes silent.
    Hang,
    /// Forward, then answer `206 Partial Content` with the body from this offset on and a
    /// `Content-Range` saying so, whatever the request asked: a source that serves a
    /// range nobody asked for (or the wrong one after a cut).
    PartialFrom(u64),
    /// Forward, then add these headers to the answer (e.g. Docker Hub's `ratelimit-*`).
    AddHeaders(Vec<(String, String)>),
    /// Serve the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), which
    /// distribution 2.8 lacks, from what the upstream holds: the index at the subject's
    /// `sha256-<hex>` tag, or an empty index when there is none.
    ReferrersApi,
    /// Forward a manifest PUT and, when the manifest has a `subject`, answer with
    /// `OCI-Subject: <its digest>` as a registry with the referrers API does.
    OciSubject,
}

/// A rule: which requests (method, path regex, which matches) and what to do.
#[derive(Debug, Clone)]
pub struct Rule {
    label: String,
    method: Option<Method>,
    path: Regex,
    when: When,
    action: Action,
}

impl Rule {
    /// A rule on `method` (`"*"` for any) and paths (with query) matching `path_regex`;
    /// it fires on every match and forwards unchanged until told otherwise.
    pub fn on(method: &str, path_regex: &str) -> Rule {
        Rule {
            label: format!("{method} {path_regex}"),
            method: (method != "*").then(|| method.parse().expect("HTTP method")),
            path: Regex::new(path_regex).expect("rule path regex"),
            when: When::Every,
            action: Action::Forward,
        }
    }

    /// Names the rule in the request records.
    pub fn label(mut self, label: &str) -> Rule {
        self.label = label.to_owned();
        self
    }

    /// Fire on the nth match only (1-based).
    pub fn nth(mut self, n: usize) -> Rule {
        self.when = When::Nth(n);
        self
    }

    /// Fire on the first n matches.
    pub fn first(mut self, n: usize) -> Rule {
        self.when = When::FirstN(n);
        self
    }

    /// Fire on every match (the default).
    pub fn every(mut self) -> Rule {
        self.when = When::Every;
        self
    }

    /// Fire on every k-th match.
    pub fn every_kth(mut self, k: usize) -> Rule {
        self.when = When::EveryKth(k);
        self
    }

    /// Answer with `reply` instead of forwarding.
    pub fn respond(self, reply: Reply) -> Rule {
        self.action(Action::Respond(reply))
    }

    /// Cut the response body after `bytes` and abort the connection.
    pub fn cut_after(self, bytes: u64) -> Rule {
        self.action(Action::CutAfter(bytes))
    }

    /// Flip the response body byte at `offset`.
    pub fn flip_byte(self, offset: u64) -> Rule {
        self.action(Action::FlipByte(offset))
    }

    /// Send the response body `chunk` bytes at a time, one piece every `every`.
    pub fn trickle(self, every: Duration, chunk: usize) -> Rule {
        self.action(Action::Trickle { every, chunk })
    }

    /// Forward the request, then close the connection without an answer.
    pub fn drop_response(self) -> Rule {
        self.action(Action::DropResponse)
    }

    /// Point `Location` at `base` (`http://host:port`).
    pub fn location_to(self, base: &str) -> Rule {
        self.action(Action::LocationTo(base.to_owned()))
    }

    /// Serve the referrers API from the upstream's fallback tags (see [`Action::ReferrersApi`]).
    pub fn referrers_api(self) -> Rule {
        self.action(Action::ReferrersApi)
    }

    /// Answer manifest PUTs with `OCI-Subject` (see [`Action::OciSubject`]).
    pub fn oci_subject(self) -> Rule {
        self.action(Action::OciSubject)
    }

    /// Replace the `WWW-Authenticate` realm with `realm`.
    pub fn realm_to(self, realm: &str) -> Rule {
        self.action(Action::RealmTo(realm.to_owned()))
    }

    /// Read the request, then never answer.
    pub fn hang(self) -> Rule {
        self.action(Action::Hang)
    }

    /// Answer 206 with the body from `offset` on.
    pub fn partial_from(self, offset: u64) -> Rule {
        self.action(Action::PartialFrom(offset))
    }

    /// Add `headers` to the forwarded answer.
    pub fn add_headers(self, headers: &[(&str, &str)]) -> Rule {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.action(Action::AddHeaders(headers))
    }

    /// Sets the action.
    pub fn action(mut self, action: Action) -> Rule {
        self.action = action;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path.is_match(path)
    }
}

struct RuleState {
    rule: Rule,
    matched: AtomicUsize,
    fired: AtomicUsize,
}

/// Counters of one added rule.
#[derive(Clone)]
pub struct RuleHandle(Arc<RuleState>);

impl RuleHandle {
    /// Requests that matched the rule's method and path.
    pub fn matched(&self) -> usize {
        self.0.matched.load(Ordering::SeqCst)
    }

    /// Requests the rule acted on.
    pub fn fired(&self) -> usize {
        self.0.fired.load(Ordering::SeqCst)
    }
}

struct Shared {
    /// `127.0.0.1:PORT` of the upstream registry.
    upstream: String,
    /// `127.0.0.1:PORT` of the proxy itself.
    own: String,
    client: Client<HttpConnector, ProxyBody>,
    rules: Mutex<Vec<Arc<RuleState>>>,
    records: Mutex<Vec<Arc<Record>>>,
}

/// The running proxy; stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 in front of `upstream` (`host:port`, plain HTTP).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            own: addr.to_string(),
            client,
            rules: Mutex::default(),
            records: Mutex::default(),
        });
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // A dropped or cut answer ends the connection with an error: expected.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// `127.0.0.1:PORT`, the registry part of references that go through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule (after the existing ones) and returns its counters.
    pub fn add(&self, rule: Rule) -> RuleHandle {
        let state = Arc::new(RuleState {
            rule,
            matched: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
        });
        self.shared.rules.lock().unwrap().push(state.clone());
        RuleHandle(state)
    }

    /// Removes every rule: from now on requests pass unchanged.
    pub fn clear_rules(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        let records = self.shared.records.lock().unwrap();
        records.iter().map(|r| r.snapshot()).collect()
    }

    /// The requests that are `method` on a path matching `path_regex`.
    pub fn requests_to(&self, method: &str, path_regex: &str) -> Vec<Seen> {
        let re = Regex::new(path_regex).expect("regex");
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && re.is_match(&s.path))
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.shared.records.lock().unwrap().clear();
    }

    /// One line per request, for failure messages.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|s| {
                format!(
                    "{} {} -> {} (req {} B, resp {} B){}\n",
                    s.method,
                    s.path,
                    s.status.map_or("no answer".to_owned(), |c| c.to_string()),
                    s.request_bytes,
                    s.response_bytes,
                    s.rule
                        .as_ref()
                        .map(|r| format!(" [rule {r}]"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Finds the rule that fires on this request, counting matches on every rule.
fn pick_rule(shared: &Shared, method: &Method, path: &str) -> Option<Rule> {
    let rules = shared.rules.lock().unwrap();
    let mut chosen = None;
    for state in rules.iter() {
        if !state.rule.matches(method, path) {
            continue;
        }
        let count = state.matched.fetch_add(1, Ordering::SeqCst) + 1;
        if chosen.is_none() && state.rule.when.fires(count) {
            state.fired.fetch_add(1, Ordering::SeqCst);
            chosen = Some(state.rule.clone());
        }
    }
    chosen
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let record = Arc::new(Record::new(&req));
    shared.records.lock().unwrap().push(record.clone());
    let rule = pick_rule(&shared, req.method(), &record.path);
    if let Some(rule) = &rule {
        *record.rule.lock().unwrap() = Some(rule.label.clone());
    }
    let action = rule.map(|r| r.action);
    if let Some(Action::Hang) = action {
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                record
                    .request_bytes
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        // Silent until the client gives up (its connection closes and this is dropped).
        return std::future::pending().await;
    }
    if let Some(Action::Respond(reply)) = action {
        // Read the whole request first, as a registry does before it answers.
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                record
                    .request_bytes
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        *record.status.lock().unwrap() = Some(reply.status);
        return Ok(canned(reply, &record));
    }

    if let Some(Action::ReferrersApi) = action {
        return Ok(referrers_api(&shared, req, &record).await);
    }
    let mut subject = None;
    let req = if let Some(Action::OciSubject) = action {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await?.to_bytes();
        record
            .request_bytes
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        subject = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|m| m["subject"]["digest"].as_str().map(str::to_owned));
        forward_bytes(&shared, parts, bytes).await
    } else {
        forward(&shared, req, &record).await
    };
    let upstream = match req {
        Ok(resp) => resp,
        Err(e) => {
            let msg = format!("fault proxy: upstream {} failed: {e}", shared.upstream);
            *record.status.lock().unwrap() = Some(502);
            let reply = Reply::status(502).body(msg);
            return Ok(canned(reply, &record));
        }
    };
    let (mut parts, body) = upstream.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let upstream_base = format!("http://{}", shared.upstream);
    if let Some(old) = location(&parts.headers) {
        if let Some(rest) = old.strip_prefix(&upstream_base) {
            let own = format!("http://{}{rest}", shared.own);
            set_location(&mut parts.headers, &own);
        }
    }
    let mut stream: ByteStream =
        Box::pin(body.into_data_stream().map(|r| r.map_err(BoxError::from)));
    match action {
        None | Some(Action::Forward) | Some(Action::Respond(_)) | Some(Action::Hang) => {}
        Some(Action::PartialFrom(offset)) => {
            let total: u64 = parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            parts.status = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {offset}-{}/{total}", total.saturating_sub(1));
            parts
                .headers
                .insert("content-range", HeaderValue::from_str(&range)?);
            parts.headers.insert(
                "content-length",
                HeaderValue::from(total.saturating_sub(offset)),
            );
            stream = skip(stream, offset);
        }
        Some(Action::CutAfter(n)) => stream = cut_after(stream, n),
        Some(Action::FlipByte(offset)) => stream = flip_byte(stream, offset),
        Some(Action::Trickle { every, chunk }) => stream = trickle(stream, every, chunk),
        Some(Action::DropResponse) => {
            // Let the registry finish (it already did its work), then say nothing.
            while let Some(chunk) = stream.next().await {
                chunk?;
            }
            return Err("fault proxy: response dropped by rule".into());
        }
        Some(Action::LocationTo(base)) => {
            if let Some(old) = location(&parts.headers) {
                // Keep path and query; swap whatever scheme and host it had for `base`.
                let rest = match old.find("://") {
                    Some(i) => old[i + 3..].find('/').map_or("/", |j| &old[i + 3 + j..]),
                    None => old.as_str(),
                };
                let new = format!("{base}{rest}");
                set_location(&mut parts.headers, &new);
            }
        }
        Some(Action::RealmTo(realm)) => rewrite_realm(&mut parts.headers, &realm),
        Some(Action::AddHeaders(headers)) => {
            for (name, value) in headers {
                parts.headers.insert(
                    hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                    HeaderValue::from_str(&value).expect("header value"),
                );
            }
        }
        Some(Action::ReferrersApi) => {}
        Some(Action::OciSubject) => {
            if let (Some(subject), true) = (subject, parts.status.is_success()) {
                parts.headers.insert(
                    "oci-subject",
                    HeaderValue::from_str(&subject).expect("OCI-Subject"),
                );
            }
        }
    }
    *record.status.lock().unwrap() = Some(parts.status.as_u16());
    Ok(Response::from_parts(parts, counted(stream, &record)))
}

/// Sends the request upstream, streaming its body and counting it.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    record: &Arc<Record>,
) -> Result<Response<Incoming>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("http://{}{path}", shared.upstream).parse()?;
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(HOST, HeaderValue::from_str(&shared.upstream)?);
    let counter = record.clone();
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter
                    .request_bytes
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            frame
        })
        .map_err(BoxError::from)
        .boxed_unsync();
    Ok(shared
        .client
        .request(Request::from_parts(parts, body))
        .await?)
}

/// Sends a request whose body was already read upstream.
async fn forward_bytes(
    shared: &Shared,
    mut parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Incoming>, BoxError> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("http://{}{path}", shared.upstream).parse()?;
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(HOST, HeaderValue::from_str(&shared.upstream)?);
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(shared
        .client
        .request(Request::from_parts(parts, body))
        .await?)
}

/// Answers `GET /v2/<name>/referrers/<digest>` from the upstream's `sha256-<hex>` tag.
async fn referrers_api(
    shared: &Shared,
    req: Request<Incoming>,
    record: &Arc<Record>,
) -> Response<ProxyBody> {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let re = Regex::new(r"^/v2/(.+)/referrers/([a-z0-9]+):([0-9a-f]+)").expect("regex");
    let Some(caps) = re.captures(&record.path) else {
        *record.status.lock().unwrap() = Some(400);
        return canned(
            Reply::json_error(400, "DIGEST_INVALID", "bad digest"),
            record,
        );
    };
    let url = format!(
        "http://{}/v2/{}/manifests/{}-{}",
        shared.upstream, &caps[1], &caps[2], &caps[3]
    );
    let mut upstream = Request::get(url).header(hyper::header::ACCEPT, INDEX);
    if let Some(auth) = req.headers().get(hyper::header::AUTHORIZATION) {
        upstream = upstream.header(hyper::header::AUTHORIZATION, auth.clone());
    }
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let answer = match shared.client.request(upstream.body(empty).unwrap()).await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            match (status, body) {
                (StatusCode::OK, Ok(body)) => Reply::status(200).body(body),
                (StatusCode::NOT_FOUND, _) => Reply::status(200).body(format!(
                    r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[]}}"#
                )),
                (status, _) => Reply::status(status.as_u16()),
            }
        }
        Err(e) => Reply::status(502).body(format!("fault proxy: {e}")),
    }
    .header("content-type", INDEX);
    *record.status.lock().unwrap() = Some(answer.status);
    canned(answer, record)
}

/// The response for a canned reply.
fn canned(reply: Reply, record: &Arc<Record>) -> Response<ProxyBody> {
    let mut builder =
        Response::builder().status(StatusCode::from_u16(reply.status).expect("status"));
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let stream: ByteStream = match reply.body {
        ReplyBody::Bytes(bytes) => {
            builder = builder.header("content-length", bytes.len());
            Box::pin(futures_util::stream::iter(
                (!bytes.is_empty()).then_some(Ok(bytes)),
            ))
        }
        ReplyBody::Filler {
            len,
            content_length,
        } => {
            if content_length {
                builder = builder.header("content-length", len);
            }
            filler(len)
        }
    };
    builder
        .body(counted(stream, record))
        .expect("canned response")
}

/// `len` bytes of a fixed printable pattern in 64 KiB pieces.
fn filler(len: u64) -> ByteStream {
    const PIECE: u64 = 64 << 10;
    let piece = Bytes::from(vec![b'x'; PIECE as usize]);
    Box::pin(futures_util::stream::unfold(0u64, move |sent| {
        let piece = piece.clone();
        async move {
            (sent < len).then(|| {
                let n = PIECE.min(len - sent);
                (Ok(piece.slice(..n as usize)), sent + n)
            })
        }
    }))
}

/// A response body that counts what the client's connection took.
fn counted(stream: ByteStream, record: &Arc<Record>) -> ProxyBody {
    let counter = record.clone();
    let frames = stream.map(move |chunk| {
        chunk.map(|data| {
            counter
                .response_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            Frame::data(data)
        })
    });
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

fn cut_after(stream: ByteStream, limit: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (stream, 0u64, false),
        move |(mut stream, sent, done)| async move {
            if done {
                return None;
            }
            if sent >= limit {
                let err: BoxError = format!("fault proxy: body cut after {limit} bytes").into();
                return Some((Err(err), (stream, sent, true)));
            }
            match stream.next().await {
                None => None,
                Some(Err(e)) => Some((Err(e), (stream, sent, true))),
                Some(Ok(chunk)) => {
                    let room = (limit - sent) as usize;
                    let chunk = if chunk.len() > room {
                        chunk.slice(..room)
                    } else {
                        chunk
                    };
                    let n = chunk.len() as u64;
                    Some((Ok(chunk), (stream, sent + n, false)))
                }
            }
        },
    ))
}

/// Drops the first `n` bytes of a body.
fn skip(stream: ByteStream, n: u64) -> ByteStream {
    let mut seen = 0u64;
    Box::pin(stream.filter_map(move |chunk| {
        let out = match chunk {
            Err(e) => Some(Err(e)),
            Ok(chunk) => {
                let start = seen;
                seen += chunk.len() as u64;
                if seen <= n {
                    None
                } else {
                    let from = n.saturating_sub(start) as usize;
                    Some(Ok(chunk.slice(from..)))
                }
            }
        };
        std::future::ready(out)
    }))
}

fn flip_byte(stream: ByteStream, offset: u64) -> ByteStream {
    let mut seen = 0u64;
    Box::pin(stream.map(move |chunk| {
        chunk.map(|chunk| {
            let start = seen;
            seen += chunk.len() as u64;
            if (start..seen).contains(&offset) {
                let mut owned = chunk.to_vec();
                owned[(offset - start) as usize] ^= 0xff;
                Bytes::from(owned)
            } else {
                chunk
            }
        })
    }))
}

fn trickle(stream: ByteStream, every: Duration, chunk: usize) -> ByteStream {
    let chunk = chunk.max(1);
    Box::pin(futures_util::stream::unfold(
        (stream, Bytes::new()),
        move |(mut stream, mut pending)| async move {
            if pending.is_empty() {
                match stream.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (stream, Bytes::new()))),
                    Some(Ok(more)) => pending = more,
                }
            }
            tokio::time::sleep(every).await;
            let piece = pending.split_to(chunk.min(pending.len()));
            Some((Ok(piece), (stream, pending)))
        },
    ))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn location(headers: &HeaderMap) -> Option<String> {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn set_location(headers: &mut HeaderMap, value: &str) {
    headers.insert(LOCATION, HeaderValue::from_str(value).expect("Location"));
}

/// Replaces `realm="..."` in `WWW-Authenticate`.
fn rewrite_realm(headers: &mut HeaderMap, realm: &str) {
    let Some(value) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let re = Regex::new(r#"realm="[^"]*""#).expect("regex");
    let replaced = re
        .replace(value, format!("realm=\"{realm}\"").as_str())
        .into_owned();
    headers.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&replaced).expect("WWW-Authenticate"),
    );
}

/// A listener that records every request it receives (and reads its body) and answers
/// 404: the place SSRF and credential-leak tests point the engine at.
pub struct Canary {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<Arc<Record>>>>,
    accept: JoinHandle<()>,
}

impl Canary {
    /// A canary on 127.0.0.1:0.
    pub async fn start() -> Canary {
        Self::start_on("127.0.0.1").await
    }

    /// A canary on `ip`:0 (e.g. `127.0.0.2`, another loopback address).
    pub async fn start_on(ip: &str) -> Canary {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind canary");
        let addr = listener.local_addr().expect("canary address");
        let records: Arc<Mutex<Vec<Arc<Record>>>> = Arc::default();
        let accept = {
            let records = records.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let records = records.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let records = records.clone();
                            async move {
                                let record = Arc::new(Record::new(&req));
                                records.lock().unwrap().push(record.clone());
                                let mut body = req.into_body();
                                while let Some(Ok(frame)) = body.frame().await {
                                    if let Some(data) = frame.data_ref() {
                                        record
                                            .request_bytes
                                            .fetch_add(data.len() as u64, Ordering::SeqCst);
                                    }
                                }
                                *record.status.lock().unwrap() = Some(404);
                                let empty: ByteStream = Box::pin(futures_util::stream::empty());
                                let mut resp = Response::new(counted(empty, &record));
                                *resp.status_mut() = StatusCode::NOT_FOUND;
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Canary {
            addr,
            records,
            accept,
        }
    }

    /// `IP:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        let records = self.records.lock().unwrap();
        records.iter().map(|r| r.snapshot()).collect()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
