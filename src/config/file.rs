//! The proxy.yaml file format: serde types that mirror the file and nothing else.
//!
//! These types are the public interface users write; only `config::validate` reads them.
//! Every value that validation may blame is wrapped in `Spanned` so errors can name
//! `file:line:col`. Unknown keys are rejected (`deny_unknown_fields`) so a typo never
//! silently falls back to a default.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string value with its position (addresses, durations, names, paths).
pub type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Spanned<ListenFile>,
    #[serde(default)]
    pub tls: Option<Spanned<TlsFile>>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    #[serde(default)]
    pub access_log: Option<Spanned<bool>>,
    /// Worker threads of the proxy (default: one per CPU).
    #[serde(default)]
    pub threads: Option<Spanned<u64>>,
    pub routes: Spanned<Vec<Spanned<RouteFile>>>,
    #[serde(default)]
    pub acme: Option<AcmeFile>,
    pub backends: Spanned<IndexMap<String, Spanned<BackendFile>>>,
    /// May be left out when every backend discovers its servers.
    #[serde(default)]
    pub servers: Option<Spanned<IndexMap<String, Spanned<ServerFile>>>>,
    #[serde(default)]
    pub health: Option<Spanned<HealthFile>>,
    #[serde(default)]
    pub stats: Option<Spanned<StatsFile>>,
    #[serde(default)]
    pub sticky: Option<Spanned<StickyFile>>,
    /// Peers (other proxies, L4 balancers) that may name the client: by X-Forwarded-For,
    /// or by the PROXY protocol when `listen.proxy_protocol` is on.
    #[serde(default)]
    pub trusted_proxies: Option<Spanned<Vec<Str>>>,
    #[serde(default)]
    pub reload: Option<ReloadFile>,
    #[serde(default)]
    pub workers: Option<Spanned<WorkersFile>>,
    /// Switch to this user (and group) once the listeners are bound.
    #[serde(default)]
    pub run_as: Option<Spanned<RunAsFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    #[serde(default)]
    pub https: Option<Str>,
    #[serde(default)]
    pub http: Option<Str>,
    #[serde(default)]
    pub stats: Option<Str>,
    /// Answer plain-http requests with a 308 to https (default: true when https is set).
    #[serde(default)]
    pub redirect: Option<Spanned<bool>>,
    /// Port written into redirect URLs (default: the https listener's port).
    #[serde(default)]
    pub redirect_port: Option<Spanned<u16>>,
    /// Trusted peers send a PROXY protocol header first (https and http listeners).
    #[serde(default)]
    pub proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The single (or default) certificate chain and its key.
    #[serde(default)]
    pub cert: Option<Str>,
    #[serde(default)]
    pub key: Option<Str>,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Option<Spanned<Vec<Spanned<CertificateFile>>>>,
    /// Certificates obtained and renewed over ACME.
    #[serde(default)]
    pub acme: Option<Spanned<TlsAcmeFile>>,
    /// Offer HTTP/2 through ALPN (default false: WebSockets need HTTP/1.1 anyway).
    #[serde(default)]
    pub h2: Option<Spanned<bool>>,
    /// Poll the certificate files this often and reload them when they change.
    #[serde(default)]
    pub watch: Option<Str>,
    /// `Strict-Transport-Security` on https responses (off without it).
    #[serde(default)]
    pub hsts: Option<Spanned<HstsFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Str,
    pub key: Str,
    /// Names it serves (default: the certificate's DNS names); `*.example.com` matches one label.
    #[serde(default)]
    pub names: Option<Vec<Str>>,
    /// Served to clients without SNI or with a name no certificate has.
    #[serde(default)]
    pub default: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsAcmeFile {
    pub domains: Spanned<Vec<Str>>,
    #[serde(default)]
    pub email: Option<Str>,
    /// The ACME server's directory URL.
    pub directory: Str,
    /// PEM root of a private ACME server (default: the system's roots).
    #[serde(default)]
    pub ca: Option<Str>,
    /// Directory for the account and the certificates.
    pub storage: Str,
    /// `http-01` (default when `listen.http` is set) or `tls-alpn-01`.
    #[serde(default)]
    pub challenge: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HstsFile {
    pub max_age: Str,
    #[serde(default)]
    pub include_subdomains: Option<Spanned<bool>>,
    #[serde(default)]
    pub preload: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAsFile {
    pub user: Str,
    /// Default: the user's primary group.
    #[serde(default)]
    pub group: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default)]
    pub connect: Option<Str>,
    #[serde(default)]
    pub client: Option<Str>,
    #[serde(default)]
    pub server: Option<Str>,
    #[serde(default)]
    pub tunnel: Option<Str>,
    #[serde(default)]
    pub keepalive: Option<Str>,
    #[serde(default)]
    pub queue: Option<Str>,
    #[serde(default)]
    pub header: Option<Str>,
    #[serde(default)]
    pub handshake: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default)]
    pub max_header_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub host: Option<Str>,
    #[serde(default)]
    pub path_prefix: Option<Str>,
    pub backend: Str,
    #[serde(default)]
    pub websocket: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// Backend that answers `/.well-known/acme-challenge/` on the http listener.
    pub backend: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    #[serde(default)]
    pub balance: Option<Str>,
    /// Names from `servers`; or `discover` instead.
    #[serde(default)]
    pub servers: Option<Spanned<Vec<Str>>>,
    /// The servers come from DNS (A/AAAA or SRV records), re-resolved while running.
    #[serde(default)]
    pub discover: Option<Spanned<DiscoverFile>>,
    /// Sticky cookie name (balance: sticky).
    #[serde(default)]
    pub cookie: Option<Str>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    /// Bounded-load factor for new sticky/source sessions (HAProxy hash-balance-factor / 100).
    #[serde(default)]
    pub hash_balance_factor: Option<Spanned<f64>>,
    /// Retries on another server when a connection fails (default 3).
    #[serde(default)]
    pub retries: Option<Spanned<u64>>,
    /// Requests that may wait for a slot when every server is at max_connections.
    #[serde(default)]
    pub max_queue: Option<Spanned<u64>>,
    /// Window over which a server back in service ramps to its full weight (`0s`: off).
    #[serde(default)]
    pub slow_start: Option<Str>,
    /// New Engine.IO sessions the backend admits: `burst` at once, then `per_second`.
    #[serde(default)]
    pub new_sessions: Option<Spanned<RateFile>>,
}

