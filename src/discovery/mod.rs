//! Servers discovered from DNS (`backends.NAME.discover`): what an answer means
//! (`answer`: servers named by what they are, and whether an answer replaces the current
//! set), what has been found so far (`book`, merged into every config that is built),
//! and asking DNS (`resolve`, hickory-resolver).
//!
//! This module depends on `config` only; it never builds or installs a snapshot. The
//! service that resolves at each backend's interval and installs what changes is
//! `upkeep::discovery`; a reload merges the book into the config it read (`reload`).

pub mod answer;
pub mod book;
pub mod resolve;

pub use answer::{Decision, Failure, Found};
pub use book::{Book, BookGuard, Entry, Outcome, merge};
pub use resolve::{DnsResolver, Resolution};
