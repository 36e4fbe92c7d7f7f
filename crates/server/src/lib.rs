//! The Keyward server: REST API, admin panel, relay, jobs.
//!
//! [`serve::run`] runs the HTTP server; [`api::router`] builds the authorised `/api/v1` routes from
//! the route table; [`bootstrap`] holds the operations behind the bootstrap CLI.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod directories;
pub mod error;
pub mod jobs;
pub mod keyops;
pub mod metrics;
pub mod provisioning;
pub mod relay;
pub mod serve;
pub mod tls;
