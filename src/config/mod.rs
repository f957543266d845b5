//! Configuration: proxy.yaml → checked [`Config`].
//!
//! The pipeline is parse (`file`, serde types with positions) → validate (`validate`,
//! every rule, every error with `file:line:col`) → a [`Config`] whose fields are already
//! checked: addresses are `SocketAddr`s, durations are `Duration`s, references resolve.
//! Nothing after this module sees YAML. This module must not start anything or hold
//! runtime state; `runtime` builds the running snapshot from a `Config`.

mod file;
mod validate;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use values::parse_duration;

/// Where a value came from in the file, for errors raised after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// One problem in a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.pos.line, self.pos.col, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", join_errors(.0))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// The individual errors (one for a read failure).
    pub fn errors(&self) -> Vec<String> {
        match self {
            LoadError::Read { .. } => vec![self.to_string()],
            LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

fn join_errors(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// A validated configuration. Every field is checked; see `validate` for the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (errors and `check --diff` name it).
    pub source: PathBuf,
    pub listen: Listen,
    pub tls: Option<Tls>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub access_log: bool,
    /// Proxy worker threads.
    pub threads: usize,
    pub routes: Vec<Route>,
    /// Backend (index into `backends`) for ACME http-01 challenges on the http listener.
    pub acme_backend: Option<usize>,
    pub backends: Vec<Backend>,
    pub servers: Vec<Server>,
    pub health: Health,
    pub stats: Stats,
    pub sticky: Sticky,
    /// Peers whose X-Forwarded-For (or PROXY header) names the client.
    pub trusted_proxies: Vec<Network>,
    pub reload: Reload,
    pub workers: Workers,
    /// Drop root for this user once the listeners are bound.
    pub run_as: Option<RunAs>,
}

impl Config {
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// How long server `i` ramps in backend `b`: its own `slow_start`, else the backend's.
    pub fn slow_start_in(&self, b: &Backend, i: usize) -> Duration {
        self.servers[i].slow_start.unwrap_or(b.slow_start)
    }

    /// How long a slow start of server `i` lasts at most: the longest of its windows in
    /// the backends that list it.
    pub fn slow_start_of(&self, i: usize) -> Duration {
        let listed = self.backends.iter().filter(|b| b.servers.contains(&i));
        let longest = listed.map(|b| self.slow_start_in(b, i)).max();
        longest.unwrap_or_else(|| self.servers[i].slow_start.unwrap_or_default())
    }

    /// The most servers this config can hold: the listed ones and every discovered
    /// backend's `max_servers` (for sizes fixed at start, such as the upstream pool).
    pub fn server_capacity(&self) -> usize {
        let listed = self.servers.iter().filter(|s| !s.discovered).count();
        let discovered: usize = self
            .backends
            .iter()
            .filter_map(|b| b.discover.as_ref())
            .map(|d| d.max_servers)
            .sum();
        listed + discovered
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub stats: Option<SocketAddr>,
    /// The http listener redirects to https (else it proxies like the https one).
    pub redirect: bool,
    /// Port written into redirect URLs.
    pub redirect_port: u16,
    /// Trusted peers must open with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// The https listener's TLS: certificates from files and/or ACME, and HTTP/2 and HSTS.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Certificate files: `tls.cert`/`tls.key` first (when set), then `tls.certificates`.
    pub certificates: Vec<CertFiles>,
    /// Index into `certificates` of the default certificate; `None` when there are no
    /// files (the ACME certificate is the default then).
    pub default: Option<usize>,
    pub acme: Option<Acme>,
    pub h2: bool,
    /// Poll interval for certificate rotation without SIGHUP.
    pub watch: Option<Duration>,
    pub hsts: Option<Hsts>,
    /// Position of the `tls` section, for errors found when the files are loaded.
    pub pos: Pos,
}

/// One certificate chain and key from files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names it serves, lowercase (`*.example.com` allowed); empty: the certificate's own.
    pub names: Vec<String>,
    pub pos: Pos,
}

/// Automatic certificates (`tls.acme`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// DNS names of the one certificate ordered, lowercase.
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// Root of a private ACME server's HTTPS certificate.
    pub ca: Option<PathBuf>,
    pub storage: PathBuf,
    pub challenge: AcmeChallenge,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// Answered on the http listener (`/.well-known/acme-challenge/`).
    Http01,
    /// Answered in the TLS handshake on the https listener (ALPN `acme-tls/1`).
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `Strict-Transport-Security` sent on https responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
    /// [`Hsts::value`], made once (every https response carries it).
    pub header: http::HeaderValue,
}

impl Hsts {
    /// The header value, e.g. `max-age=31536000; includeSubDomains; preload`.
    pub fn value(&self) -> String {
        Self::render(self.max_age, self.include_subdomains, self.preload)
    }

    pub fn render(max_age: Duration, include_subdomains: bool, preload: bool) -> String {
        let mut v = format!("max-age={}", max_age.as_secs());
        if include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if preload {
            v.push_str("; preload");
        }
        v
    }
}

/// The user and group `edgepin run` switches to once its listeners are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Upstream TCP connect.
    pub connect: Duration,
    /// Downstream: longest wait for the client to send the next bytes of a request.
    pub client: Duration,
    /// Upstream: longest wait for the server's next bytes of a response.
    pub server: Duration,
    /// Idle timeout of an upgraded (WebSocket) tunnel, either direction.
    pub tunnel: Duration,
    /// Idle downstream keep-alive between requests.
    pub keepalive: Duration,
    /// Longest wait in a server's queue when it is at `max_connections`.
    pub queue: Duration,
    /// A whole request head (request line and headers) must arrive within this.
    pub header: Duration,
    /// A new connection's PROXY header and TLS handshake must be done within this.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            client: Duration::from_secs(30),
            server: Duration::from_secs(30),
            tunnel: Duration::from_secs(3600),
            keepalive: Duration::from_secs(60),
            queue: Duration::from_secs(5),
            header: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request head bigger than this gets 431.
    pub max_header_bytes: usize,
    /// Request body bigger than this gets 413.
    pub max_body_bytes: u64,
    /// Downstream connections open at once, all listeners.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exact host match (lowercase, no port); `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into `Config::backends`.
    pub backend: usize,
    /// Whether WebSocket upgrades are allowed on this route.
    pub websocket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// Engine.IO sid, then cookie, then source hash.
    Sticky,
    /// Source hash only.
    Source,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Sticky => "sticky",
            Balance::Source => "source",
        }
    }

    pub fn is_hashed(self) -> bool {
        matches!(self, Balance::Sticky | Balance::Source)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub balance: Balance,
    /// Indexes into `Config::servers`.
    pub servers: Vec<usize>,
    /// Sticky cookie name (`balance: sticky` only).
    pub cookie: Option<String>,
    /// Global timeouts with this backend's overrides applied.
    pub timeouts: Timeouts,
    /// New hashed sessions skip a server above factor × its share of the load
    /// (infinite: plain consistent hashing).
    pub hash_balance_factor: f64,
    /// Attempts on other servers after a failed connection.
    pub retries: u32,
    /// Requests waiting for a slot at most (more get 503 at once).
    pub max_queue: u32,
    /// Slow-start window of its servers (zero: off); a server's own key overrides it.
    pub slow_start: Duration,
    /// New Engine.IO sessions admitted (`None`: no cap); more get 503 with Retry-After.
    pub new_sessions: Option<Rate>,
    /// The servers come from DNS (`servers` then holds those of the last good answer,
    /// merged in by `discovery::merge`; none in a config just read from its file).
    pub discover: Option<Discover>,
}

