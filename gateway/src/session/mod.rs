//! The sans-IO session: state machines fed with bytes that return bytes to send.
//!
//! - [`handshake`]: the agent's side of start-up (TLS negotiation, start-up packet,
//!   SCRAM-SHA-256 against the agent's identity, cancel requests).
//! - [`upstream`]: the gateway's own start-up against the real server, with the
//!   gateway's credential (SCRAM-SHA-256, md5).
//! - [`relay`]: the relay core for an established session: it forwards frames as
//!   zero-copy runs, tracks statements, portals and result columns, and can refuse one
//!   statement in order without breaking the session.
//! - [`copy_target`]: which relation a `COPY … TO STDOUT` reads and how its rows are
//!   laid out (the statement's format options).
//! - [`tracker`]: prepared statements and portals, by name.
//! - [`hooks`]: where policy, masking and audit plug into the relay.
//! - [`stages`]: the gateway's stages behind those hooks (masking).
//! - [`drain`]: what a gateway that is shutting down tells clients (57P03, 57P01).
//!
//! Nothing here touches a socket; the engines in [`crate::engine`] move the bytes.

pub mod copy_target;
pub mod drain;
pub mod handshake;
pub mod hooks;
pub mod relay;
pub mod stages;
pub mod tracker;
pub mod upstream;
