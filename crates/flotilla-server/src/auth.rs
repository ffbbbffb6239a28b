//! Bearer tokens with roles: who may call which client or worker method.
//!
//! A replica started with `--tokens-file FILE` answers a call on the `Flotilla` or `Workers`
//! service only when it carries `authorization: Bearer <token>` for a token of the file whose
//! role allows the method; otherwise `UNAUTHENTICATED` (no token, or one the file does not
//! hold) or `PERMISSION_DENIED` (the role does not allow it). Without a tokens file every call
//! is allowed. Raft traffic between replicas is not a client call: the same layer checks it
//! against the cluster secret instead (see `peer_auth`).
//!
//! The file holds one token per line, hashed (SHA-256), never the token itself:
//!
//! ```text
//!  # name   role     hash                      [queues=q1,q2]
//!  ci       submit   sha256:9f86d08188…        queues=builds,tests
//!  ops      admin    sha256:60303ae22b…
//! ```
//!
//! Roles: `read` (get, wait, list, status, workers, queues), `submit` (read, and submit and
//! cancel — limited to the listed queues when a line has `queues=`), `worker` (the `Workers`
//! service, and status to find the leader), `admin` (everything: queue settings, snapshots,
//! membership). `flotilla token new` makes a token and appends its line.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};

use crate::peer_auth::{PeerSecret, HEADER};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Submit,
    Worker,
    Admin,
}

impl Role {
    pub const NAMES: &'static str = "read, submit, worker, admin";

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (roles: {})", Role::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may call `method` of `service` (the two parts of a gRPC path).
    pub fn allows(self, service: &str, method: &str) -> bool {
        const READ: &[&str] = &[
            "GetTask",
            "WaitTask",
            "ListTasks",
            "ClusterStatus",
            "ListWorkers",
            "ListQueues",
            "GetWorkflow",
            "ListSchedules",
        ];
        const SUBMIT: &[&str] = &[
            "SubmitTasks",
            "SubmitStream",
            "CancelTask",
            "SubmitWorkflow",
            "CancelWorkflow",
            "AddSchedule",
            "PauseSchedule",
            "DeleteSchedule",
        ];
        // Admin only, besides everything else: a backup holds every task's payload and result
        // of every queue, so no narrower role may take one.
        const ADMIN: &[&str] = &["ExportSnapshot"];
        match (self, service) {
            (Role::Admin, _) => true,
            (_, FLOTILLA) if ADMIN.contains(&method) => false,
            (Role::Read, FLOTILLA) => READ.contains(&method),
            (Role::Submit, FLOTILLA) => READ.contains(&method) || SUBMIT.contains(&method),
            (Role::Worker, WORKERS) => true,
            (Role::Worker, FLOTILLA) => method == "ClusterStatus",
            _ => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const FLOTILLA: &str = "flotilla.v1.Flotilla";
const WORKERS: &str = "flotilla.v1.Workers";

/// Who made a call: the token's line. Handlers find it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The queues a `submit` token may submit to and cancel in; `None`: any.
    pub queues: Option<Vec<String>>,
}

impl Principal {
    /// Why this caller may not submit to or cancel in `queue`, if it may not.
    pub fn refuses_queue(&self, queue: &str) -> Option<String> {
        let allowed = self.queues.as_ref()?;
        (!allowed.iter().any(|q| q == queue)).then(|| {
            format!(
                "token {:?} may use only queues {}; not {queue:?}",
                self.name,
                allowed.join(",")
            )
        })
    }
}

/// The tokens a replica accepts, by hash.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

/// The SHA-256 of a token, as the tokens file writes it.
pub fn hash_line(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads a tokens file; every bad line is an error naming the file and the line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !(3..=4).contains(&fields.len()) {
                return Err(at("want `NAME ROLE sha256:HEX [queues=Q1,Q2]`".to_string()));
            }
            let role = Role::parse(fields[1]).map_err(at)?;
            let hash = parse_hash(fields[2])
                .ok_or_else(|| at(format!("{:?} is not sha256: and 64 hex digits", fields[2])))?;
            let queues = match fields.get(3) {
                None => None,
                Some(f) => {
                    let list = f
                        .strip_prefix("queues=")
                        .ok_or_else(|| at(format!("{f:?}: the fourth field is queues=Q1,Q2")))?;
                    let qs: Vec<String> = list
                        .split(',')
                        .filter(|q| !q.is_empty())
                        .map(String::from)
                        .collect();
                    if qs.is_empty() {
                        return Err(at("queues= names no queue".to_string()));
                    }
                    if role != Role::Submit {
                        return Err(at(format!(
                            "queues= limits submit tokens; this one is {role}"
                        )));
                    }
                    Some(qs)
                }
            };
            let principal = Principal {
                name: fields[0].to_string(),
                role,
                queues,
            };
            if tokens.by_hash.insert(hash, principal).is_some() {
                return Err(at("the same token is listed twice".to_string()));
            }
        }
        if tokens.by_hash.is_empty() {
            return Err("no tokens (every call would be refused)".to_string());
        }
        Ok(tokens)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Who may make a call to `path` (`/package.Service/Method`) with these `authorization`
    /// header contents, or the status refusing it.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Principal, tonic::Status> {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let Some(header) = authorization else {
            return Err(tonic::Status::unauthenticated(
                "no token: send `authorization: Bearer TOKEN` (flotilla --token-file FILE, or FLOTILLA_TOKEN)",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or_else(|| tonic::Status::unauthenticated("authorization is not `Bearer TOKEN`"))?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let principal = self
            .by_hash
            .get(&hash)
            .ok_or_else(|| tonic::Status::unauthenticated("unknown token"))?;
        if !principal.role.allows(service, method) {
            return Err(tonic::Status::permission_denied(format!(
                "token {:?} has role {}, which may not call {method}",
                principal.name, principal.role
            )));
        }
        Ok(principal.clone())
    }
}

/// The tokens file a replica was started with. SIGHUP re-reads it: a file that parses replaces
/// the tokens at once (calls in flight keep the ones they were checked with); a broken one is
/// reported in the log and the tokens in force stay.
#[derive(Debug)]
pub struct TokensFile {
    path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<Tokens>>,
}

impl TokensFile {
    pub fn load(path: &Path) -> Result<Arc<TokensFile>, String> {
        Ok(Arc::new(TokensFile {
            path: path.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(Tokens::load(path)?)),
        }))
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file; returns how many tokens are now in force, or why the old ones stay.
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = Tokens::load(&self.path)?;
        let n = tokens.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(n)
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn reload_on_hangup(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        crate::hangup::reload_on_hangup("tokens file", shutdown, move || {
            self.reload()
                .map(|n| format!("{n} tokens from {}", self.path.display()))
        })
        .await
    }
}

/// Whether `listen` (HOST:PORT) is reachable only from this machine.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A new random token: `flt_` and 64 hex digits (256 bits from the OS).
pub fn new_token() -> String {
    format!("flt_{}", crate::peer_auth::random_hex())
}

/// The tokens file line for `token`.
pub fn token_line(
    name: &str,
    role: Role,
    token: &str,
    queues: &[String],
) -> Result<String, String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!(
            "token name {name:?}: want a word without spaces or #"
        ));
    }
    if !queues.is_empty() && role != Role::Submit {
        return Err(format!("--queues limits submit tokens; this one is {role}"));
    }
    let mut line = format!("{name} {role} {}", hash_line(token));
    if !queues.is_empty() {
        line.push_str(&format!(" queues={}", queues.join(",")));
    }
    Ok(line)
}