/// `backends.NAME.discover`: what to ask DNS for the backend's servers, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    /// The name asked, lowercase (with its trailing dot if written with one).
    pub name: String,
    pub kind: DiscoverKind,
    /// Port of every server (`type: a`); SRV records carry their own.
    pub port: u16,
    /// Longest time between two resolutions; a shorter TTL resolves sooner (not under
    /// [`Discover::MIN_INTERVAL`]).
    pub interval: Duration,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Most servers one answer may give the backend.
    pub max_servers: usize,
    /// Answers in a row that must agree before one removing more than half the servers
    /// applies (1: at once).
    pub confirm_shrink: u32,
    /// Name servers asked; empty: those of /etc/resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// `max_connections` of every discovered server.
    pub max_connections: Option<u32>,
    pub pos: Pos,
}

impl Discover {
    /// A TTL shorter than this does not make resolutions more frequent.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// As written in the config: `name:port (A/AAAA)` or `name (SRV)`.
    pub fn describe(&self) -> String {
        match self.kind {
            DiscoverKind::Addresses => format!("{}:{} (A/AAAA)", self.name, self.port),
            DiscoverKind::Srv => format!("{} (SRV)", self.name),
        }
    }
}

/// Which records name the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverKind {
    /// A and AAAA records: every address, with the configured port.
    Addresses,
    /// SRV records: every target of the lowest priority, with its port and weight.
    Srv,
}

