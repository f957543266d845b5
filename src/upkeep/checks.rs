//! The active health checks as a service: one `health::check` loop per configured
//! server, started and stopped as reloads add and remove servers. Each loop is handed
//! its server's state and [`SnapshotTargets`], which answers from the current snapshot
//! where the server is now and how to check it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::health::check::{self, Target, Targets};
use crate::runtime::Shared;
use crate::state::ServerState;

/// The check targets the current snapshot names.
pub struct SnapshotTargets(pub Arc<Shared>);

impl Targets for SnapshotTargets {
    fn target(&self, server: &str) -> Option<Target> {
        let snapshot = self.0.snapshot();
        let s = snapshot.config.server(server)?;
        Some(Target {
            addr: s.address,
            health: snapshot.config.health.clone(),
        })
    }
}

/// A running check loop and the state it updates.
struct Running {
    task: JoinHandle<()>,
    state: Arc<ServerState>,
}

/// Runs one check loop per configured server.
pub struct ActiveChecks {
    pub shared: Arc<Shared>,
}

impl ActiveChecks {
    /// Start loops for servers without one (new, or whose state the registry replaced)
    /// and stop those of servers the config no longer names.
    fn supervise(&self, running: &mut HashMap<String, Running>, targets: &Arc<dyn Targets>) {
        let snapshot = self.shared.snapshot();
        for s in &snapshot.config.servers {
            let state = self.shared.registry.server(&s.name, s.weight);
            let current = running
                .get(&s.name)
                .is_some_and(|r| !r.task.is_finished() && Arc::ptr_eq(&r.state, &state));
            if !current {
                let task = tokio::spawn(check::run(s.name.clone(), Arc::clone(&state), Arc::clone(targets)));
                if let Some(old) = running.insert(s.name.clone(), Running { task, state }) {
                    old.task.abort();
                }
            }
        }
        running.retain(|name, r| {
            let keep = snapshot.config.server(name).is_some();
            if !keep {
                r.task.abort();
            }
            keep
        });
    }
}

#[async_trait]
impl BackgroundService for ActiveChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let targets: Arc<dyn Targets> = Arc::new(SnapshotTargets(Arc::clone(&self.shared)));
        let mut running = HashMap::new();
        super::supervise::on_installs(&self.shared, &mut shutdown, || self.supervise(&mut running, &targets)).await;
        for r in running.values() {
            r.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn config(servers: &str) -> crate::config::Config {
        let text = format!(
            "listen: {{ http: 127.0.0.1:1 }}\nroutes: [{{ path_prefix: /, backend: api }}]\n\
             health: {{ interval: 60s }}\nbackends: {{ api: {{ servers: [a] }} }}\nservers:\n{servers}"
        );
        crate::config::parse(Path::new("t.yaml"), &text).unwrap()
    }

    fn shared(servers: &str) -> Arc<Shared> {
        Shared::new(config(servers), None)
    }

    #[test]
    fn targets_follow_the_current_snapshot() {
        let shared = shared("  a: { address: 127.0.0.1:3001 }\n");
        let targets = SnapshotTargets(Arc::clone(&shared));
        let a = targets.target("a").unwrap();
        assert_eq!(a.addr.to_string(), "127.0.0.1:3001");
        assert_eq!(a.health.interval, Duration::from_secs(60));
        assert!(targets.target("b").is_none());

        let moved = config("  a: { address: 127.0.0.1:3009 }\n  b: { address: 127.0.0.1:3002 }\n");
        let next = shared.build(&moved);
        shared.install(next);
        assert_eq!(targets.target("a").unwrap().addr.to_string(), "127.0.0.1:3009");
        assert!(targets.target("b").is_some());
    }

    #[tokio::test]
    async fn one_loop_per_configured_server_and_none_for_removed_ones() {
        let shared = shared("  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002 }\n");
        let checks = ActiveChecks {
            shared: Arc::clone(&shared),
        };
        let targets: Arc<dyn Targets> = Arc::new(SnapshotTargets(Arc::clone(&shared)));
        let mut running = HashMap::new();
        checks.supervise(&mut running, &targets);
        let mut names: Vec<_> = running.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let a_task = running["a"].task.id();

        shared.install(shared.build(&config("  a: { address: 127.0.0.1:3001 }\n")));
        checks.supervise(&mut running, &targets);
        assert_eq!(running.keys().collect::<Vec<_>>(), ["a"], "b's loop is stopped");
        assert_eq!(running["a"].task.id(), a_task, "a's loop runs on");
    }
}
