//! haloflow: a flow-designer-style automation runtime for HaloITSM and ServiceNow.

pub mod commands;
pub mod config;
pub mod connections;
pub mod emulator;
pub mod engine;
pub mod flood;
pub mod flow;
pub mod halo;
pub mod outbound;
pub mod secrets;
pub mod server;
pub mod step;
pub mod steps;
pub mod storage;
pub mod template;
pub mod trigger;