/// `backends.NAME.discover`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverFile {
    /// `NAME:PORT` for `type: a`; the SRV name alone for `type: srv`.
    pub dns: Str,
    /// `a` (A and AAAA records, the default) or `srv`.
    #[serde(default, rename = "type")]
    pub kind: Option<Str>,
    /// Longest time between two resolutions (a shorter TTL resolves sooner, not under 1s).
    #[serde(default)]
    pub interval: Option<Str>,
    /// Longest wait for one answer.
    #[serde(default)]
    pub timeout: Option<Str>,
    /// Most servers one answer may give the backend.
    #[serde(default)]
    pub max_servers: Option<Spanned<u64>>,
    /// Answers in a row that must agree before one removing more than half the servers applies.
    #[serde(default)]
    pub confirm_shrink: Option<Spanned<u64>>,
    /// Name servers (`IP` or `IP:PORT`) instead of /etc/resolv.conf's.
    #[serde(default)]
    pub resolvers: Option<Spanned<Vec<Str>>>,
    /// `max_connections` of every discovered server.
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub address: Str,
    #[serde(default)]
    pub weight: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
    /// This server's slow-start window (default: the longest of its backends').
    #[serde(default)]
    pub slow_start: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    #[serde(default)]
    pub path: Option<Str>,
    #[serde(default)]
    pub interval: Option<Str>,
    #[serde(default)]
    pub timeout: Option<Str>,
    #[serde(default)]
    pub rise: Option<Spanned<u64>>,
    #[serde(default)]
    pub fall: Option<Spanned<u64>>,
    /// Expected status range, e.g. "200-399".
    #[serde(default)]
    pub expect: Option<Str>,
    /// `http` (default) or `tcp`.
    #[serde(default)]
    pub mode: Option<Str>,
    /// Consecutive live-traffic failures that mark a server DOWN early (0 disables).
    #[serde(default)]
    pub passive_fall: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsFile {
    #[serde(default)]
    pub auth: Option<Spanned<AuthFile>>,
    /// Default auto-refresh of the HTML page in seconds (0: off).
    #[serde(default)]
    pub refresh: Option<Spanned<u64>>,
    /// More `Host` names the stats listener answers to (besides its address and loopback).
    #[serde(default)]
    pub hosts: Option<Spanned<Vec<Str>>>,
    /// The dashboard's charts: one point per `interval` over the last `span`.
    #[serde(default)]
    pub history: Option<Spanned<HistoryFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    #[serde(default)]
    pub interval: Option<Str>,
    #[serde(default)]
    pub span: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub user: Str,
    #[serde(default)]
    pub password_env: Option<Str>,
    #[serde(default)]
    pub password_file: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    /// Environment variable holding the key for cookie values.
    #[serde(default)]
    pub secret_env: Option<Str>,
    /// `Lax` (default), `Strict` or `None`.
    #[serde(default)]
    pub same_site: Option<Str>,
    /// Forget a Socket.IO session id not seen for this long.
    #[serde(default)]
    pub sid_ttl: Option<Str>,
    /// Most session ids remembered at once.
    #[serde(default)]
    pub max_sids: Option<Spanned<u64>>,
    /// Engine.IO handshakes per client address.
    #[serde(default)]
    pub handshake_rate: Option<Spanned<RateFile>>,
    /// A sid table shared by several edgepins through Redis.
    #[serde(default)]
    pub shared: Option<Spanned<SharedFile>>,
}