impl DiscoverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoverKind::Addresses => "a",
            DiscoverKind::Srv => "srv",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// As written (host:port), for display.
    pub address_text: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// Concurrent requests/tunnels sent to it; more wait in a queue.
    pub max_connections: Option<u32>,
    /// Its own slow-start window (zero: off), over its backends' `slow_start`.
    pub slow_start: Option<Duration>,
    /// Found by DNS (`backends.NAME.discover`), not listed in the file. Its name is what
    /// it is (`address:port`, or `target:port` for SRV), so it is the same on every edge.
    pub discovered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub mode: CheckMode,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Accepted status codes, inclusive.
    pub expect: (u16, u16),
    /// Consecutive live-traffic failures that mark a server DOWN (0: off).
    pub passive_fall: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            mode: CheckMode::Http,
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect: (200, 399),
            passive_fall: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub auth: Option<StatsAuth>,
    /// Default auto-refresh of the HTML page, seconds (0: off).
    pub refresh: u32,
    /// `Host` names the listener answers to besides its own address and loopback names
    /// (lowercase, no port, no trailing dot; IPv6 without brackets).
    pub hosts: Vec<String>,
    /// Set when the password is shorter than [`MIN_STATS_PASSWORD_CHARS`]: `check` prints
    /// it and the stats listener logs it when it starts. A warning, not an error.
    pub weak_password: Option<ConfigError>,
    /// What the dashboard's charts keep.
    pub history: StatsHistory,
}

/// The stats history behind the dashboard's charts: one point every `interval`, the
/// last `points` of them (`stats.history: { interval, span }`, span = interval × points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsHistory {
    pub interval: Duration,
    pub points: usize,
}

impl StatsHistory {
    /// Shortest interval: sampling reads every counter once.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    /// Most points kept (memory: about 8 bytes per point per series).
    pub const MAX_POINTS: usize = 1440;
}

impl Default for StatsHistory {
    /// A point every 5 s over the last 15 minutes.
    fn default() -> StatsHistory {
        StatsHistory {
            interval: Duration::from_secs(5),
            points: 180,
        }
    }
}

/// A stats password shorter than this is warned about (never refused).
pub const MIN_STATS_PASSWORD_CHARS: usize = 12;

/// Stats credentials. The password itself is read when the config is loaded, from the
/// env var or file named in the YAML; it never comes from the YAML.
#[derive(Clone, PartialEq, Eq)]
pub struct StatsAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for StatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Sticky {
    /// Key for cookie values; `None`: plain hash of the server name.
    pub secret: Option<Vec<u8>>,
    pub same_site: SameSite,
    pub sid_ttl: Duration,
    pub max_sids: usize,
    /// Engine.IO handshakes a client address may make (`None`: no limit).
    pub handshake_rate: Option<Rate>,
    /// The sid table shared with other edgepins through Redis (`None`: this process's only).
    pub shared: Option<SharedSids>,
}

impl fmt::Debug for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("same_site", &self.same_site)
            .field("sid_ttl", &self.sid_ttl)
            .field("max_sids", &self.max_sids)
            .field("handshake_rate", &self.handshake_rate)
            .field("shared", &self.shared)
            .finish()
    }
}

