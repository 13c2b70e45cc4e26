//! The datastorage server: reads the configuration, chooses and wires the adapters, runs the HTTP
//! servers (API on 8080, metrics on 9090) and the background loops, and the other subcommands.
//!
//! Architecture invariant: only this crate reads configuration and chooses adapters.
//!
//! - [`wiring`]: the adapters built from the configuration and put together ([`start`]).
//! - [`lifecycle`]: start-up in the background, [`Running`], graceful shutdown.
//! - `tasks`: the loops beside the API (embedding workers, sequencer, maintenance, replica monitor).
//! - [`commands`]: `serve`, `migrate`, `reembed`, `jobs`, `verify`.

pub mod commands;
pub mod config;
pub mod lifecycle;
mod tasks;
pub mod telemetry;
pub mod wiring;

pub use commands::{jobs_list, jobs_retry, migrate, reembed, reembed_finish, serve, verify};
pub use lifecycle::Running;
pub use telemetry::metrics_handle;
pub use wiring::start;
