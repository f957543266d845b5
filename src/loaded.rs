//! The config a running proxy loaded, as reload and `check --diff` both see it: the copy
//! `run` and every applied reload save next to the pidfile (`<pidfile stem>.loaded.yaml`,
//! first line names the source file), and which changes from it wait for a restart.
//!
//! A leaf under `reload` and `diff`: it knows `config` and the file system, nothing of
//! the running process.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// First line of the saved copy; the source file's path follows it.
const HEADER: &str = "# edgepin: loaded from ";

/// Where the running proxy keeps the text it loaded.
pub fn loaded_copy(pidfile: &Path) -> PathBuf {
    pidfile.with_extension("loaded.yaml")
}

/// Save the text a proxy just loaded from `source`.
pub fn save_loaded(pidfile: &Path, source: &Path, text: &str) -> std::io::Result<()> {
    let source = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    std::fs::write(loaded_copy(pidfile), format!("{HEADER}{}\n{text}", source.display()))
}

/// The saved copy: the file it was loaded from (the copy itself if the header is
/// missing) and its text.
pub fn read_loaded(pidfile: &Path) -> std::io::Result<(PathBuf, String)> {
    let copy = loaded_copy(pidfile);
    let text = std::fs::read_to_string(&copy)?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let source = first.strip_prefix(HEADER).map(PathBuf::from).unwrap_or(copy.clone());
    Ok((source, rest.to_string()))
}

/// Settings a running process cannot take over: each changed one is named, and takes
/// effect on restart.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let mut note = |what: &str, changed: bool| {
        if changed {
            w.push(format!("{what} changed: takes effect on restart"));
        }
    };
    note("listen.https", old.listen.https != new.listen.https);
    note("listen.http", old.listen.http != new.listen.http);
    note("listen.stats", old.listen.stats != new.listen.stats);
    note("threads", old.threads != new.threads);
    note(
        "limits.max_connections",
        old.limits.max_connections != new.limits.max_connections,
    );
    note("sticky.max_sids", old.sticky.max_sids != new.sticky.max_sids);
    note(
        "tls.h2",
        old.tls.as_ref().map(|t| t.h2) != new.tls.as_ref().map(|t| t.h2),
    );
    note("stats.auth", old.stats.auth != new.stats.auth);
    note("run_as", old.run_as != new.run_as);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn cfg(text: &str) -> Config {
        config::parse(Path::new("t.yaml"), text).unwrap()
    }

    const BASE: &str = "routes: [{ path_prefix: /, backend: api }]\n\
                        backends: { api: { servers: [a] } }\nservers:\n  a: { address: 127.0.0.1:3001 }\n";

    #[test]
    fn restart_is_needed_for_listeners_and_sizes_only() {
        let old = cfg(&format!("listen: {{ http: 127.0.0.1:1 }}\n{BASE}"));
        let same_listeners = cfg(&format!(
            "listen: {{ http: 127.0.0.1:1 }}\ntimeouts: {{ server: 60s }}\n{BASE}"
        ));
        assert!(restart_needed(&old, &same_listeners).is_empty());
        let moved = cfg(&format!(
            "listen: {{ http: 127.0.0.1:2, stats: 127.0.0.1:3 }}\nsticky: {{ max_sids: 1000 }}\n{BASE}"
        ));
        assert_eq!(
            restart_needed(&old, &moved),
            vec![
                "listen.http changed: takes effect on restart".to_string(),
                "listen.stats changed: takes effect on restart".into(),
                "sticky.max_sids changed: takes effect on restart".into(),
            ]
        );
    }

    #[test]
    fn the_saved_copy_names_its_source_and_keeps_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("edgepin.pid");
        let source = dir.path().join("proxy.yaml");
        std::fs::write(&source, "x").unwrap();
        save_loaded(&pidfile, &source, "a: 1\nb: 2\n").unwrap();
        assert_eq!(loaded_copy(&pidfile), dir.path().join("edgepin.loaded.yaml"));
        let (from, text) = read_loaded(&pidfile).unwrap();
        assert_eq!(from, std::fs::canonicalize(&source).unwrap());
        assert_eq!(text, "a: 1\nb: 2\n");
        assert!(read_loaded(&dir.path().join("other.pid")).is_err());
    }
}
