//! haloflow-core: the vendor-free core of haloflow, a flow-designer-style automation runtime.
//!
//! Flows are JSON documents ([`flow`], checked against `schemas/flow.schema.json`): a trigger
//! ([`trigger`]) and steps whose inputs are templates ([`template`]) over the trigger's outputs
//! and earlier steps' outputs. The [`engine`] accepts requests, stores them ([`storage`]),
//! applies flood control ([`flood`]) and runs the steps ([`step`]: the contract and registry;
//! [`steps`]: the core's own, `core.*` and `http.request`), making every outbound request
//! through [`outbound`]; [`server`] is the axum router in front of it.
//!
//! This crate names no vendor. A target system (Halo in `haloflow-halo`, ServiceNow in
//! `haloflow-servicenow`, or an embedder's own) is an integration: it adds its config section,
//! connections, steps, flows, routes and background jobs through one interface,
//! [`integration::Integration`]. Most programs take the `haloflow` crate, which re-exports this
//! one with the integrations behind cargo features.

pub mod admission;
pub mod config;
pub mod connections;
pub mod engine;
/// The interface through which an integration (Halo, ServiceNow, an embedder's) adds its
/// config section, connections, steps, flows, routes and jobs; part of the engine.
pub use engine::integration;
pub mod flood;
pub mod flow;
pub mod json;
pub mod outbound;
pub mod secrets;
pub mod server;
pub mod step;
pub mod steps;
pub mod storage;
pub mod template;
pub mod trigger;
