//! End-to-end tests, linked into one binary: the real `redis-session-exporter` binary on loopback
//! ports against the project's DAS simulator, fake credential services, real `redis-server`,
//! `promtool` and `prometheus`. Each module is one area; `common` is the harness, `fakes` the
//! credential-service stand-ins.

mod common;
mod fakes;

mod attribution;
mod config_errors;
mod credentials;
mod direct;
mod docs;
mod faults;
mod fleet;
mod front_door;
mod image;
mod layout;
mod polling;
mod prometheus;
mod reload;
mod soak;
mod webconfig;