const RAFT: &str = "flotilla.raft.v1.Raft";

/// A tower layer that checks every client and worker call against [`Tokens`] and every peer
/// call against the [`PeerSecret`], answering refused calls itself and handing the
/// [`Principal`] of allowed client calls to the handlers.
#[derive(Clone)]
pub struct Authenticate {
    pub tokens: Option<Arc<TokensFile>>,
    pub peers: Option<Arc<PeerSecret>>,
    /// TLS is on: a peer call must come over a connection with a replica's certificate.
    pub mutual_tls: bool,
}

impl<S> tower_layer::Layer<S> for Authenticate {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            tokens: self.tokens.clone(),
            peers: self.peers.clone(),
            mutual_tls: self.mutual_tls,
        }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    tokens: Option<Arc<TokensFile>>,
    peers: Option<Arc<PeerSecret>>,
    mutual_tls: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(&format!("/{RAFT}/")) {
            let certified = !self.mutual_tls
                || request
                    .extensions()
                    .get::<crate::listener::ConnInfo>()
                    .is_some_and(|c| c.peer);
            if !certified {
                let status = tonic::Status::unauthenticated(format!(
                    "peer call without a replica certificate (mutual TLS: a client certificate of the cluster CA naming {})",
                    flotilla_tls::PEER_NAME
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            let admitted = self.peers.as_ref().is_none_or(|secret| {
                secret.admits(request.headers().get(HEADER).map(|v| v.as_bytes()))
            });
            if !admitted {
                let status = tonic::Status::unauthenticated(
                    "peer call without this cluster's secret (--peer-secret-file)",
                );
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            return Box::pin(self.inner.call(request));
        }
        let Some(file) = &self.tokens else {
            return Box::pin(self.inner.call(request));
        };
        let tokens = file.current();
        let client_call =
            path.starts_with(&format!("/{FLOTILLA}/")) || path.starts_with(&format!("/{WORKERS}/"));
        if !client_call {
            return Box::pin(self.inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match tokens.check(path, authorization) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lines: &[(&str, Role, &str, &[&str])]) -> String {
        lines
            .iter()
            .map(|(name, role, token, queues)| {
                let qs: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
                token_line(name, *role, token, &qs).unwrap()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn roles_allow_what_the_docs_say() {
        let t = Tokens::parse(&file(&[
            ("r", Role::Read, "tr", &[]),
            ("s", Role::Submit, "ts", &["q1"]),
            ("w", Role::Worker, "tw", &[]),
            ("a", Role::Admin, "ta", &[]),
        ]))
        .unwrap();
        let call = |token: &str, path: &str| {
            t.check(path, Some(&format!("Bearer {token}")))
                .map(|p| p.name)
                .map_err(|s| s.code())
        };
        use tonic::Code::{PermissionDenied, Unauthenticated};
        let submit = "/flotilla.v1.Flotilla/SubmitTasks";
        let get = "/flotilla.v1.Flotilla/GetTask";
        let policy = "/flotilla.v1.Flotilla/SetQueuePolicy";
        let add = "/flotilla.v1.Flotilla/AddReplica";
        let complete = "/flotilla.v1.Workers/CompleteTask";
        assert_eq!(call("tr", get), Ok("r".into()));
        assert_eq!(call("tr", submit), Err(PermissionDenied));
        assert_eq!(call("tr", complete), Err(PermissionDenied));
        assert_eq!(call("ts", submit), Ok("s".into()));
        assert_eq!(
            call("ts", "/flotilla.v1.Flotilla/CancelTask"),
            Ok("s".into())
        );
        assert_eq!(call("ts", policy), Err(PermissionDenied));
        assert_eq!(call("ts", complete), Err(PermissionDenied));
        let workflow = "/flotilla.v1.Flotilla/SubmitWorkflow";
        let cancel_workflow = "/flotilla.v1.Flotilla/CancelWorkflow";
        let get_workflow = "/flotilla.v1.Flotilla/GetWorkflow";
        assert_eq!(call("ts", workflow), Ok("s".into()));
        assert_eq!(call("ts", cancel_workflow), Ok("s".into()));
        assert_eq!(call("tr", get_workflow), Ok("r".into()));
        assert_eq!(call("tr", workflow), Err(PermissionDenied));
        assert_eq!(call("tr", cancel_workflow), Err(PermissionDenied));
        assert_eq!(call("tw", get_workflow), Err(PermissionDenied));
        let add_schedule = "/flotilla.v1.Flotilla/AddSchedule";
        let list_schedules = "/flotilla.v1.Flotilla/ListSchedules";
        assert_eq!(call("ts", add_schedule), Ok("s".into()));
        assert_eq!(call("tr", list_schedules), Ok("r".into()));
        assert_eq!(call("tr", add_schedule), Err(PermissionDenied));
        assert_eq!(call("tw", list_schedules), Err(PermissionDenied));
        assert_eq!(call("tw", complete), Ok("w".into()));
        assert_eq!(
            call("tw", "/flotilla.v1.Flotilla/ClusterStatus"),
            Ok("w".into())
        );
        assert_eq!(call("tw", submit), Err(PermissionDenied));
        let export = "/flotilla.v1.Flotilla/ExportSnapshot";
        for path in [submit, get, policy, add, complete, export] {
            assert_eq!(call("ta", path), Ok("a".into()), "{path}");
        }
        for token in ["tr", "ts", "tw"] {
            assert_eq!(call(token, export), Err(PermissionDenied), "{token}");
        }
        assert_eq!(call("nope", get), Err(Unauthenticated));
        assert_eq!(t.check(get, None).unwrap_err().code(), Unauthenticated);
        assert_eq!(
            t.check(get, Some("tr")).unwrap_err().code(),
            Unauthenticated
        );
        let s = t.check(submit, Some("Bearer ts")).unwrap();
        assert_eq!(s.refuses_queue("q1"), None);
        assert!(s.refuses_queue("q2").unwrap().contains("\"q2\""));
        assert_eq!(
            t.check(get, Some("Bearer tr")).unwrap().refuses_queue("q2"),
            None
        );
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_line() {
        let good = token_line("a", Role::Admin, "t", &[]).unwrap();
        let cases = [
            (format!("# only a comment\n\n{good}\nb read"), "line 4"),
            ("x boss sha256:00".to_string(), "unknown role"),
            ("x read md5:00".to_string(), "is not sha256"),
            (format!("x read {} limit=q", hash_line("u")), "queues=Q1,Q2"),
            (
                format!("x read {} queues=q", hash_line("u")),
                "limits submit tokens",
            ),
            (format!("{good}\n{good}"), "listed twice"),
            ("# nothing".to_string(), "no tokens"),
        ];
        for (text, want) in cases {
            let err = Tokens::parse(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert_eq!(Tokens::parse(&good).unwrap().len(), 1);
    }

    #[test]
    fn loopback_addresses_are_told_apart() {
        for a in ["127.0.0.1:7000", "localhost:1", "[::1]:7000", "127.3.4.5:9"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:7000",
            "10.0.0.1:7000",
            "[::]:7000",
            "db.example:7000",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn tokens_are_random_and_stored_only_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("flt_") && a.len() == 68, "{a}");
        let line = token_line("ci", Role::Submit, &a, &["q".into()]).unwrap();
        assert!(!line.contains(&a[4..]), "the token is not in its line");
        assert!(line.starts_with("ci submit sha256:") && line.ends_with(" queues=q"));
        // Pinned: the hash is SHA-256 of the token's bytes.
        assert_eq!(
            hash_line("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(token_line("two words", Role::Read, &a, &[]).is_err());
        assert!(token_line("w", Role::Worker, &a, &["q".into()]).is_err());
    }
}
