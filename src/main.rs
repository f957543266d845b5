//! The `edgepin` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgepin::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "edgepin", version = edgepin::build_info::LONG_VERSION, about = "Edge load balancer for Socket.IO fleets")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = parse_format)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (SIGHUP reloads, SIGTERM drains, SIGINT stops).
    Run {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
        /// Take the listeners and state of the process being upgraded from this upgrade
        /// socket (how `edgepin upgrade` starts the new binary).
        #[arg(long, hide = true)]
        takeover: Option<PathBuf>,
    },
    /// Validate a config and print a summary (or, with --diff, what a reload would change).
    Check {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
        /// Compare with the config the running proxy loaded (found through reload.pidfile).
        #[arg(long)]
        diff: bool,
    },
    /// Write a development CA and a localhost certificate (or, with --self-signed, one
    /// self-signed certificate: selfsigned.crt and selfsigned.key, valid a year).
    Certs {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// A name of the self-signed certificate (repeat for more names).
        #[arg(long, value_name = "NAME")]
        self_signed: Vec<String>,
    },
    /// Ask a running proxy to reload (SIGHUP to the pid in `reload.pidfile`).
    Reload {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Replace the running proxy with a new binary without dropping a connection: the new
    /// process takes every listener and the state, the old one drains and exits.
    Upgrade {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
        /// The new binary (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// How long the new process may take to be ready before the upgrade is given up.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the local stack: redis-server, one worker per server, and the proxy
    /// (SIGHUP: rolling worker restart + proxy reload; Ctrl-C or SIGTERM: stop everything).
    Up {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Run the reference Socket.IO worker (rooms over Redis) until SIGTERM or SIGINT.
    Worker {
        /// Address to listen on, e.g. 127.0.0.1:3001.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Name shown by /api/whoami and in messages (e.g. the server name in proxy.yaml).
        #[arg(long)]
        id: String,
        /// Redis shared by every worker, e.g. redis://127.0.0.1:6379 (from the environment
        /// when it carries a password: the command line is visible to every local user).
        #[arg(long, env = "EDGEPIN_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// A Redis Cluster instead, by seed nodes: redis://h1:7000,redis://h2:7001 (rooms
        /// on sharded pub/sub, the protocol of the Node sharded adapter; Redis >= 7).
        #[arg(
            long,
            env = "EDGEPIN_REDIS_CLUSTER",
            value_delimiter = ',',
            conflicts_with = "redis",
            value_name = "URL,URL"
        )]
        redis_cluster: Option<Vec<String>>,
        /// Stop when this process (`edgepin up`) exits.
        #[arg(long, hide = true)]
        exit_with_parent: Option<u32>,
    },
    /// Become PROGRAM, set to get SIGTERM when PARENT dies (how `edgepin up` starts
    /// redis-server so that it cannot outlive `up`).
    #[command(hide = true)]
    Follow {
        #[arg(long)]
        parent: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        program: Vec<std::ffi::OsString>,
    },
}

fn parse_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("use text or json".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Run { config, takeover } => match edgepin::edge::run(&config, takeover.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        },
        Command::Check { config, diff } => match edgepin::config::load(&config) {
            Ok(c) if diff => check_diff(&c),
            Ok(c) => {
                let certs = edgepin::check::certificates(&c, std::time::SystemTime::now());
                if !certs.errors.is_empty() {
                    return fail(&certs.errors.join("\n"));
                }
                print!("{}", edgepin::check::summary(&c));
                if !certs.lines.is_empty() {
                    println!("certificates:");
                    for l in &certs.lines {
                        println!("  {l}");
                    }
                }
                for w in &certs.warnings {
                    println!("warning: {w}");
                }
                let discovered = edgepin::check::discovery(&c);
                if !discovered.lines.is_empty() {
                    println!("discovered now:");
                    for l in &discovered.lines {
                        println!("  {l}");
                    }
                }
                for w in &discovered.warnings {
                    println!("{w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Certs { out, self_signed } if !self_signed.is_empty() => {
            let names: Vec<&str> = self_signed.iter().map(String::as_str).collect();
            match edgepin::certs::write_self_signed(&out, "selfsigned", &names, time::Duration::days(365)) {
                Ok((cert, key)) => {
                    println!("wrote {} and {} (self-signed)", cert.display(), key.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Certs { out, .. } => match edgepin::certs::generate(&out) {
            Ok(c) => {
                println!(
                    "wrote {} and {} (CA: {})",
                    c.cert.display(),
                    c.key.display(),
                    c.ca_cert.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Reload { config } => reload(&config),
        Command::Upgrade {
            config,
            binary,
            timeout,
        } => {
            match edgepin::upgrade::upgrade(&edgepin::upgrade::UpgradeArgs {
                config,
                binary,
                timeout,
            }) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Up { config } => match edgepin::up::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        },
        Command::Worker {
            listen,
            id,
            redis,
            redis_cluster,
            exit_with_parent,
        } => {
            let redis = match redis_cluster {
                Some(seeds) => edgepin::worker::RedisTarget::Cluster(seeds),
                None => edgepin::worker::RedisTarget::Url(redis),
            };
            let options = edgepin::worker::WorkerOptions {
                id,
                redis,
                emit_token: None,
            };
            let run = || edgepin::worker::run(listen, options);
            match exit_with_parent
                .map_or(Ok(()), edgepin::worker::stop_with_parent)
                .and_then(|()| run())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Follow { parent, program } => fail(&edgepin::lifeline::exec_following(parent, &program).to_string()),
    }
}

fn check_diff(new: &edgepin::config::Config) -> ExitCode {
    let Some(pidfile) = &new.reload.pidfile else {
        return fail("reload.pidfile is not set in the config: no running proxy to compare with");
    };
    match edgepin::diff::running_config(pidfile) {
        Ok(old) => {
            let changes = edgepin::diff::diff(&old, new);
            if changes.is_empty() {
                println!("{}: valid, no changes from the running config", new.source.display());
            } else {
                println!("{}: valid; a reload would change:", new.source.display());
                for c in changes {
                    println!("  {c}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn reload(config: &std::path::Path) -> ExitCode {
    let c = match edgepin::config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(&format!("not reloading: the new config is invalid\n{e}")),
    };
    let Some(pidfile) = c.reload.pidfile else {
        return fail("reload.pidfile is not set in the config: no running proxy to find");
    };
    let pid = match std::fs::read_to_string(&pidfile).map(|s| s.trim().parse::<i32>()) {
        Ok(Ok(pid)) if pid > 1 => pid,
        _ => return fail(&format!("cannot read a pid from {}", pidfile.display())),
    };
    // A stale pidfile may name a process that reused the pid: SIGHUP would end it.
    if !is_edgepin_proxy(pid) {
        return fail(&format!(
            "pid {pid} from {} is not a running `edgepin run` or `edgepin up`",
            pidfile.display()
        ));
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
        Ok(()) => {
            println!("sent SIGHUP to {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("signalling {pid}: {e}")),
    }
}

/// Whether `pid` runs `edgepin run` or `edgepin up` (by its command line in /proc).
fn is_edgepin_proxy(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    let program = args.next().unwrap_or_default();
    let named = std::path::Path::new(program.as_ref())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("edgepin"));
    named && args.any(|a| a == "run" || a == "up")
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}
