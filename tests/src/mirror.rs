//! A package archive on loopback for hostile-input tests: real HTTP (axum on
//! `127.0.0.1:0`, the listener handed straight to the server) serving a
//! folder, with `Range` support, a request log, and per-path answers a test
//! can swap in: a status, other bytes, a body longer than announced, or a
//! connection cut after some bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// What the mirror answers for one path instead of the file.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Just this status, empty body.
    Status(u16),
    /// These bytes, with a matching `Content-Length`.
    Bytes(Vec<u8>),
    /// These bytes as a chunked stream: no `Content-Length` to check first.
    Chunked(Vec<u8>),
    /// The file's first `n` bytes, then the connection breaks; once (the
    /// next request for the path gets the file).
    CutAfter(usize),
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    answers: Mutex<HashMap<String, Answer>>,
    /// (path, Range header) of every request, in order.
    log: Mutex<Vec<(String, Option<String>)>>,
}

/// The server, stopped on drop.
#[derive(Debug)]
pub struct Mirror {
    pub url: String,
    shared: Arc<Shared>,
    _rt: tokio::runtime::Runtime,
}

impl Mirror {
    /// Serves `root` (its files by relative path) on an ephemeral port.
    pub fn serve(root: &Path) -> Mirror {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            answers: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new().fallback(answer).with_state(shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mirror { url: format!("http://{addr}"), shared, _rt: rt }
    }

    /// Answers `path` (relative, as in the URL after the root) with `a`.
    pub fn set(&self, path: &str, a: Answer) {
        self.shared.answers.lock().expect("answers").insert(path.trim_start_matches('/').to_owned(), a);
    }

    /// Every request so far: (path, `Range` header).
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.shared.log.lock().expect("log").clone()
    }
}

async fn answer(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = percent_decode(uri.path().trim_start_matches('/'));
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.log.lock().expect("log").push((path.clone(), range.clone()));
    let special = {
        let mut answers = s.answers.lock().expect("answers");
        match answers.get(&path) {
            Some(Answer::CutAfter(_)) => answers.remove(&path),
            other => other.cloned(),
        }
    };
    let file = || -> Option<Vec<u8>> {
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return None;
        }
        std::fs::read(s.root.join(&path)).ok()
    };
    match special {
        Some(Answer::Status(code)) => StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT).into_response(),
        Some(Answer::Bytes(b)) => b.into_response(),
        Some(Answer::Chunked(b)) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = b.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        }
        Some(Answer::CutAfter(n)) => {
            let Some(bytes) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let len = bytes.len();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                vec![Ok(bytes[..n.min(len)].to_vec()), Err(std::io::Error::other("cut by the test"))];
            Response::builder()
                .header(header::CONTENT_LENGTH, len)
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .expect("response")
        }
        None => {
            let Some(bytes) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')) {
                Some(from) => {
                    let from: usize = from.parse().unwrap_or(0);
                    if from >= bytes.len() {
                        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                    }
                    Response::builder()
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header(header::CONTENT_RANGE, format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()))
                        .body(Body::from(bytes[from..].to_vec()))
                        .expect("response")
                }
                None => bytes.into_response(),
            }
        }
    }
}

/// `%7E` → `~` and friends (package versions carry `~` and `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
