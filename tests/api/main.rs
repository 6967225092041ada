//! Integration tests: the real hub on port 0 with a temporary database, over real HTTP.

mod admin;
mod binary;
mod common;
mod config;
mod firmware;
mod fuzz;
mod messages;
mod mqtt;
mod mqtt_sessions;
mod net;
mod retention;
mod security;
mod ws;
