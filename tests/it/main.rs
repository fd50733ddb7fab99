//! The integration tests: one binary, so the library is linked once. Each module is one area;
//! shared helpers (harness, emulators, processes, databases) live in `common`.

mod common;

mod acceptance;
mod authoring;
mod branching;
mod cli;
mod config_check;
mod console;
mod console_api;
mod crash;
mod emulators;
mod examples;
mod flood;
mod halo_contract;
mod halo_setup;
mod http_step;
mod multinode;
mod openapi;
mod retries;
mod secrets;
mod servicenow;
mod storage_contract;
mod storage_migrations;
mod surface;
mod sync_back;
mod trigger;
mod trigger_types;
mod validation;
