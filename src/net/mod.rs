//! The network edge every listener shares: one accept loop with connection caps (`accept`), caps fitted
//! under the open-file limit (`budget`), and HTTP/1 connections served with read timeouts (`http`).

pub mod accept;
pub mod budget;
pub mod http;
