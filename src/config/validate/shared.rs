//! Validation of `sticky.shared`, the sid table several edgepins share through Redis:
//! where Redis is (a URL or cluster seeds in the YAML without credentials, or the whole
//! URL from an env var), the lookup timeout and the key prefix. It reads the env var it
//! names and nothing else; it never connects.

use super::*;

/// Default `sticky.shared.timeout`: a lookup on the same network answers in well under a
/// millisecond; past this the request goes on by cookie or hash.
pub const DEFAULT_SHARED_TIMEOUT: Duration = Duration::from_millis(50);
/// Default `sticky.shared.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "edgepin:sid:";
/// Longest `sticky.shared.timeout`: a request waits this long at most for its sid.
const MAX_SHARED_TIMEOUT: Duration = Duration::from_secs(5);

impl Validator<'_> {
    pub(super) fn shared_sids(&mut self, s: &Spanned<file::SharedFile>) -> Option<SharedSids> {
        let sf = &s.value;
        let redis = match (&sf.redis, &sf.redis_env) {
            (Some(r), None) => self.check(r, |r| match r {
                file::RedisFile::One(url) => yaml_url(url).map(|()| SharedRedis::One(url.clone())),
                file::RedisFile::Cluster(c) if c.cluster.is_empty() => {
                    Err("sticky.shared.redis.cluster lists no seed node (redis://host:port)".to_string())
                }
                file::RedisFile::Cluster(c) => {
                    for url in &c.cluster {
                        yaml_url(url)?;
                    }
                    Ok(SharedRedis::Cluster(c.cluster.clone()))
                }
            }),
            (None, Some(env)) => self
                .secret_from_env(env)
                .and_then(|value| self.check(env, |name| env_redis(name, &value))),
            _ => {
                self.err(
                    s.referenced,
                    "sticky.shared needs exactly one of `redis` (a redis:// URL or { cluster: [...] }) \
                     or `redis_env` (an env var holding the URL, for a password)",
                );
                None
            }
        };
        let timeout = self.duration(&sf.timeout, DEFAULT_SHARED_TIMEOUT);
        if let Some(t) = &sf.timeout
            && timeout > MAX_SHARED_TIMEOUT
        {
            self.err(
                t.referenced,
                format!(
                    "sticky.shared.timeout {:?} is longer than {MAX_SHARED_TIMEOUT:?}: a request waits that long when Redis is slow",
                    t.value
                ),
            );
        }
        let key_prefix = match &sf.key_prefix {
            None => DEFAULT_KEY_PREFIX.to_string(),
            Some(p) => self
                .check(p, |p| {
                    if !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic()) {
                        Ok(p.clone())
                    } else {
                        Err(format!(
                            "sticky.shared.key_prefix {p:?} must be 1 to 64 printable characters without spaces"
                        ))
                    }
                })
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
        };
        Some(SharedSids {
            redis: redis?,
            timeout,
            key_prefix,
        })
    }
}

/// A URL written in the YAML: `redis://`, parseable, and without credentials.
fn yaml_url(url: &str) -> Result<(), String> {
    check_url(url)?;
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    if authority.split('/').next().is_some_and(|a| a.contains('@')) {
        return Err(format!(
            "sticky.shared.redis {:?} holds credentials: passwords never go in the YAML; \
             put the URL in an env var and name it in `redis_env`",
            redacted_url(url)
        ));
    }
    Ok(())
}

/// The value of `redis_env`: one URL, or comma-separated seed URLs of a cluster.
fn env_redis(name: &str, value: &str) -> Result<SharedRedis, String> {
    let urls: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    for url in &urls {
        check_url(url).map_err(|e| format!("environment variable {name}: {e}"))?;
    }
    Ok(match <[String; 1]>::try_from(urls) {
        Ok([one]) => SharedRedis::One(one),
        Err(seeds) => SharedRedis::Cluster(seeds),
    })
}

fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err(
            "rediss:// (Redis over TLS) is not supported for the shared sid table; use redis:// on a \
             private network or through a local TLS tunnel"
                .to_string(),
        );
    }
    if !url.starts_with("redis://") {
        return Err(format!(
            "sticky.shared Redis {:?} must be a redis://host:port URL",
            redacted_url(url)
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("invalid Redis URL {:?}: {e}", redacted_url(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
listen: { http: 127.0.0.1:8080 }
routes:
  - { path_prefix: /, backend: api }
backends:
  api: { balance: sticky, servers: [a] }
servers:
  a: { address: 127.0.0.1:3001 }
";

    fn check(shared: &str, env: &[(&str, &str)]) -> Result<Option<SharedSids>, Vec<String>> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let text = format!("{MINIMAL}sticky: {{ shared: {shared} }}\n");
        parse_and_validate(Path::new("t.yaml"), &text, &lookup)
            .map(|c| c.sticky.shared)
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_url_or_a_cluster_in_the_yaml_with_defaults() {
        let s = check("{ redis: \"redis://10.0.0.5:6379\" }", &[]).unwrap().unwrap();
        assert_eq!(s.redis, SharedRedis::One("redis://10.0.0.5:6379".into()));
        assert_eq!(s.timeout, DEFAULT_SHARED_TIMEOUT);
        assert_eq!(s.key_prefix, DEFAULT_KEY_PREFIX);
        let s = check(
            "{ redis: { cluster: [\"redis://h1:7000\", \"redis://h2:7000\"] }, timeout: 20ms, key_prefix: \"eu:\" }",
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.redis,
            SharedRedis::Cluster(vec!["redis://h1:7000".into(), "redis://h2:7000".into()])
        );
        assert_eq!((s.timeout, s.key_prefix.as_str()), (Duration::from_millis(20), "eu:"));
        assert_eq!(
            s.to_string(),
            "cluster redis://h1:7000,redis://h2:7000 (timeout 20ms, keys eu:*)"
        );
    }

    #[test]
    fn a_password_comes_from_env_and_is_never_shown() {
        let env = [("SHARED_REDIS", "redis://:s3cret@10.0.0.5:6379/2")];
        let s = check("{ redis_env: SHARED_REDIS }", &env).unwrap().unwrap();
        assert_eq!(s.redis, SharedRedis::One("redis://:s3cret@10.0.0.5:6379/2".into()));
        assert!(!format!("{s} {s:?}").contains("s3cret"), "{s}");
        let env = [("SEEDS", "redis://:pw@h1:7000, redis://:pw@h2:7000")];
        let s = check("{ redis_env: SEEDS }", &env).unwrap().unwrap();
        assert!(matches!(&s.redis, SharedRedis::Cluster(seeds) if seeds.len() == 2));
        // In the YAML, a password is refused, and not repeated in the error.
        let errs = check("{ redis: \"redis://:s3cret@h:6379\" }", &[]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.yaml:8:28: "), "{errs:?}");
        assert!(errs[0].contains("passwords never go in the YAML") && !errs[0].contains("s3cret"));
    }

    #[test]
    fn mistakes_are_named_at_their_position() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 7] = [
            (
                "{ timeout: 50ms }",
                &[],
                "t.yaml:8:19: sticky.shared needs exactly one of",
            ),
            (
                "{ redis: \"redis://h:1\", redis_env: X }",
                &[("X", "redis://h:1")],
                "t.yaml:8:19: sticky.shared needs exactly one of",
            ),
            (
                "{ redis: \"http://h:1\" }",
                &[],
                "t.yaml:8:28: sticky.shared Redis \"http://h:1\" must be",
            ),
            ("{ redis: \"rediss://h:1\" }", &[], "t.yaml:8:28: rediss://"),
            (
                "{ redis_env: NOPE }",
                &[],
                "t.yaml:8:32: environment variable NOPE is not set",
            ),
            (
                "{ redis: \"redis://h:1\", timeout: 10s }",
                &[],
                "t.yaml:8:52: sticky.shared.timeout \"10s\" is longer than 5s",
            ),
            (
                "{ redis: \"redis://h:1\", key_prefix: \"a b\" }",
                &[],
                "t.yaml:8:55: sticky.shared.key_prefix \"a b\" must be",
            ),
        ];
        for (shared, env, want) in cases {
            let errs = check(shared, env).unwrap_err();
            assert!(errs.len() == 1 && errs[0].starts_with(want), "{shared}: {errs:?}");
        }
        let env = [("BAD", "redis://h:1,memcached://h:2")];
        let errs = check("{ redis_env: BAD }", &env).unwrap_err();
        assert!(errs[0].contains("environment variable BAD: "), "{errs:?}");
        assert!(check("{ redis: \"redis://h:1\", redis_url: x }", &[]).is_err());
    }
}
