//! Fixtures: a server on ephemeral ports, a raw HTTP/1.1 client (raw so
//! tests can also send what no well-behaved client would), temp repos.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cascade::config::Config;
use cascade::state::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A test that cannot run here (a tool or a privilege is missing) says so
/// where the summary of `scripts/test.sh` shows it (a line in
/// `<CARGO_TARGET_TMPDIR>/skipped.txt`, printed and counted as SKIPPED)
/// instead of passing silently; under `CI=true`, where everything must
/// run, it fails instead.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: {test} cannot run here ({why}), and CI must run every test"
    );
    eprintln!("SKIPPED: {test}: {why}");
    use std::io::Write;
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shipped_models() -> PathBuf {
    project_root().join("models")
}

/// Names of the shipped models (folders of `models/` with a config.toml).
pub fn shipped_model_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(shipped_models())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no shipped models found");
    names
}

/// A state folder of its own for one server (event log and lock), under
/// cargo's scratch folder for integration tests.
pub fn fresh_state_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "state-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn config_for(repo: &Path) -> Config {
    let mut config = Config::default();
    config.state.dir = fresh_state_dir();
    config.models.repository = repo.to_path_buf();
    config.ranking.catalog = shipped_models().join("catalog");
    config.server.shutdown_grace_ms = 5_000;
    // Tests that stop a server do not wait out a balancer's drain window
    // (the drain test sets its own).
    config.server.drain_delay_ms = 0;
    config
}

pub struct TestServer {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(mut config: Config) -> TestServer {
        // Every server its own event log (several may share one config).
        config.state.dir = fresh_state_dir();
        let state = Arc::new(AppState::load(config).expect("models load"));
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(cascade::server::run(public, admin, state.clone(), async {
            let _ = rx.await;
            cascade::server::Stop::Terminate
        }));
        TestServer {
            public: public_addr,
            admin: admin_addr,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn shipped() -> TestServer {
        TestServer::start(config_for(&shipped_models())).await
    }

    /// Starts the graceful shutdown and returns a handle that resolves when
    /// the server has drained.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap()
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(self.public, "GET", path, &[], b"").await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        post_json_to(self.public, path, body).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One request on a fresh connection (`Connection: close`), with a time
/// bound so a hung server fails the test instead of hanging it.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw).await
}

/// `POST path` of `body` as JSON to `addr`, on a fresh connection.
pub async fn post_json_to(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    send(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &bytes,
    )
    .await
}

/// An interactions file as `cascade features --events` and `cascade eval
/// --events` read it: one (user, item, value, epoch ms) per row, the
/// schema's only kind.
pub fn write_interactions(path: &Path, log: &[(&str, &str, f32, f64)]) {
    use cascade::data::parquet::{write, Out};
    write(
        path,
        vec![
            (
                "user_id",
                Out::Strings(log.iter().map(|e| e.0.into()).collect()),
            ),
            (
                "item_id",
                Out::Strings(log.iter().map(|e| e.1.into()).collect()),
            ),
            ("value", Out::F32(log.iter().map(|e| e.2).collect())),
            (
                "timestamp",
                Out::OptF64(log.iter().map(|e| Some(e.3)).collect()),
            ),
        ],
    )
    .unwrap();
}

/// The item ids of a ranking answer, in order.
pub fn item_ids(v: &serde_json::Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect()
}

/// The Prometheus text `GET /metrics` returns on the admin listener `admin`.
pub async fn metrics_text(admin: SocketAddr) -> String {
    String::from_utf8(send(admin, "GET", "/metrics", &[], b"").await.body).unwrap()
}

pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Resp {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A server may answer (413, say) and close before the whole body is
        // sent: a failed write is fine as long as an answer comes back.
        let _ = stream.write_all(raw).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if !buf.is_empty() => {
                    eprintln!("read ended with {e} after a response");
                    break;
                }
                Err(e) => panic!("no response: {e}"),
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("server answered within 30 s");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = buf[split + 4..].to_vec();
    let resp = Resp {
        status,
        headers,
        body,
    };
    if let Some(len) = resp.header("content-length") {
        assert_eq!(
            len.parse::<usize>().unwrap(),
            resp.body.len(),
            "content-length matches body"
        );
    }
    resp
}

/// A copy of the shipped repository in a temp dir, to break on purpose.
pub fn temp_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_models(), dir.path(), &["train", "catalog"]);
    dir
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let target = to.join(&name);
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target, &[]);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The golden set of `models/<name>/1/golden.json`.
pub fn golden(name: &str) -> cascade::model::golden::GoldenSet {
    let path = shipped_models().join(name).join("1").join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap();
    cascade::model::golden::GoldenSet::parse(&text, "golden").unwrap()
}

/// The first `n` user ids of the shipped user table (ids not in it are
/// cold-start users).
pub fn known_users(n: usize) -> Vec<String> {
    let catalog = cascade::catalog::Catalog::load(&shipped_models().join("catalog")).unwrap();
    catalog
        .users
        .base_ids()
        .iter()
        .take(n)
        .map(str::to_string)
        .collect()
}

/// A new model in `repo` with the ranker's config and the fixture `onnx`
/// (`tests/fixtures/<onnx>.onnx`) as version 1, with the fixture's golden
/// set (a version without one never serves).
pub fn add_ranker_like(repo: &Path, name: &str, fixture: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(repo.join("ranker/config.toml"), dir.join("config.toml")).unwrap();
    install_fixture(&dir.join("1"), fixture, fixture);
}

/// Copies `tests/fixtures/<onnx>.onnx` and `<golden>.golden.json` into the
/// version folder `version_dir` as its model and golden set.
pub fn install_fixture(version_dir: &Path, onnx: &str, golden: &str) {
    let fixtures = project_root().join("tests/fixtures");
    std::fs::copy(
        fixtures.join(format!("{onnx}.onnx")),
        version_dir.join("model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join(format!("{golden}.golden.json")),
        version_dir.join("golden.json"),
    )
    .unwrap();
}

/// Reads one HTTP/1.1 response (headers and a `Content-Length` body) from
/// a keep-alive connection, leaving the connection open.
pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(parse_response(&buf[..head_end + len]))
}

/// One call on the admin listener, with a JSON body when given.
pub async fn admin(
    s: &TestServer,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Resp {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    send(s.admin, method, path, headers, &bytes).await
}

/// Publishes a copy of version `from` as `to` the way operators should:
/// written under a name that is not a version, then renamed in one step,
/// so a rescan never sees half a version.
pub fn copy_version(model_dir: &Path, from: u64, to: u64) {
    let src = model_dir.join(from.to_string());
    let staging = model_dir.join(format!(".staging-{to}"));
    std::fs::create_dir_all(&staging).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), staging.join(entry.file_name())).unwrap();
    }
    std::fs::rename(staging, model_dir.join(to.to_string())).unwrap();
}

/// Waits (up to 5 s) until every admission permit is taken: the request
/// meant to hold them has been read, parsed and admitted.
pub async fn wait_until_admission_is_full(s: &TestServer) {
    for _ in 0..1000 {
        if s.state.admission.available_permits() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
