//! What this binary is: its version and the commit it was built from (set by build.rs,
//! `unknown` for a build outside git). Read by `--version`, `/health`, the stats page
//! and `edgepin_process_build_info`; nothing else.

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit, 12 hex digits, or what `EDGEPIN_COMMIT` said at build time.
pub const COMMIT: &str = env!("EDGEPIN_COMMIT");

/// `0.1.0 (commit 0123456789ab)`: what `edgepin --version` prints after the name.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EDGEPIN_COMMIT"), ")");