/// `sticky.shared`: where several edgepins keep sid → server name, and how long a
/// request may wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSids {
    pub redis: SharedRedis,
    /// Longest wait for a lookup; past it the request goes on by cookie or hash.
    pub timeout: Duration,
    /// Keys are `<key_prefix><sid>`.
    pub key_prefix: String,
}

/// The Redis of the shared sid table. A URL may hold a password (from `redis_env`): it is
/// never printed (`Debug` and `Display` hide it).
#[derive(Clone, PartialEq, Eq)]
pub enum SharedRedis {
    One(String),
    /// A Redis Cluster by its seed nodes.
    Cluster(Vec<String>),
}

/// A Redis URL with any credentials replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl fmt::Display for SharedRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedRedis::One(url) => f.write_str(&redacted_url(url)),
            SharedRedis::Cluster(seeds) => {
                let seeds: Vec<String> = seeds.iter().map(|s| redacted_url(s)).collect();
                write!(f, "cluster {}", seeds.join(","))
            }
        }
    }
}

impl fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for SharedSids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (timeout {}, keys {}*)",
            self.redis,
            humantime::format_duration(self.timeout),
            self.key_prefix
        )
    }
}

impl fmt::Debug for SharedSids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A rate (per client, or a backend's new sessions): `burst` at once, then `per_second`
/// (both ≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// `sticky.handshake_rate`'s default: generous for people behind one NAT, far below
    /// a flood (the finding was 3,000 handshakes in 1.1 s).
    pub const DEFAULT_HANDSHAKES: Rate = Rate {
        per_second: 20,
        burst: 200,
    };
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s, burst {}", self.per_second, self.burst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// The largest server weight (config and the admin API alike).
pub const MAX_WEIGHT: u32 = 256;

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Whether any of `networks` holds `ip` (e.g. a peer in `trusted_proxies`).
    pub fn any_contains(networks: &[Network], ip: std::net::IpAddr) -> bool {
        networks.iter().any(|n| n.contains(ip))
    }

    /// Whether `ip` is in this network; an IPv4 peer seen on a dual-stack listener
    /// (`::ffff:a.b.c.d`) is its IPv4 address.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    pub drain_timeout: Duration,
    pub pidfile: Option<PathBuf>,
    /// After an upgrade handed the listeners over, the old process drains at most this
    /// long; then its remaining tunnels are closed over `close_spread`.
    pub hard_stop_after: Duration,
    pub close_spread: Duration,
}

impl Reload {
    /// The default `reload.hard_stop_after` (see README "Upgrading edgepin").
    pub const HARD_STOP_AFTER: Duration = Duration::from_secs(600);
    /// The default `reload.close_spread`.
    pub const CLOSE_SPREAD: Duration = Duration::from_secs(60);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisSource {
    /// `edgepin up` starts its own redis-server.
    Spawn,
    Url(String),
    /// A Redis Cluster, by seed nodes (`redis://` URLs): rooms on sharded pub/sub.
    Cluster(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workers {
    pub redis: RedisSource,
    /// Port of the spawned redis-server (loopback); not the default 6379, so a system
    /// Redis can run beside it.
    pub redis_port: u16,
}

/// Default `workers.redis_port`.
pub const DEFAULT_REDIS_PORT: u16 = 6380;

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    read(path).map(|(_, config)| config)
}

/// Like [`load`], also returning the text that was validated.
pub fn read(path: &Path) -> Result<(String, Config), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config = parse(path, &text)?;
    Ok((text, config))
}

/// Only `reload.pidfile` of the config at `path` (resolved against the file's directory),
/// checking nothing but the YAML syntax: see `edgepin upgrade`.
pub fn pidfile_of(path: &Path) -> Result<Option<PathBuf>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    validate::pidfile_only(path, &text).map_err(LoadError::Invalid)
}

/// Parse and validate config text; `path` names the file in errors and resolves
/// relative cert/key paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, LoadError> {
    validate::parse_and_validate(path, text, &|name| std::env::var(name).ok()).map_err(LoadError::Invalid)
}
