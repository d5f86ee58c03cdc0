//! The audit log: what the gateway records and where it goes.
//!
//! - [`sinks`]: SIEM export of the durable log (stdout, syslog, Splunk, Elasticsearch,
//!   signed JSON), at least once, in order.

pub mod sinks;