/// `sticky.shared`: exactly one of `redis` (no password in the YAML) or `redis_env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    /// `redis://host:port[/db]`, or `{ cluster: [URL, …] }`.
    #[serde(default)]
    pub redis: Option<Spanned<RedisFile>>,
    /// Environment variable holding the URL (it may hold a password), or comma-separated
    /// seed URLs of a Redis Cluster.
    #[serde(default)]
    pub redis_env: Option<Str>,
    /// Longest wait for a lookup (default 50ms).
    #[serde(default)]
    pub timeout: Option<Str>,
    /// Prefix of the Redis keys (default `edgepin:sid:`).
    #[serde(default)]
    pub key_prefix: Option<Str>,
}

/// A rate (per client, or per backend); `per_second: 0` turns the limit off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    #[serde(default)]
    pub per_second: Option<Spanned<u64>>,
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    /// How long a removed server keeps its open sessions after a reload.
    #[serde(default)]
    pub drain_timeout: Option<Str>,
    /// Pidfile written by `run` and read by `edgepin reload` and `edgepin upgrade`.
    #[serde(default)]
    pub pidfile: Option<Str>,
    /// After `edgepin upgrade`, how long the old process may drain before its remaining
    /// tunnels are closed.
    #[serde(default)]
    pub hard_stop_after: Option<Str>,
    /// The window over which those remaining tunnels are closed.
    #[serde(default)]
    pub close_spread: Option<Str>,
}

/// `workers.redis`: one Redis by name or URL, or a Redis Cluster by its seed nodes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RedisFile {
    /// `spawn` or `redis://host:port`.
    One(String),
    Cluster(RedisClusterFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisClusterFile {
    /// Seed nodes, `redis://host:port` each.
    pub cluster: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersFile {
    /// `spawn` (start redis-server), a `redis://` URL, or `{ cluster: [URL, …] }`.
    #[serde(default)]
    pub redis: Option<Spanned<RedisFile>>,
    /// Port of the redis-server `edgepin up` spawns (on 127.0.0.1).
    #[serde(default)]
    pub redis_port: Option<Spanned<u64>>,
}
